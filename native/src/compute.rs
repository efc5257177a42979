//! Where the models run natively and in which precision: the one place the CLI and the server
//! pick a device, its float dtype and what it can hold (for the fit check before loading).

use anyhow::{Result, bail};
use burn::tensor::{DType, Device};
use clap::ValueEnum;
use orfeas_engine::fit::Capacity;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Backend {
    /// burn's CPU backend.
    Cpu,
    /// The GPU through wgpu (Vulkan, Metal, DX12; lavapipe on machines without a GPU).
    Wgpu,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Precision {
    /// f16 where the device computes in it (a GPU with shader-f16, the CPU backend), else f32.
    Auto,
    F32,
    F16,
}

/// The device flags every subcommand that runs a model takes.
#[derive(clap::Args, Debug, Clone)]
pub struct DeviceArgs {
    /// Where the models run: the CPU backend, or the GPU through wgpu (Vulkan, Metal, DX12).
    #[arg(long, value_enum, default_value_t = Backend::Cpu)]
    pub backend: Backend,
    /// Precision of the weights and the computation: auto picks f16 where the device computes
    /// in it (a GPU with shader-f16, the CPU backend), which halves the memory.
    #[arg(long, value_enum, default_value_t = Precision::Auto)]
    pub dtype: Precision,
    /// GPU memory the models may take, in GiB (wgpu cannot report it; 8 is assumed on a GPU,
    /// the host's memory on a software adapter and the CPU backend).
    #[arg(long)]
    pub gpu_memory_gib: Option<f64>,
}

impl DeviceArgs {
    pub fn open(&self) -> Result<Compute> {
        open(self.backend, self.dtype, self.gpu_memory_gib)
    }
}

/// A device ready for the models.
pub struct Compute {
    pub device: Device,
    pub dtype: DType,
    pub capacity: Capacity,
    /// The device in words ("cpu", "llvmpipe (LLVM 15.0.6, 256 bits) via Vulkan").
    pub name: String,
}

/// The host's memory (`MemTotal`), where the system says.
pub fn host_memory() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Open `backend` and settle the precision: `Auto` takes f16 where the device computes in it;
/// an explicit f16 the device cannot do is an error. `gpu_memory_gib` is the memory the models
/// may take on a GPU, which wgpu cannot report.
pub fn open(
    backend: Backend,
    precision: Precision,
    gpu_memory_gib: Option<f64>,
) -> Result<Compute> {
    let memory = gpu_memory_gib.map(|g| (g * (1u64 << 30) as f64) as u64);
    let (device, capacity, name) = match backend {
        Backend::Cpu => {
            let device = orfeas_engine::device::cpu();
            let capacity = Capacity {
                f16: orfeas_engine::device::supports_f16(&device),
                memory: memory.or(host_memory()).unwrap_or(u64::MAX),
                memory_source: if memory.is_some() {
                    "as configured".into()
                } else {
                    "host memory (CPU backend)".into()
                },
                max_buffer_size: u64::MAX,
            };
            (device, capacity, "cpu".to_string())
        }
        Backend::Wgpu => {
            let gpu = futures::executor::block_on(orfeas_engine::gpu::acquire(|reason| {
                tracing::error!("the GPU device was lost: {reason}");
            }))
            .map_err(|e| {
                anyhow::anyhow!("{e} (install a Vulkan driver, e.g. mesa-vulkan-drivers)")
            })?;
            orfeas_engine::models::set_buffer_budget(gpu.info.buffer_budget());
            let capacity = gpu.info.capacity(memory, host_memory());
            let name = format!("{} via {}", gpu.info.adapter, gpu.info.backend);
            (gpu.device, capacity, name)
        }
    };
    let dtype = match precision {
        Precision::Auto if capacity.f16 => DType::F16,
        Precision::Auto | Precision::F32 => DType::F32,
        Precision::F16 if capacity.f16 => DType::F16,
        Precision::F16 => bail!("{name} cannot compute in f16 (no shader-f16): use --dtype f32"),
    };
    if backend == Backend::Wgpu {
        // The fused attention kernel, checked once on this device in the models' dtype.
        match futures::executor::block_on(orfeas_engine::models::check_fused_attention(
            &device, dtype,
        )) {
            Ok(()) => tracing::info!("{name}: attention runs as one fused kernel"),
            Err(why) => tracing::warn!("{name}: attention runs over query slices ({why})"),
        }
    }
    Ok(Compute {
        device,
        dtype,
        capacity,
        name,
    })
}
