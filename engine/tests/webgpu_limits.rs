//! The pipeline on a GPU device that grants only WebGPU's default limits (128 MiB storage
//! binding, 256 MiB buffer), as a browser that asks for nothing more gets: the buffer budget
//! follows the device's binding, and the fixture model generates in f16 on it. (A binary of
//! its own: the budget is process-wide.) A q4 model runs there too, dequantizing each weight
//! before its product. Then devices without `shader-f16`, as Chromium's SwiftShader is: the q4
//! chain there, with burn's quantized matmul and with the dequantizing path, computes the field
//! the CPU backend computes.

use burn::tensor::quantization::QuantValue;
use burn::tensor::{DType, Device};
use orfeas_engine::gpu::{Gpu, Limits, ShaderF16, acquire_with};
use orfeas_engine::models::{buffer_budget, largest_activation_bytes, set_buffer_budget};
use orfeas_engine::pipeline::GenerateOptions;
use orfeas_engine::volume::Grid;
use orfeas_engine::weights::Precision;

mod fixtures;
use fixtures::*;

/// The buffer budget and the quantized-matmul choice are process-wide: one test at a time.
static ONE_DEVICE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

#[test]
fn the_pipeline_runs_under_webgpus_default_limits() {
    let _one = ONE_DEVICE_AT_A_TIME
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    let Some(gpu) = acquire_or_skip(Limits::WebGpuDefaults, ShaderF16::IfOffered) else {
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
    let generate = |model: &orfeas_engine::pipeline::ShapeModel| {
        futures::executor::block_on(model.generate(
            &image,
            shape[2],
            shape[3],
            &options,
            |_| {},
            || false,
        ))
    };
    let surface = generate(&model).expect("generation runs on the default-limits device");
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
        !orfeas_engine::models::fused_product_fits(),
        "a default-limits device dequantizes before the product"
    );
    let q4 = shape_model_stored("dit21", &gpu.device, dtype, Precision::Q4);
    let quantized = generate(&q4).expect("a q4 model generates on the default-limits device");
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

/// The q4 chain from the reference noise to the field, computing in f32 on `device`.
fn q4_field(device: &Device) -> Vec<f32> {
    let model = shape_model_stored("dit21", device, DType::F32, Precision::Q4);
    field_from_reference_noise(&model, device, Grid::official(24), 2048)
}

/// A GPU device with `limits` and `f16`; `None` (a reported skip) only where
/// `ORFEAS_ALLOW_SKIP` allows a machine without an adapter.
fn acquire_or_skip(limits: Limits, f16: ShaderF16) -> Option<Gpu> {
    let Ok(gpu) = futures::executor::block_on(acquire_with(limits, f16, |_| {})) else {
        assert!(
            std::env::var_os("ORFEAS_ALLOW_SKIP").is_some(),
            "no GPU adapter (install mesa-vulkan-drivers for lavapipe, or set ORFEAS_ALLOW_SKIP=1)"
        );
        eprintln!("SKIPPED (ORFEAS_ALLOW_SKIP): no GPU adapter");
        return None;
    };
    Some(gpu)
}

#[test]
fn q4_weights_compute_without_shader_f16_as_on_the_cpu() {
    // Chromium's WebGPU on SwiftShader offers no `shader-f16`: a kernel reading the stored f16
    // scales would not compile there, so such a device gets f32 scales. Both products (burn's
    // quantized matmul, forced here since q4 is dequantized by default on a GPU; and
    // dequantize-then-multiply, the default, and the only one on default limits) must give
    // the CPU backend's field.
    use orfeas_engine::models::{QuantizedProducts, fused_product, set_quantized_products};
    let _one = ONE_DEVICE_AT_A_TIME
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    let reference = q4_field(&orfeas_engine::device::cpu());
    let peak = max_abs(&reference);
    for (limits, products) in [
        (Limits::Adapter, QuantizedProducts::Fused),
        (Limits::Adapter, QuantizedProducts::Measured),
        (Limits::WebGpuDefaults, QuantizedProducts::Measured),
    ] {
        let Some(gpu) = acquire_or_skip(limits, ShaderF16::Without) else {
            return;
        };
        assert!(!gpu.info.shader_f16, "shader-f16 was left out");
        assert_eq!(gpu.info.model_dtype(), DType::F32);
        set_buffer_budget(gpu.info.buffer_budget());
        set_quantized_products(products);
        let fused = fused_product(QuantValue::Q4S, &gpu.device);
        assert_eq!(
            fused,
            products == QuantizedProducts::Fused && limits == Limits::Adapter,
            "q4 on a GPU is dequantized before its product unless forced; never fused on \
             default limits"
        );
        let path = if fused {
            "burn's quantized matmul"
        } else {
            "dequantized before each product"
        };
        let field = q4_field(&gpu.device);
        set_quantized_products(QuantizedProducts::Measured);
        let error = max_abs_diff(&field, &reference) / peak;
        let agree = same_side_share(&field, &reference);
        eprintln!(
            "q4 without shader-f16, {limits:?} limits ({path}): field error {error:.2e} of its \
             peak, inside/outside agrees at {:.3} %",
            agree * 100.0
        );
        assert!(error < 1e-3, "{limits:?} ({path}): field error {error:.3e}");
        assert!(agree > 0.999, "{limits:?} ({path}): agrees at {agree}");
    }
}
