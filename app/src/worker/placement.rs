//! Where each model runs, read by the device (what a GPU loss takes), the loader (what needs a
//! GPU) and background removal (where it computes): ISNet on the CPU or the GPU; every other
//! model on the GPU.

use burn::tensor::{DType, Device};

use super::Engine;
use crate::protocol::ComputeDevice;

/// Where ISNet runs: the page's choice, else the CPU where the GPU is a software renderer (at
/// the reference's full size the CPU itself runs it ~20× faster than a renderer emulating a GPU
/// on it, with no GPU code to compile first: docs/background-removal.md) or where the page had
/// no GPU at all, else the GPU.
pub(super) fn isnet_device_kind(engine: &Engine) -> ComputeDevice {
    if let Some(device) = engine.options.borrow().background_device {
        return device;
    }
    if engine.device.software_adapter() || engine.device.no_gpu_at_start() {
        ComputeDevice::Cpu
    } else {
        ComputeDevice::Gpu
    }
}

/// Whether model slot `i` is ISNet running on the CPU, which a GPU loss does not touch.
pub(super) fn isnet_on_cpu(engine: &Engine, i: usize) -> bool {
    engine.models.background() == Some(i) && isnet_device_kind(engine) == ComputeDevice::Cpu
}

/// ISNet's device and the dtype it runs in there (f32 on the CPU: f16 arithmetic is emulated).
pub(super) fn isnet_device(engine: &Engine) -> Result<(Device, DType), String> {
    match isnet_device_kind(engine) {
        ComputeDevice::Cpu => Ok((orfeas_engine::device::cpu(), DType::F32)),
        ComputeDevice::Gpu => engine.device.current_with_dtype(),
    }
}
