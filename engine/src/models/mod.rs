//! The shape pipeline's networks, one file per model, each with a `Config` (parsed from the
//! official config values), modules with `init`, and a forward pass that reads like the paper.
//!
//! No tensor a model creates may exceed one GPU storage-buffer binding (WebGPU's default is
//! 128 MiB; at real sizes the DiT's attention scores alone would be 2 GiB), so attention runs
//! over slices of queries and the wide MLPs over slices of rows; see [`set_buffer_budget`].

pub mod dinov2;
pub mod dit20;
pub mod dit21;
pub mod isnet;
pub mod shape_vae;

use std::ops::Range;
use std::sync::atomic::{AtomicUsize, Ordering};

use burn::nn::Linear;
use burn::tensor::Tensor;
use burn::tensor::activation::softmax;

/// WebGPU's default `maxStorageBufferBindingSize`, which every adapter offers.
pub const DEFAULT_BUFFER_BUDGET: usize = 128 << 20;

static BUFFER_BUDGET: AtomicUsize = AtomicUsize::new(DEFAULT_BUFFER_BUDGET);
static LARGEST_INTERMEDIATE: AtomicUsize = AtomicUsize::new(0);

/// The most bytes one attention-score or MLP-hidden tensor may take (at least one row is
/// always computed, however small the budget).
pub fn set_buffer_budget(bytes: usize) {
    BUFFER_BUDGET.store(bytes.max(1), Ordering::Relaxed);
}

pub fn buffer_budget() -> usize {
    BUFFER_BUDGET.load(Ordering::Relaxed)
}

/// The largest attention-score or MLP-hidden tensor created since the last reset, in bytes
/// (these are the models' largest activations).
pub fn largest_intermediate_bytes() -> usize {
    LARGEST_INTERMEDIATE.load(Ordering::Relaxed)
}

pub fn reset_largest_intermediate() {
    LARGEST_INTERMEDIATE.store(0, Ordering::Relaxed);
}

/// How many of `rows` fit the budget when each costs `row_bytes`, and record the size used.
fn rows_per_slice(rows: usize, row_bytes: usize) -> usize {
    let fit = (buffer_budget() / row_bytes.max(1)).clamp(1, rows.max(1));
    LARGEST_INTERMEDIATE.fetch_max(fit * row_bytes, Ordering::Relaxed);
    fit
}

/// Scaled dot-product attention of `q` `[b, h, n, d]` over `k`, `v` `[b, h, m, d]`, heads
/// merged back to `[b, n, h·d]` (every model's attention ends here). The `[b, h, n, m]`
/// scores are built for as many queries at a time as the buffer budget allows.
pub(crate) fn attend(q: Tensor<4>, k: Tensor<4>, v: Tensor<4>) -> Tensor<3> {
    let [b, h, n, d] = q.dims();
    let m = k.dims()[2];
    let scale = 1.0 / (d as f64).sqrt();
    let k_t = k.swap_dims(2, 3);
    let per_query = b * h * m * q.dtype().size();
    let slice = rows_per_slice(n, per_query);
    let attend_slice = |q: Tensor<4>| {
        let rows = q.dims()[2];
        let weights = softmax(q.matmul(k_t.clone()) * scale, 3);
        weights
            .matmul(v.clone())
            .swap_dims(1, 2)
            .reshape([b, rows, h * d])
    };
    if slice >= n {
        return attend_slice(q);
    }
    let parts = (0..n)
        .step_by(slice)
        .map(|start| attend_slice(q.clone().narrow(2, start, slice.min(n - start))))
        .collect();
    Tensor::cat(parts, 1)
}

/// Apply the row-wise `f` to `x` `[b, n, c]` over slices of rows, so that its widest
/// intermediate (`widest` values per row) stays within the buffer budget.
pub(crate) fn by_rows(
    x: Tensor<3>,
    widest: usize,
    f: impl Fn(Tensor<3>) -> Tensor<3>,
) -> Tensor<3> {
    let [b, n, _] = x.dims();
    let slice = rows_per_slice(n, b * widest * x.dtype().size());
    if slice >= n {
        return f(x);
    }
    let parts = (0..n)
        .step_by(slice)
        .map(|start| f(x.clone().narrow(1, start, slice.min(n - start))))
        .collect();
    Tensor::cat(parts, 1)
}

/// `linear`'s output columns `columns` only (a fused projection's one part), for `x` `[b, n, c]`.
pub(crate) fn linear_columns(linear: &Linear, x: Tensor<3>, columns: Range<usize>) -> Tensor<3> {
    let width = columns.len();
    let weight = linear.weight.val().narrow(1, columns.start, width);
    let out = x.matmul(weight.unsqueeze::<3>());
    match &linear.bias {
        Some(bias) => out + bias.val().narrow(0, columns.start, width).unsqueeze::<3>(),
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
