//! The shape pipeline's networks, one file per model, each with a `Config` (parsed from the
//! official config values), modules with `init`, and a forward pass that reads like the paper.

pub mod dinov2;
pub mod dit20;
pub mod dit21;
pub mod shape_vae;

use burn::tensor::Tensor;
use burn::tensor::activation::softmax;

/// Scaled dot-product attention of `q` `[b, h, n, d]` over `k`, `v` `[b, h, m, d]`, heads
/// merged back to `[b, n, h·d]` (every model's attention ends here).
pub(crate) fn attend(q: Tensor<4>, k: Tensor<4>, v: Tensor<4>) -> Tensor<3> {
    let [b, h, n, d] = q.dims();
    let weights = softmax(q.matmul(k.swap_dims(2, 3)) * (1.0 / (d as f64).sqrt()), 3);
    weights.matmul(v).swap_dims(1, 2).reshape([b, n, h * d])
}
