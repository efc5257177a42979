//! The GPU device: acquiring it (with retries while the browser's GPU process restarts),
//! telling the UI what it is, and rebuilding it after a loss with every model that was on it.

use std::rc::Rc;

use futures::StreamExt;
use futures::channel::mpsc;
use orfeas_engine::gpu;
use orfeas_engine::weights::WeightSet;
use wasm_bindgen::{JsCast, JsValue};
use wasm_bindgen_futures::JsFuture;

use super::cutout::{isnet_device_kind, isnet_on_cpu};
use super::loading::{load_model, set_status};
use super::{Engine, post};
use crate::protocol::{
    AttentionPath, ComputeDevice, FromWorker, GpuReport, ModelStatusReport, NoticeLevel,
};

/// How many times a lost GPU device is rebuilt before the worker gives up.
const MAX_GPU_RESETS: u32 = 2;

/// `navigator.deviceMemory` in bytes (the browser's rounded figure of the host's RAM), where
/// the browser says.
pub(super) fn device_memory() -> Option<u64> {
    let scope: web_sys::WorkerGlobalScope = js_sys::global().unchecked_into();
    let gib = js_sys::Reflect::get(&scope.navigator(), &JsValue::from_str("deviceMemory"))
        .ok()?
        .as_f64()?;
    Some((gib * (1u64 << 30) as f64) as u64)
}

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

/// Acquire the GPU and tell the UI what it is; on failure mark every model that needs it failed
/// with the reason (so their panels say why, and Retry tries again).
pub(super) async fn acquire_gpu(engine: &Rc<Engine>) -> bool {
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
            true
        }
        Err(reason) => {
            if !engine.gpu_acquired.get() {
                engine.no_gpu_at_start.set(true);
            }
            post(&FromWorker::GpuUnavailable {
                reason: reason.clone(),
            });
            // ISNet on the CPU does not need the GPU (with no GPU from the start it goes there).
            let ids: Vec<String> = engine
                .models
                .borrow_mut()
                .iter_mut()
                .enumerate()
                .filter(|(i, _)| !isnet_on_cpu(engine, *i) && !engine.roles.borrow().is_idle(*i))
                .map(|(_, s)| {
                    s.awaiting_device = false; // Retry reloads it
                    s.spec.id.clone()
                })
                .collect();
            for id in ids {
                set_status(
                    engine,
                    &id,
                    ModelStatusReport::Failed {
                        reason: format!("no GPU: {reason}"),
                    },
                );
            }
            false
        }
    }
}

/// Tries at acquiring the GPU before reporting it unavailable.
const GPU_ATTEMPTS: i32 = 3;

pub(super) async fn sleep_ms(ms: i32) {
    let promise = js_sys::Promise::new(&mut |resolve, _| {
        let scope: web_sys::WorkerGlobalScope = js_sys::global().unchecked_into();
        let _ = scope.set_timeout_with_callback_and_timeout_and_arguments_0(&resolve, ms);
    });
    let _ = JsFuture::from(promise).await;
}

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

/// Rebuild the device after a loss (at most [`MAX_GPU_RESETS`] times) and reload every model
/// that was on it, from the cache when it is there.
pub(super) async fn watch_device_loss(
    engine: Rc<Engine>,
    mut lost: mpsc::UnboundedReceiver<String>,
) {
    while let Some(reason) = lost.next().await {
        engine.gpu.borrow_mut().take();
        // Background removal on the CPU is untouched by the loss.
        if isnet_device_kind(&engine) == ComputeDevice::Gpu {
            engine.isnet.borrow_mut().take();
        }
        engine.shape.borrow_mut().take();
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
            continue;
        }
        post(&FromWorker::Notice {
            level: NoticeLevel::Warning,
            message: format!("GPU reset ({reason}), restoring…"),
        });
        engine.rebuilding.set(true);
        let hold = engine.options.borrow().debug_gpu_rebuild_ms;
        if let Some(ms) = hold {
            sleep_ms(ms as i32).await;
        }
        // Their tensors went with the device: nothing may use them until they are back. A
        // model still loading marks itself when its load notices the loss.
        let lost_models: Vec<String> = {
            let mut slots = engine.models.borrow_mut();
            slots
                .iter_mut()
                .enumerate()
                .filter(|(i, _)| !isnet_on_cpu(&engine, *i))
                // The shape model's other precisions were never on the device.
                .filter(|(i, _)| !engine.roles.borrow().is_idle(*i))
                .map(|(_, s)| s)
                .filter(|s| s.weights.is_some())
                .filter(|s| !matches!(s.status, ModelStatusReport::Failed { .. }))
                .map(|s| {
                    s.weights = Some(WeightSet::new());
                    s.awaiting_device = true;
                    s.spec.id.clone()
                })
                .collect()
        };
        for id in lost_models {
            set_status(&engine, &id, ModelStatusReport::Loading);
        }
        let acquired = acquire_gpu(&engine).await;
        engine.rebuilding.set(false);
        if !acquired {
            continue;
        }
        let reload: Vec<usize> = {
            let mut slots = engine.models.borrow_mut();
            slots
                .iter_mut()
                .enumerate()
                .filter_map(|(i, s)| std::mem::take(&mut s.awaiting_device).then_some(i))
                .collect()
        };
        for i in reload {
            load_model(engine.clone(), i).await;
        }
        post(&FromWorker::Notice {
            level: NoticeLevel::Info,
            message: "GPU restored".into(),
        });
    }
}
