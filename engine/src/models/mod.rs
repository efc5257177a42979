//! The shape pipeline's networks, one file per model, each with a `Config` (parsed from the
//! official config values), modules with `init`, and a forward pass that reads like the paper.
//!
//! **Precision.** A network computes in its weights' dtype: the loader decides it once (F16 on
//! a device with `shader-f16`, or when asked; F32 otherwise) and nothing here hard-codes one.
//! Where fp16 loses too much the networks widen to f32 as PyTorch's autocast does: norm
//! statistics (burn's norms widen f16 themselves), softmax, the timestep and Fourier features
//! (computed on the host in f32, narrowed once), the sampler's latents and the field.
//!
//! **Buffer budget.** No tensor a model creates may exceed one GPU storage-buffer binding
//! (WebGPU's default is 128 MiB; at real sizes the DiT's attention scores alone would be 2 GiB),
//! so attention is one fused kernel on a GPU (the scores never exist) and runs over slices of
//! queries elsewhere, and every wide projection runs over slices of rows; see
//! [`set_buffer_budget`] and [`attend`]. The widest tensors (projections, concatenations,
//! attention scores) are recorded as they are made, so a test can check the whole forward pass
//! against it.

pub mod dinov2;
pub mod hunyuan3d_dit;
pub mod hunyuandit_plain;
pub mod isnet;
pub mod shape_vae;

use std::ops::Range;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering};

use burn::nn::{LayerNorm, Linear};
use burn::tensor::activation::softmax;
use burn::tensor::quantization::QuantValue;
use burn::tensor::{DType, Device, Tensor, TensorData};

use crate::device::ReadbackError;

/// Why a network's forward gave no output.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ForwardError {
    /// The device did not hand back what the network reads mid-pass (e.g. it was lost).
    #[error(transparent)]
    Readback(#[from] ReadbackError),
    /// The inputs do not suit the network (e.g. no guidance for a guidance-distilled one).
    #[error("{0}")]
    Input(String),
}

/// Serde defaults for config fields, mirroring the official constructors' keyword defaults
/// (`#[serde(default = "int::<16>")]`).
pub(crate) fn int<const N: usize>() -> usize {
    N
}

pub(crate) fn float<const N: u32>() -> f64 {
    N as f64
}

pub(crate) fn yes() -> bool {
    true
}

/// WebGPU's default `maxStorageBufferBindingSize`, which every adapter offers.
pub const DEFAULT_BUFFER_BUDGET: usize = 128 << 20;

static BUFFER_BUDGET: AtomicUsize = AtomicUsize::new(DEFAULT_BUFFER_BUDGET);
static LARGEST_INTERMEDIATE: AtomicUsize = AtomicUsize::new(0);
static LARGEST_ACTIVATION: AtomicUsize = AtomicUsize::new(0);

/// The most bytes one activation may take (at least one row is always computed, however small
/// the budget). The app and the server set it from the device's real binding limit.
pub fn set_buffer_budget(bytes: usize) {
    BUFFER_BUDGET.store(bytes.max(1), Ordering::Relaxed);
}

pub fn buffer_budget() -> usize {
    BUFFER_BUDGET.load(Ordering::Relaxed)
}

/// The largest sliced intermediate (attention-score slice, wide-MLP slice) made since the last
/// reset, in bytes: what the budget bounds however small it is set.
pub fn largest_intermediate_bytes() -> usize {
    LARGEST_INTERMEDIATE.load(Ordering::Relaxed)
}

/// The largest activation of any kind recorded since the last reset (projections,
/// concatenations, scores and their f32 copies, sliced or not), in bytes: at the real model
/// sizes this must stay within one binding too.
pub fn largest_activation_bytes() -> usize {
    LARGEST_ACTIVATION.load(Ordering::Relaxed)
}

pub fn reset_largest_intermediate() {
    LARGEST_INTERMEDIATE.store(0, Ordering::Relaxed);
    LARGEST_ACTIVATION.store(0, Ordering::Relaxed);
}

/// Note `tensor`'s size as an activation the model made.
pub(crate) fn record<const D: usize>(tensor: Tensor<D>) -> Tensor<D> {
    let bytes = tensor.shape().num_elements() * tensor.dtype().size();
    LARGEST_ACTIVATION.fetch_max(bytes, Ordering::Relaxed);
    tensor
}

static FUSED_PRODUCT_FITS: AtomicBool = AtomicBool::new(true);
static QUANTIZED_PRODUCTS: AtomicU8 = AtomicU8::new(QuantizedProducts::Measured as u8);

/// Workgroup memory burn's quantized matmul needs (its tiles asked for 20 KiB on lavapipe;
/// WebGPU's default is 16 KiB, where it refuses to launch).
pub const QUANTIZED_MATMUL_WORKGROUP_BYTES: u32 = 32 << 10;

/// How a quantized weight meets its product. The weights stay quantized in memory either way;
/// `Dequantized` widens one layer's weight to the activations' dtype just before its product
/// (a transient buffer the size of that layer in float), `Fused` hands the quantized weight
/// to burn's quantized matmul.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum QuantizedProducts {
    /// The faster as measured (`bench-models --quant`, 2026-12-07), dequantizing unless
    /// fusing wins: only q8 on a GPU is fused (lavapipe: a DiT step 0.985× the f16 one fused,
    /// 0.989× dequantized; no scratch). burn's q4 kernel took 9.6–10× the f16 product on
    /// lavapipe; on the CPU backend its quantized products took 1.14× the f32 one (a DiT step
    /// 1.105× in q8, 1.166× in q4 at full depth); dequantizing costs 0–4 % of a product.
    Measured,
    /// Every quantized weight through burn's quantized matmul (where the device allows it).
    Fused,
    /// Every quantized weight dequantized just before its product.
    Dequantized,
}

/// Whether the device can run burn's quantized matmul at all: not where its workgroup memory
/// is below [`QUANTIZED_MATMUL_WORKGROUP_BYTES`] (such a device dequantizes every weight
/// before its product, whatever [`set_quantized_products`] says). Set when a GPU is acquired.
pub fn set_fused_product_fits(fits: bool) {
    FUSED_PRODUCT_FITS.store(fits, Ordering::Relaxed);
}

pub fn fused_product_fits() -> bool {
    FUSED_PRODUCT_FITS.load(Ordering::Relaxed)
}

/// Choose how quantized weights meet their products (the benchmarks and tests time and check
/// each; [`QuantizedProducts::Measured`] by default).
pub fn set_quantized_products(products: QuantizedProducts) {
    QUANTIZED_PRODUCTS.store(products as u8, Ordering::Relaxed);
}

pub fn quantized_products() -> QuantizedProducts {
    match QUANTIZED_PRODUCTS.load(Ordering::Relaxed) {
        x if x == QuantizedProducts::Fused as u8 => QuantizedProducts::Fused,
        x if x == QuantizedProducts::Dequantized as u8 => QuantizedProducts::Dequantized,
        _ => QuantizedProducts::Measured,
    }
}

/// Whether a weight quantized as `value` on `device` goes to burn's quantized matmul as it is.
pub fn fused_product(value: QuantValue, device: &Device) -> bool {
    let on_gpu = !crate::device::is_cpu(device);
    if on_gpu && !fused_product_fits() {
        return false;
    }
    match quantized_products() {
        QuantizedProducts::Fused => true,
        QuantizedProducts::Dequantized => false,
        QuantizedProducts::Measured => on_gpu && value == QuantValue::Q8S,
    }
}

/// `weight` as a product with activations of `dtype` takes it: a quantized weight dequantized
/// to `dtype` where [`fused_product`] says so; otherwise as stored. (The benchmarks time a
/// single product through it too.)
pub fn product_weight(weight: Tensor<2>, dtype: DType) -> Tensor<2> {
    match weight.dtype() {
        DType::QFloat(scheme) if !fused_product(scheme.value, &weight.device()) => {
            record(weight.dequantize().cast(dtype))
        }
        _ => weight,
    }
}

/// `linear`'s weight as a product takes it ([`product_weight`]).
fn weight_for(linear: &Linear, dtype: DType) -> Tensor<2> {
    product_weight(linear.weight.val(), dtype)
}

/// `linear(x)`, recorded.
pub(crate) fn linear<const D: usize>(linear: &Linear, x: Tensor<D>) -> Tensor<D> {
    let weight = weight_for(linear, x.dtype());
    record(burn::tensor::module::linear(
        x,
        weight,
        linear.bias.as_ref().map(|b| b.val()),
    ))
}

/// `Tensor::cat`, recorded.
pub(crate) fn cat<const D: usize>(parts: Vec<Tensor<D>>, dim: usize) -> Tensor<D> {
    record(Tensor::cat(parts, dim))
}

/// Host values (computed in f32: pixels, timestep and Fourier features, points) as a tensor
/// of the network's dtype, narrowed once as PyTorch's `.to(dtype)` does.
pub(crate) fn host_tensor<const D: usize>(
    values: Vec<f32>,
    dims: [usize; D],
    dtype: DType,
    device: &Device,
) -> Tensor<D> {
    Tensor::from_data(TensorData::new(values, dims), (device, dtype))
}

/// The row ranges of `rows` rows, each costing `row_bytes`, that fit the budget.
pub(crate) fn row_slices(rows: usize, row_bytes: usize) -> Vec<Range<usize>> {
    let fit = (buffer_budget() / row_bytes.max(1)).clamp(1, rows.max(1));
    LARGEST_INTERMEDIATE.fetch_max(fit * row_bytes, Ordering::Relaxed);
    (0..rows)
        .step_by(fit)
        .map(|start| start..(start + fit).min(rows))
        .collect()
}

static FLASH_ATTENTION: AtomicBool = AtomicBool::new(true);

/// Whether [`attend`] may use the fused (flash) kernel where the device has one (on by
/// default; off runs the sliced path everywhere: the benchmarks' and tests' peer).
pub fn set_flash_attention(enabled: bool) {
    FLASH_ATTENTION.store(enabled, Ordering::Relaxed);
}

pub fn flash_attention() -> bool {
    FLASH_ATTENTION.load(Ordering::Relaxed)
}

/// Scaled dot-product attention of `q` `[b, h, n, d]` over `k`, `v` `[b, h, m, d]`, heads
/// merged back to `[b, n, h·d]` (every model's attention ends here).
///
/// On a GPU it is one fused kernel (flash attention: the scores never exist as a tensor, so
/// the buffer budget holds at any size). Elsewhere, or for a shape the kernel does not take,
/// the `[b, h, n, m]` scores are built for as many queries at a time as the budget allows,
/// and go through the softmax in f32 (an fp16 sum over thousands of keys would lose the
/// small ones; the fused kernel accumulates in f32 as well).
pub fn attend(q: Tensor<4>, k: Tensor<4>, v: Tensor<4>) -> Tensor<3> {
    let [b, h, n, d] = q.dims();
    #[cfg(any(feature = "wgpu", feature = "webgpu"))]
    if flash_attention()
        && let Some(out) = flash::attention(&q, &k, &v)
    {
        return record(out).swap_dims(1, 2).reshape([b, n, h * d]);
    }
    let m = k.dims()[2];
    let dtype = q.dtype();
    // Scaling q first keeps fp16 scores in range, as fused attention kernels do.
    let q = q * (1.0 / (d as f64).sqrt());
    let k_t = k.swap_dims(2, 3);
    let per_query = b * h * m * DType::F32.size();
    let attend_slice = |q: Tensor<4>| {
        let rows = q.dims()[2];
        let scores = record(record(q.matmul(k_t.clone())).cast(DType::F32));
        let weights = softmax(scores, 3).cast(dtype);
        weights
            .matmul(v.clone())
            .swap_dims(1, 2)
            .reshape([b, rows, h * d])
    };
    let slices = row_slices(n, per_query);
    if slices.len() == 1 {
        return attend_slice(q);
    }
    let parts = slices
        .into_iter()
        .map(|rows| attend_slice(q.clone().narrow(2, rows.start, rows.len())))
        .collect();
    Tensor::cat(parts, 1)
}

/// Try the fused attention kernel on `device` in `dtype` against attention computed on the
/// host (a small problem: 2 heads of 64 over 37 keys). Where it cannot run or disagrees (a
/// driver bug would show here, not as a wrong shape) it is turned off for the process and the
/// reason returned; the models then take the sliced path. Where it agrees it is turned on.
/// Callers check a device before its first attention-heavy work (its compilation costs seconds
/// on a software adapter, so not at start-up: background removal has no attention).
pub async fn check_fused_attention(device: &Device, dtype: DType) -> Result<(), String> {
    let (heads, queries, keys, d) = (2, 29, 37, 64);
    // Smooth, varied values (scores spread over a few units, as in a trained network), as the
    // device will hold them.
    let values = |n: usize, phase: f32| -> Vec<f32> {
        (0..heads * n * d)
            .map(|i| (i as f32 * 0.37 + phase).sin() * 1.5)
            .map(|x| match dtype {
                DType::F16 => half::f16::from_f32(x).to_f32(),
                _ => x,
            })
            .collect()
    };
    let (q, k, v) = (values(queries, 0.0), values(keys, 1.0), values(keys, 2.0));
    let on_device = |x: &[f32], n: usize| host_tensor(x.to_vec(), [1, heads, n, d], dtype, device);
    #[cfg(any(feature = "wgpu", feature = "webgpu"))]
    let fused = flash::attention(
        &on_device(&q, queries),
        &on_device(&k, keys),
        &on_device(&v, keys),
    );
    #[cfg(not(any(feature = "wgpu", feature = "webgpu")))]
    let fused: Option<Tensor<4>> = {
        let _ = on_device;
        None
    };
    // f16 output: one rounding of values up to 1.5 (2⁻¹⁰ relative) and the kernel's own.
    let tolerance = if dtype == DType::F16 { 4e-3 } else { 1e-3 };
    let outcome = match fused {
        None => Err("no fused attention kernel for this device".to_string()),
        Some(out) => match out.cast(DType::F32).into_data_async().await {
            Err(e) => Err(format!(
                "the fused kernel's output could not be read: {e:?}"
            )),
            Ok(data) => {
                let got: Vec<f32> = data.try_into_vec::<f32>().unwrap_or_default();
                let want = host_attention(&q, &k, &v, heads, queries, keys, d);
                let diff = got.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(
                    if got.len() == want.len() {
                        0.0
                    } else {
                        f32::INFINITY
                    },
                    f32::max,
                );
                if diff <= tolerance {
                    Ok(())
                } else {
                    Err(format!(
                        "the fused kernel is off by {diff:.1e} on this device"
                    ))
                }
            }
        },
    };
    set_flash_attention(outcome.is_ok());
    outcome
}

/// Softmax attention on the host, in f64: the fused kernel's check.
fn host_attention(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    heads: usize,
    queries: usize,
    keys: usize,
    d: usize,
) -> Vec<f32> {
    let scale = 1.0 / (d as f64).sqrt();
    let mut out = Vec::with_capacity(heads * queries * d);
    for h in 0..heads {
        let row = |n: usize, i: usize| (h * n + i) * d;
        for i in 0..queries {
            let qi = &q[row(queries, i)..][..d];
            let scores: Vec<f64> = (0..keys)
                .map(|j| {
                    let kj = &k[row(keys, j)..][..d];
                    qi.iter()
                        .zip(kj)
                        .map(|(a, b)| *a as f64 * *b as f64)
                        .sum::<f64>()
                        * scale
                })
                .collect();
            let top = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let weights: Vec<f64> = scores.iter().map(|s| (s - top).exp()).collect();
            let total: f64 = weights.iter().sum();
            for c in 0..d {
                let mixed: f64 = (0..keys)
                    .map(|j| weights[j] * v[row(keys, j) + c] as f64)
                    .sum();
                out.push((mixed / total) as f32);
            }
        }
    }
    out
}

/// burn's fused attention kernel, reached directly: burn 0.22 picks it only when built with
/// autotune (which would benchmark every kernel on first use, a minute of compiling on a
/// software adapter), and otherwise runs its materialising fallback.
#[cfg(any(feature = "wgpu", feature = "webgpu"))]
mod flash {
    use burn::backend::Cube;
    use burn::tensor::Tensor;
    use burn::tensor::ops::AttentionModuleOptions;
    use burn_cubecl::kernel::attention::flash_attention;
    use cubek::attention::forward::launch::{BlueprintStrategy, Strategy};

    /// `softmax(q·kᵀ/√d)·v` `[b, h, n, d]` in one kernel; `None` where the tensors are not on a
    /// cubecl device or the kernel cannot take their shape (the caller then slices).
    pub(super) fn attention(q: &Tensor<4>, k: &Tensor<4>, v: &Tensor<4>) -> Option<Tensor<4>> {
        let [q, k, v] = [q, k, v].map(|t| t.clone().try_into_primitive::<Cube>().ok());
        let options = AttentionModuleOptions {
            scale: None,
            softcap: None,
            is_causal: false,
        };
        // The unit routine: plain per-thread tiles, no cooperative-matrix hardware needed,
        // so it runs on every WebGPU adapter.
        let strategy = Strategy::Unit(BlueprintStrategy::Inferred(()));
        match flash_attention(q?, k?, v?, None, None, options, strategy) {
            Ok(out) => Some(Tensor::from_primitive::<Cube>(out)),
            Err(error) => {
                tracing::debug!("fused attention not available here: {error:?}");
                None
            }
        }
    }
}

/// Apply the row-wise `f` to `x` `[b, n, c]` over slices of rows, so that its widest
/// intermediate (`widest` values per row) stays within the buffer budget.
pub(crate) fn by_rows(
    x: Tensor<3>,
    widest: usize,
    f: impl Fn(Tensor<3>) -> Tensor<3>,
) -> Tensor<3> {
    let [b, n, _] = x.dims();
    let slices = row_slices(n, b * widest * x.dtype().size());
    if slices.len() == 1 {
        return f(x);
    }
    let parts = slices
        .into_iter()
        .map(|rows| f(x.clone().narrow(1, rows.start, rows.len())))
        .collect();
    Tensor::cat(parts, 1)
}

/// As [`by_rows`] for an `f` with several row-wise outputs (e.g. q, k and v from one fused
/// projection): each output is put back together from its slices.
pub(crate) fn by_rows_many<const N: usize>(
    x: Tensor<3>,
    widest: usize,
    f: impl Fn(Tensor<3>) -> [Tensor<3>; N],
) -> [Tensor<3>; N] {
    let [b, n, _] = x.dims();
    let slices = row_slices(n, b * widest * x.dtype().size());
    if slices.len() == 1 {
        return f(x);
    }
    let mut parts: [Vec<Tensor<3>>; N] = std::array::from_fn(|_| Vec::new());
    for rows in slices {
        for (i, out) in f(x.clone().narrow(1, rows.start, rows.len()))
            .into_iter()
            .enumerate()
        {
            parts[i].push(out);
        }
    }
    parts.map(|p| Tensor::cat(p, 1))
}

/// `linear`'s output columns `columns` only (a fused projection's one part), for `x` `[b, n, c]`.
pub(crate) fn linear_columns(linear: &Linear, x: Tensor<3>, columns: Range<usize>) -> Tensor<3> {
    let width = columns.len();
    let weight = weight_for(linear, x.dtype());
    let weight = if matches!(weight.dtype(), DType::QFloat(_)) {
        // A quantized weight is sliced as stored, `[out, in]` (whole rows of blocks), so it
        // stays quantized.
        weight
            .transpose()
            .narrow(0, columns.start, width)
            .transpose()
    } else {
        weight.narrow(1, columns.start, width)
    };
    let out = record(x.matmul(weight.unsqueeze::<3>()));
    match &linear.bias {
        Some(bias) => out + bias.val().narrow(0, columns.start, width).unsqueeze::<3>(),
        None => out,
    }
}

/// `linear(x)` in f32 whatever the weights' dtype (the last projections before a value the
/// host reads, e.g. the field).
pub(crate) fn linear_f32<const D: usize>(linear: &Linear, x: Tensor<D>) -> Tensor<D> {
    let weight = linear.weight.val().cast(DType::F32);
    let out = x.cast(DType::F32).matmul(weight.unsqueeze::<D>());
    match &linear.bias {
        Some(bias) => out + bias.val().cast(DType::F32).unsqueeze::<D>(),
        None => out,
    }
}

/// `norm(x)` computed and returned in f32 whatever the weights' dtype (burn's norms return
/// the input's dtype); `eps` is the norm's own.
pub(crate) fn layer_norm_f32<const D: usize>(
    norm: &LayerNorm,
    x: Tensor<D>,
    eps: f64,
) -> Tensor<D> {
    let x = x.cast(DType::F32);
    let mean = x.clone().mean_dim(D - 1);
    let centred = x - mean;
    let var = centred.clone().powf_scalar(2.0).mean_dim(D - 1);
    let normed = centred / (var + eps).sqrt() * norm.gamma.val().cast(DType::F32).unsqueeze::<D>();
    match &norm.beta {
        Some(beta) => normed + beta.val().cast(DType::F32).unsqueeze::<D>(),
        None => normed,
    }
}

/// `linear(cat(parts, 2))` without building the concatenation: each part meets its own rows of
/// the weight (the U-Net skip joins two full-width activations).
pub(crate) fn linear_of_cat(linear: &Linear, parts: Vec<Tensor<3>>) -> Tensor<3> {
    let mut start = 0;
    let mut out: Option<Tensor<3>> = None;
    for part in parts {
        let width = part.dims()[2];
        let weight = linear.weight.val().narrow(0, start, width);
        let term = record(part.matmul(weight.unsqueeze::<3>()));
        out = Some(match out {
            Some(sum) => sum + term,
            None => term,
        });
        start += width;
    }
    let out = out.expect("at least one part");
    match &linear.bias {
        Some(bias) => out + bias.val().unsqueeze::<3>(),
        None => out,
    }
}

#[cfg(all(test, feature = "flex"))]
mod tests {
    use burn::tensor::{Distribution, Tensor};

    use super::*;

    #[test]
    fn sliced_attention_and_rows_equal_the_whole() {
        // One test owns the global budget in this binary (the others leave it alone).
        let device = crate::device::cpu();
        let q = Tensor::<4>::random([2, 3, 37, 8], Distribution::Normal(0.0, 1.0), &device);
        let k = Tensor::<4>::random([2, 3, 11, 8], Distribution::Normal(0.0, 1.0), &device);
        let v = Tensor::<4>::random([2, 3, 11, 8], Distribution::Normal(0.0, 1.0), &device);
        let x = Tensor::<3>::random([2, 37, 5], Distribution::Normal(0.0, 1.0), &device);
        let wide = |x: Tensor<3>| x.clone().repeat_dim(2, 4).exp().sum_dim(2) + x;
        let whole = attend(q.clone(), k.clone(), v.clone());
        let whole_rows = by_rows(x.clone(), 20, wide);
        // 10 queries' scores (2·3·11·4 bytes each) per slice: 37 = 3·10 + 7.
        set_buffer_budget(2 * 3 * 11 * 4 * 10);
        reset_largest_intermediate();
        let sliced = attend(q, k, v);
        assert_eq!(largest_intermediate_bytes(), 2 * 3 * 11 * 4 * 10);
        // Rows of 20 values: 4 rows per slice.
        set_buffer_budget(2 * 20 * 4 * 4);
        let sliced_rows = by_rows(x, 20, wide);
        set_buffer_budget(DEFAULT_BUFFER_BUDGET);
        assert_eq!(sliced.dims(), whole.dims());
        let diff: f32 = (sliced - whole).abs().max().into_scalar();
        assert!(diff < 1e-6, "attention differs by {diff}");
        let diff: f32 = (sliced_rows - whole_rows).abs().max().into_scalar();
        assert!(diff < 1e-6, "rows differ by {diff}");
    }
}
