//! Picking a compute device. Backends are cargo features: `flex` (CPU), `wgpu` (native GPU
//! through Vulkan/Metal/DX12), `webgpu` (the browser's).

#[cfg(feature = "wgpu")]
use burn::tensor::DeviceType;
use burn::tensor::{DType, Device, Tensor};

/// burn's CPU backend, used where no GPU is wanted and in parity tests.
#[cfg(feature = "flex")]
pub fn cpu() -> Device {
    Device::flex()
}

/// Whether `device` is burn's CPU backend.
pub fn is_cpu(device: &Device) -> bool {
    #[cfg(feature = "flex")]
    {
        *device == cpu()
    }
    #[cfg(not(feature = "flex"))]
    {
        let _ = device;
        false
    }
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

/// Whether `device` computes in f16 (on wgpu: the adapter has `shader-f16`; burn's CPU
/// backend reports its own support).
pub fn supports_f16(device: &Device) -> bool {
    device.supports_dtype(DType::F16)
}

/// The one place that decides the float dtype models run in: `requested` when the device can
/// compute in it, else an error saying why.
pub fn model_dtype(device: &Device, requested: DType) -> Result<DType, String> {
    match requested {
        DType::F32 => Ok(DType::F32),
        DType::F16 if supports_f16(device) => Ok(DType::F16),
        DType::F16 => Err(format!(
            "this device ({device:?}) cannot compute in f16 (no shader-f16): use f32"
        )),
        other => Err(format!("models run in f32 or f16, not {other:?}")),
    }
}

/// The device could not hand back what it computed (e.g. it was lost meanwhile).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("reading {what} back from the device failed: {reason}")]
pub struct ReadbackError {
    /// What was read: "the field", "the experts' routing"…
    pub what: &'static str,
    /// The device's own words.
    pub reason: String,
}

impl ReadbackError {
    pub fn of(what: &'static str, error: impl std::fmt::Debug) -> Self {
        Self {
            what,
            reason: format!("{error:?}"),
        }
    }
}

/// `tensor`'s values as f32 on the host, read without blocking (a browser cannot block);
/// `what` names it in the error.
pub async fn read_f32<const D: usize>(
    tensor: Tensor<D>,
    what: &'static str,
) -> Result<Vec<f32>, ReadbackError> {
    tensor
        .into_data_async()
        .await
        .map_err(|e| ReadbackError::of(what, e))?
        .convert::<f32>()
        .try_into_vec::<f32>()
        .map_err(|e| ReadbackError::of(what, e))
}

/// Waits until the device has computed `tensor`, by reading one of its values back. A native
/// read is lazy (the copy, and so the wait, happen when the bytes are first touched), so the
/// value is touched here; in the browser the read itself waits. An error is the device's
/// (e.g. it was lost).
pub async fn computed<const D: usize>(tensor: &Tensor<D>) -> Result<(), ReadbackError> {
    let corner: [std::ops::Range<usize>; D] = std::array::from_fn(|_| 0..1);
    let data = tensor
        .clone()
        .slice(corner)
        .into_data_async()
        .await
        .map_err(|e| ReadbackError::of("a result", e))?;
    std::hint::black_box(data.as_bytes().first().copied());
    Ok(())
}

/// Lets the event loop run between steps of work that never waits on a device: on burn's CPU
/// backend in the browser a network stage is one synchronous call, and without this the
/// worker would read no message (a new picture, a request) until the whole pass is done.
pub async fn yield_now() {
    #[cfg(target_arch = "wasm32")]
    {
        use wasm_bindgen::{JsCast, JsValue};
        // setTimeout(0): a macrotask, so messages queued meanwhile run first (a resolved
        // promise would only let microtasks through).
        let promise = js_sys::Promise::new(&mut |resolve, _| {
            let set_timeout = js_sys::Reflect::get(&js_sys::global(), &"setTimeout".into())
                .ok()
                .and_then(|f| f.dyn_into::<js_sys::Function>().ok());
            match set_timeout {
                Some(set_timeout) => {
                    let _ = set_timeout.call2(&JsValue::NULL, &resolve, &JsValue::from(0));
                }
                None => {
                    let _ = resolve.call0(&JsValue::NULL);
                }
            }
        });
        let _ = wasm_bindgen_futures::JsFuture::from(promise).await;
    }
    #[cfg(not(target_arch = "wasm32"))]
    {
        let mut yielded = false;
        std::future::poll_fn(|cx| {
            if yielded {
                std::task::Poll::Ready(())
            } else {
                yielded = true;
                cx.waker().wake_by_ref();
                std::task::Poll::Pending
            }
        })
        .await;
    }
}
