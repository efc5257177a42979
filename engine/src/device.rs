//! Picking a compute device. Backends are cargo features: `flex` (CPU), `wgpu` (native GPU
//! through Vulkan/Metal/DX12), `webgpu` (the browser's).

use burn::tensor::Device;
#[cfg(feature = "wgpu")]
use burn::tensor::DeviceType;

/// burn's CPU backend, used where no GPU is wanted and in parity tests.
#[cfg(feature = "flex")]
pub fn cpu() -> Device {
    Device::flex()
}

/// The first GPU adapter wgpu finds (on a machine without a GPU, a software one such as
/// lavapipe), or `None` when there is none.
#[cfg(feature = "wgpu")]
pub fn gpu() -> Option<Device> {
    Device::enumerate(DeviceType::Wgpu)
        .into_vec()
        .into_iter()
        .next()
}

/// The device for `name` ("cpu" or "wgpu"), as the CLI and tests spell it.
pub fn by_name(name: &str) -> Result<Device, String> {
    match name {
        #[cfg(feature = "flex")]
        "cpu" => Ok(cpu()),
        #[cfg(feature = "wgpu")]
        "wgpu" => gpu().ok_or_else(|| {
            "no wgpu adapter found (install a Vulkan driver, e.g. mesa-vulkan-drivers)".to_string()
        }),
        other => Err(format!("backend {other:?} is not available in this build")),
    }
}
