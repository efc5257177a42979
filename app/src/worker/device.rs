//! The GPU device: acquiring it (with retries while the browser's GPU process restarts),
//! telling the UI what it is, checking its attention kernel, and forgetting it when it is lost
//! (the loader then rebuilds it and reloads the models that were on it).

use std::rc::Rc;

use orfeas_engine::gpu;
use wasm_bindgen::{JsCast, JsValue};

use super::js::sleep_ms;
use super::{Engine, post};
use crate::protocol::{AttentionPath, FromWorker, GpuReport, NoticeLevel};

/// How many times a lost GPU device is rebuilt before the worker gives up.
const MAX_GPU_RESETS: u32 = 2;

fn gpu_report(info: &gpu::GpuInfo, attention: Option<AttentionPath>) -> GpuReport {
    GpuReport {
        adapter: if info.adapter.is_empty() {
            "unnamed adapter".into()
        } else {
            info.adapter.clone()
        },
        backend: info.backend.clone(),
        software: info.software,
        shader_f16: info.shader_f16,
        max_storage_buffer_binding_size: info.max_storage_buffer_binding_size,
        max_buffer_size: info.max_buffer_size,
        dtype: if info.shader_f16 { "f16" } else { "f32" }.into(),
        attention,
    }
}

/// Before the first generation on a device: check its fused attention kernel in the models'
/// dtype (not at start-up: its compilation takes seconds on a software adapter, and background
/// removal has no attention) and tell the UI how attention runs.
pub(super) async fn check_attention(engine: &Rc<Engine>, dtype: burn::tensor::DType) {
    let generation = engine.device_generation.get();
    if engine.attention_checked.get() == Some(generation) {
        return;
    }
    let Ok(device) = engine.device() else {
        return;
    };
    let outcome = orfeas_engine::models::check_fused_attention(&device, dtype).await;
    engine.attention_checked.set(Some(generation));
    let attention = match outcome {
        Ok(()) => AttentionPath::Fused,
        Err(reason) => AttentionPath::Sliced { reason },
    };
    let info = engine.gpu.borrow().as_ref().map(|gpu| gpu.info.clone());
    if let Some(info) = info {
        post(&FromWorker::Gpu {
            info: gpu_report(&info, Some(attention)),
        });
    }
}

/// Acquire the GPU and tell the UI what it is, or why there is none (the caller marks the
/// models that need it).
pub(super) async fn acquire_gpu(engine: &Rc<Engine>) -> Result<(), String> {
    let result = match webgpu_missing() {
        Some(reason) => Err(reason),
        None => {
            // The browser's GPU process may be restarting (another context lost its device a
            // moment ago): then the first requests fail, and a later one succeeds.
            let mut attempt = 0;
            loop {
                let lost = engine.lost.borrow().clone();
                let result = gpu::acquire(move |reason| {
                    if let Some(lost) = &lost {
                        let _ = lost.unbounded_send(reason);
                    }
                })
                .await
                .map_err(|e| e.to_string());
                attempt += 1;
                if result.is_ok() || attempt == GPU_ATTEMPTS {
                    break result;
                }
                sleep_ms(500 * attempt).await;
            }
        }
    };
    match result {
        Ok(gpu) => {
            let info = &gpu.info;
            // No activation outgrows one storage binding of this device.
            orfeas_engine::models::set_buffer_budget(info.buffer_budget());
            engine.software_adapter.set(info.software);
            engine.gpu_acquired.set(true);
            post(&FromWorker::Gpu {
                info: gpu_report(info, None),
            });
            *engine.gpu.borrow_mut() = Some(gpu);
            Ok(())
        }
        Err(reason) => {
            if !engine.gpu_acquired.get() {
                engine.no_gpu_at_start.set(true);
            }
            post(&FromWorker::GpuUnavailable {
                reason: reason.clone(),
            });
            Err(reason)
        }
    }
}

/// Tries at acquiring the GPU before reporting it unavailable.
const GPU_ATTEMPTS: i32 = 3;

/// `Some(reason)` when this browser has no WebGPU at all.
fn webgpu_missing() -> Option<String> {
    let scope: web_sys::WorkerGlobalScope = js_sys::global().unchecked_into();
    let gpu = js_sys::Reflect::get(&scope.navigator(), &JsValue::from_str("gpu")).ok();
    match gpu {
        Some(value) if !value.is_undefined() && !value.is_null() => None,
        _ => Some(
            "this browser has no WebGPU (navigator.gpu is missing): use a current Chrome or \
             Edge; on Linux, start Chrome with --enable-unsafe-webgpu"
                .into(),
        ),
    }
}

/// The device is gone: forget it, so nothing new is queued on it, and count the loss. Returns
/// how many times it was lost, or `None` past [`MAX_GPU_RESETS`] (the UI is told to reload).
pub(super) fn forget_lost_device(engine: &Engine, reason: &str) -> Option<u32> {
    engine.gpu.borrow_mut().take();
    engine
        .device_generation
        .set(engine.device_generation.get() + 1);
    let resets = engine.gpu_resets.get() + 1;
    engine.gpu_resets.set(resets);
    if resets > MAX_GPU_RESETS {
        post(&FromWorker::GpuUnavailable {
            reason: format!(
                "the GPU device was lost {resets} times (last: {reason}); reload the page"
            ),
        });
        return None;
    }
    post(&FromWorker::Notice {
        level: NoticeLevel::Warning,
        message: format!("GPU reset ({reason}), restoring…"),
    });
    Some(resets)
}
