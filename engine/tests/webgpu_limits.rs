//! The pipeline on a GPU device that grants only WebGPU's default limits (128 MiB storage
//! binding, 256 MiB buffer), as a browser that asks for nothing more gets: the buffer budget
//! follows the device's binding, and the fixture model generates in f16 on it. (A binary of
//! its own: the budget is process-wide.) A q4 model runs there too, dequantizing each weight
//! before its product.

use burn::tensor::DType;
use orfeas_engine::gpu::{Limits, acquire_with};
use orfeas_engine::models::{buffer_budget, largest_activation_bytes, set_buffer_budget};
use orfeas_engine::pipeline::GenerateOptions;

mod fixtures;
use fixtures::*;

#[test]
fn the_pipeline_runs_under_webgpus_default_limits() {
    let Ok(gpu) = futures::executor::block_on(acquire_with(Limits::WebGpuDefaults, |_| {})) else {
        assert!(
            std::env::var_os("ORFEAS_ALLOW_SKIP").is_some(),
            "no GPU adapter (install mesa-vulkan-drivers for lavapipe, or set ORFEAS_ALLOW_SKIP=1)"
        );
        eprintln!("SKIPPED (ORFEAS_ALLOW_SKIP): no GPU adapter");
        return;
    };
    let info = gpu.info.clone();
    eprintln!(
        "{} ({}): storage binding {} MiB, buffer {} MiB, shader-f16 {}",
        info.adapter,
        info.backend,
        info.max_storage_buffer_binding_size >> 20,
        info.max_buffer_size >> 20,
        info.shader_f16
    );
    assert_eq!(info.max_storage_buffer_binding_size, 128 << 20);
    assert_eq!(info.max_buffer_size, 256 << 20);
    set_buffer_budget(info.buffer_budget());
    assert_eq!(
        buffer_budget(),
        128 << 20,
        "the budget follows the device's binding"
    );
    let dtype = info.model_dtype();
    let model = shape_model_as("dit21", &gpu.device, dtype);
    let (image, shape) = Io::read("sampler.io.safetensors").tensor("image_in");
    let options = GenerateOptions {
        steps: Some(3),
        resolution: 24,
        chunk: 2048,
        ..GenerateOptions::default()
    };
    let surface =
        futures::executor::block_on(model.generate(&image, shape[2], shape[3], &options, |_| {}))
            .expect("generation runs on the default-limits device");
    eprintln!(
        "{dtype:?} on default limits: {} faces, largest activation {} KiB",
        surface.mesh.triangles.len(),
        largest_activation_bytes() >> 10
    );
    assert!(!surface.mesh.triangles.is_empty());

    // q4 sets on the same device: WebGPU's default 16 KiB of workgroup memory is below what
    // burn's quantized matmul asks for, so each quantized weight is dequantized just before
    // its product (one layer in float at a time) — the path a browser with default limits
    // takes.
    assert!(
        !orfeas_engine::models::quantized_matmul(),
        "a default-limits device dequantizes before the product"
    );
    let q4 = shape_model_stored(
        "dit21",
        &gpu.device,
        dtype,
        orfeas_engine::weights::Precision::Q4,
    );
    let quantized =
        futures::executor::block_on(q4.generate(&image, shape[2], shape[3], &options, |_| {}))
            .expect("a q4 model generates on the default-limits device");
    eprintln!(
        "q4 weights, {dtype:?} on default limits: {} faces (f16 weights: {})",
        quantized.mesh.triangles.len(),
        surface.mesh.triangles.len()
    );
    assert!(!quantized.mesh.triangles.is_empty());
    assert_eq!(
        dtype,
        if info.shader_f16 {
            DType::F16
        } else {
            DType::F32
        }
    );
}
