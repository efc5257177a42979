//! The GPU device: acquiring it (with retries while the browser's GPU process restarts),
//! telling the UI what it is, checking its attention kernel, and forgetting it when it is lost
//! (the loader then rebuilds it and reloads the models that were on it).

use std::cell::{Cell, RefCell};
use std::rc::Rc;

use burn::tensor::{DType, Device};
use futures::channel::mpsc;
use orfeas_engine::gpu::{self, Gpu, GpuInfo};
use wasm_bindgen::{JsCast, JsValue};

use super::js::sleep_ms;
use super::{Engine, post};
use crate::protocol::{AttentionPath, FromWorker, GpuReport, NoticeLevel};

/// The GPU device and what happened to it: changed only here (acquired, lost, rebuilt), read
/// by the others through its methods.
#[derive(Default)]
pub(super) struct DeviceState {
    gpu: RefCell<Option<Gpu>>,
    /// The GPU is a software renderer (kept across device rebuilds: the same adapter).
    software_adapter: Cell<bool>,
    /// A GPU device was acquired once in this session.
    acquired_once: Cell<bool>,
    /// The page had no GPU when it first asked (no WebGPU, no adapter): background removal then
    /// runs on the CPU for the session, and only the models that need the GPU fail.
    no_gpu_at_start: Cell<bool>,
    /// Bumped each time the device is lost; a load that started on an older device redoes its
    /// work.
    generation: Cell<u32>,
    resets: Cell<u32>,
    /// The device generation whose fused attention kernel was checked.
    attention_checked: Cell<Option<u32>>,
    /// A lost device is being replaced: loads cut short wait for the new one.
    rebuilding: Cell<bool>,
    /// Where a loss is reported (see [`DeviceState::report_losses`]).
    lost: RefCell<Option<mpsc::UnboundedSender<String>>>,
}

impl DeviceState {
    /// The current GPU device.
    pub(super) fn current(&self) -> Result<Device, String> {
        self.current_with_dtype().map(|(device, _)| device)
    }

    /// The current GPU device and the dtype models run in on it.
    pub(super) fn current_with_dtype(&self) -> Result<(Device, DType), String> {
        self.gpu
            .borrow()
            .as_ref()
            .map(|gpu| (gpu.device.clone(), gpu.info.model_dtype()))
            .ok_or_else(|| "no GPU device".to_string())
    }

    /// A GPU device is up.
    pub(super) fn is_up(&self) -> bool {
        self.gpu.borrow().is_some()
    }

    /// What the current GPU is.
    pub(super) fn info(&self) -> Option<GpuInfo> {
        self.gpu.borrow().as_ref().map(|gpu| gpu.info.clone())
    }

    /// Bumped at each loss.
    pub(super) fn generation(&self) -> u32 {
        self.generation.get()
    }

    pub(super) fn rebuilding(&self) -> bool {
        self.rebuilding.get()
    }

    pub(super) fn software_adapter(&self) -> bool {
        self.software_adapter.get()
    }

    pub(super) fn no_gpu_at_start(&self) -> bool {
        self.no_gpu_at_start.get()
    }

    /// From now on, each loss of a device is sent on the channel returned (the loader
    /// watches it).
    pub(super) fn report_losses(&self) -> mpsc::UnboundedReceiver<String> {
        let (sender, receiver) = mpsc::unbounded();
        *self.lost.borrow_mut() = Some(sender);
        receiver
    }

    /// Destroy the device as a driver reset would (for tests and support).
    pub(super) fn destroy(&self) -> Result<(), String> {
        match self.gpu.borrow().as_ref() {
            Some(gpu) => {
                gpu.destroy();
                Ok(())
            }
            None => Err("no GPU device to lose".into()),
        }
    }
}

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
pub(super) async fn check_attention(engine: &Rc<Engine>, dtype: DType) {
    let state = &engine.device;
    let generation = state.generation.get();
    if state.attention_checked.get() == Some(generation) {
        return;
    }
    let Ok(device) = state.current() else {
        return;
    };
    let outcome = orfeas_engine::models::check_fused_attention(&device, dtype).await;
    state.attention_checked.set(Some(generation));
    let attention = match outcome {
        Ok(()) => AttentionPath::Fused,
        Err(reason) => AttentionPath::Sliced { reason },
    };
    if let Some(info) = state.info() {
        post(&FromWorker::Gpu {
            info: gpu_report(&info, Some(attention)),
        });
    }
}

/// Acquire the GPU and tell the UI what it is, or why there is none (the caller marks the
/// models that need it).
pub(super) async fn acquire_gpu(engine: &Rc<Engine>) -> Result<(), String> {
    let state = &engine.device;
    let result = match webgpu_missing() {
        Some(reason) => Err(reason),
        None => {
            // The browser's GPU process may be restarting (another context lost its device a
            // moment ago): then the first requests fail, and a later one succeeds.
            let mut attempt = 0;
            loop {
                let lost = state.lost.borrow().clone();
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
            state.software_adapter.set(info.software);
            state.acquired_once.set(true);
            post(&FromWorker::Gpu {
                info: gpu_report(info, None),
            });
            *state.gpu.borrow_mut() = Some(gpu);
            Ok(())
        }
        Err(reason) => {
            if !state.acquired_once.get() {
                state.no_gpu_at_start.set(true);
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

/// The device is gone: forget it, so nothing new is queued on it, count the loss, and (unless
/// it was lost too often: then the UI is told to reload, and this returns false) start
/// replacing it; the loader marks the models that were on it, then calls [`rebuild`].
pub(super) async fn lost(engine: &Engine, reason: &str) -> bool {
    let state = &engine.device;
    state.gpu.borrow_mut().take();
    state.generation.set(state.generation.get() + 1);
    let resets = state.resets.get() + 1;
    state.resets.set(resets);
    if resets > MAX_GPU_RESETS {
        post(&FromWorker::GpuUnavailable {
            reason: format!(
                "the GPU device was lost {resets} times (last: {reason}); reload the page"
            ),
        });
        return false;
    }
    post(&FromWorker::Notice {
        level: NoticeLevel::Warning,
        message: format!("GPU reset ({reason}), restoring…"),
    });
    state.rebuilding.set(true);
    let hold = engine.options.borrow().debug_gpu_rebuild_ms;
    if let Some(ms) = hold {
        sleep_ms(ms as i32).await;
    }
    true
}

/// The new device after a loss (see [`lost`]), or why there is none.
pub(super) async fn rebuild(engine: &Rc<Engine>) -> Result<(), String> {
    let acquired = acquire_gpu(engine).await;
    engine.device.rebuilding.set(false);
    acquired
}
