//! Acquiring the GPU ourselves instead of letting burn pick one, so that the app can say exactly
//! what is missing, choose fp16 from the adapter's features, watch for device loss, and build a
//! fresh device after one (each registered setup is a new burn runtime).

use burn::tensor::wgpu::{WgpuSetup, wgpu};
use burn::tensor::{DType, Device};
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::fit::Capacity;

/// The smallest storage-buffer binding the models may need: WebGPU's default limit, which every
/// adapter offers. Larger tensors are split by the models (they never bind more than this).
pub const MIN_STORAGE_BINDING: u64 = 128 << 20;

/// What the adapter is and offers, for the UI and logs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GpuInfo {
    pub adapter: String,
    pub backend: String,
    /// A software rasteriser / CPU emulation (SwiftShader, lavapipe).
    pub software: bool,
    pub shader_f16: bool,
    pub max_buffer_size: u64,
    pub max_storage_buffer_binding_size: u64,
}

impl GpuInfo {
    /// fp16 where the shaders can do fp16 arithmetic, f32 otherwise.
    pub fn model_dtype(&self) -> DType {
        if self.shader_f16 {
            DType::F16
        } else {
            DType::F32
        }
    }

    /// The buffer budget the models may use on this device: its storage binding (at least
    /// WebGPU's default, which the device was refused without), no larger than a buffer.
    pub fn buffer_budget(&self) -> usize {
        self.max_storage_buffer_binding_size
            .min(self.max_buffer_size)
            .try_into()
            .unwrap_or(usize::MAX)
    }

    /// What the models may take on this GPU (see [`crate::fit`]). WebGPU and wgpu do not
    /// report GPU memory: `memory` is the user's figure when given, the host's memory for a
    /// software adapter (it renders in RAM), else [`ASSUMED_GPU_MEMORY`], saying so.
    pub fn capacity(&self, memory: Option<u64>, host_memory: Option<u64>) -> Capacity {
        let (memory, memory_source) = match (memory, self.software, host_memory) {
            (Some(m), _, _) => (m, "as configured".to_string()),
            (None, true, Some(host)) => (host, "host memory: a software adapter".to_string()),
            (None, _, _) => (
                ASSUMED_GPU_MEMORY,
                "assumed: the GPU does not report its memory; set gpu_memory_gib".to_string(),
            ),
        };
        Capacity {
            f16: self.shader_f16,
            memory,
            memory_source,
            max_buffer_size: self.max_buffer_size,
        }
    }
}

/// GPU memory assumed when nothing says otherwise (a common consumer GPU's).
pub const ASSUMED_GPU_MEMORY: u64 = 8 << 30;

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum GpuError {
    #[error("no GPU adapter: {0}")]
    NoAdapter(String),
    #[error("the GPU adapter's {limit} is {have} bytes; the models need at least {need} bytes")]
    Limit {
        limit: &'static str,
        have: u64,
        need: u64,
    },
    #[error("the GPU refused to create a device: {0}")]
    RequestDevice(String),
    #[error("burn could not use the GPU device: {0}")]
    Register(String),
}

/// A GPU device registered with burn.
pub struct Gpu {
    pub device: Device,
    pub info: GpuInfo,
    handle: wgpu::Device,
}

impl Gpu {
    /// Destroy the underlying device, as a driver reset would; the loss callback fires.
    pub fn destroy(&self) {
        self.handle.destroy();
    }
}

/// Which limits to ask the device for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Limits {
    /// The adapter's own (the models' buffer budget follows its storage binding).
    #[default]
    Adapter,
    /// WebGPU's defaults (128 MiB storage binding, 256 MiB buffer): what every device grants.
    WebGpuDefaults,
}

/// Whether to ask for `shader-f16` where the adapter offers it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ShaderF16 {
    #[default]
    IfOffered,
    /// Left out, as on a GPU or browser without it (Chromium's SwiftShader): compute in f32,
    /// and no kernel may use f16.
    Without,
}

/// Acquire the first adapter, request a device with all its features (but mappable primary
/// buffers, which burn does not use) and its full limits (clamped to the adapter's by
/// construction), and register it with burn. `on_lost` is called once if the device is lost.
pub async fn acquire(on_lost: impl Fn(String) + Send + 'static) -> Result<Gpu, GpuError> {
    acquire_with(Limits::Adapter, ShaderF16::IfOffered, on_lost).await
}

/// As [`acquire`], asking for `limits`, and for `shader-f16` as `f16` says.
pub async fn acquire_with(
    limits_wanted: Limits,
    f16: ShaderF16,
    on_lost: impl Fn(String) + Send + 'static,
) -> Result<Gpu, GpuError> {
    let mut descriptor = wgpu::InstanceDescriptor::new_without_display_handle();
    descriptor.backends = if cfg!(target_arch = "wasm32") {
        wgpu::Backends::BROWSER_WEBGPU
    } else {
        wgpu::Backends::all()
    };
    let instance = wgpu::Instance::new(descriptor);
    let adapter = instance
        .request_adapter(&wgpu::RequestAdapterOptions {
            power_preference: wgpu::PowerPreference::HighPerformance,
            ..Default::default()
        })
        .await
        .map_err(|e| GpuError::NoAdapter(e.to_string()))?;

    let limits = adapter.limits();
    let binding = limits.max_storage_buffer_binding_size;
    if binding < MIN_STORAGE_BINDING {
        return Err(GpuError::Limit {
            limit: "maxStorageBufferBindingSize",
            have: binding,
            need: MIN_STORAGE_BINDING,
        });
    }
    let limits = match limits_wanted {
        Limits::Adapter => limits,
        Limits::WebGpuDefaults => wgpu::Limits::default(),
    };
    let mut features = adapter
        .features()
        .difference(wgpu::Features::MAPPABLE_PRIMARY_BUFFERS);
    if f16 == ShaderF16::Without {
        features.remove(wgpu::Features::SHADER_F16);
    }
    let (device, queue) = adapter
        .request_device(&wgpu::DeviceDescriptor {
            label: Some("orfeas"),
            required_features: features,
            required_limits: limits.clone(),
            memory_hints: wgpu::MemoryHints::MemoryUsage,
            ..Default::default()
        })
        .await
        .map_err(|e| GpuError::RequestDevice(e.to_string()))?;
    device.set_device_lost_callback(move |reason, message| {
        on_lost(format!("{reason:?}: {message}"));
    });

    let adapter_info = adapter.get_info();
    let info = GpuInfo {
        adapter: adapter_info.name.clone(),
        backend: format!("{:?}", adapter_info.backend),
        software: adapter_info.device_type == wgpu::DeviceType::Cpu
            || adapter_info.name.to_lowercase().contains("swiftshader"),
        shader_f16: features.contains(wgpu::Features::SHADER_F16),
        max_buffer_size: limits.max_buffer_size,
        max_storage_buffer_binding_size: limits.max_storage_buffer_binding_size,
    };
    crate::models::set_fused_product_fits(
        limits.max_compute_workgroup_storage_size
            >= crate::models::QUANTIZED_MATMUL_WORKGROUP_BYTES,
    );
    let backend = adapter_info.backend;
    let setup = WgpuSetup {
        instance,
        adapter,
        device: device.clone(),
        queue,
        backend,
    };
    let burn_device = Device::wgpu_options()
        .setup(setup)
        .init()
        .map_err(|e| GpuError::Register(e.to_string()))?;
    Ok(Gpu {
        device: burn_device,
        info,
        handle: device,
    })
}
