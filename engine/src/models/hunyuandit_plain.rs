//! `HunYuanDiTPlain`, the Hunyuan3D 2.1 denoiser: the timestep enters as a prepended token (not
//! adaLN), U-Net-style long skips join the second half of the blocks to the first (LIFO), each
//! block is self-attention → cross-attention to the image tokens → MLP, and the last
//! `num_moe_layers` blocks replace the MLP with a mixture of experts (top-k softmax weights, not
//! renormalised, plus a shared expert). Attention keeps the official per-head q|k|v interleave
//! and RMS qk-norm.
//!
//! Follows `hy3dshape/hy3dshape/models/denoisers/hunyuandit.py` and `moe_layers.py` of the
//! official code, <https://github.com/Tencent-Hunyuan/Hunyuan3D-2.1>.

use crate::device::ReadbackError;
use burn::module::Module;
use burn::nn::{LayerNorm, LayerNormConfig, Linear, LinearConfig, RmsNorm, RmsNormConfig};
use burn::tensor::activation::{gelu, softmax};
use burn::tensor::{DType, Device, IndexingUpdateOp, Int, Tensor, TensorData};
use serde::Deserialize;

use super::{
    attend, by_rows, by_rows_many, cat, float, host_tensor, int, linear, linear_of_cat, row_slices,
    yes,
};

/// Where the denoiser's weights sit in the official bundled checkpoint.
pub const CHECKPOINT_PREFIX: &str = "model.";

/// The official `HunYuanDiTPlain` params, with the official defaults. Every field the class
/// takes is listed: an unknown one is refused, and [`HunyuanDitPlainConfig::validate`] refuses values whose
/// code path the engine does not implement (naming the field and the value).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HunyuanDitPlainConfig {
    /// Latent tokens (used only by the positional embedding).
    #[serde(default = "int::<1024>")]
    pub input_size: usize,
    #[serde(default = "int::<4>")]
    pub in_channels: usize,
    #[serde(default = "int::<1024>")]
    pub hidden_size: usize,
    #[serde(default = "int::<1024>")]
    pub context_dim: usize,
    #[serde(default = "int::<24>")]
    pub depth: usize,
    #[serde(default = "int::<16>")]
    pub num_heads: usize,
    /// A float in the official signature (`int(hidden_size * mlp_ratio)` wide).
    #[serde(default = "float::<4>")]
    pub mlp_ratio: f64,
    #[serde(default = "layer")]
    pub norm_type: String,
    #[serde(default = "rms")]
    pub qk_norm_type: String,
    #[serde(default)]
    pub qk_norm: bool,
    /// Image tokens (used only by attention pooling).
    #[serde(default = "int::<257>")]
    pub text_len: usize,
    #[serde(default)]
    pub with_decoupled_ca: bool,
    #[serde(default = "int::<768>")]
    pub additional_cond_hidden_state: usize,
    #[serde(default = "int::<16>")]
    pub decoupled_ca_dim: usize,
    #[serde(default = "float::<1>")]
    pub decoupled_ca_weight: f64,
    #[serde(default)]
    pub use_pos_emb: bool,
    #[serde(default = "yes")]
    pub use_attention_pooling: bool,
    #[serde(default)]
    pub guidance_cond_proj_dim: Option<usize>,
    #[serde(default = "yes")]
    pub qkv_bias: bool,
    #[serde(default = "int::<6>")]
    pub num_moe_layers: usize,
    #[serde(default = "int::<8>")]
    pub num_experts: usize,
    #[serde(default = "int::<2>")]
    pub moe_top_k: usize,
}

fn layer() -> String {
    "layer".into()
}
fn rms() -> String {
    "rms".into()
}

/// The checkpoint name of a module path (the timestep MLP and diffusers' FeedForward are
/// index-named in PyTorch).
pub fn checkpoint_name(path: &str) -> String {
    let name = path
        .replace("t_embedder.fc_in.", "t_embedder.mlp.0.")
        .replace("t_embedder.fc_out.", "t_embedder.mlp.2.")
        .replace(".proj_in.", ".net.0.proj.")
        .replace(".proj_out.", ".net.2.");
    format!("{CHECKPOINT_PREFIX}{name}")
}

impl HunyuanDitPlainConfig {
    /// Refuse the official options whose code paths the engine does not implement.
    pub fn validate(&self) -> Result<(), String> {
        let refuse = |field: &str, value: String, why: &str| {
            Err(format!(
                "HunYuanDiTPlain {field}: {value} is not supported ({why})"
            ))
        };
        if self.norm_type != "layer" {
            return refuse(
                "norm_type",
                format!("{:?}", self.norm_type),
                "only \"layer\"",
            );
        }
        if self.qk_norm && self.qk_norm_type != "rms" {
            return refuse(
                "qk_norm_type",
                format!("{:?}", self.qk_norm_type),
                "only \"rms\"",
            );
        }
        if self.with_decoupled_ca {
            return refuse(
                "with_decoupled_ca",
                "true".into(),
                "no decoupled cross-attention",
            );
        }
        if self.use_pos_emb {
            return refuse("use_pos_emb", "true".into(), "no positional embedding");
        }
        if self.use_attention_pooling {
            return refuse(
                "use_attention_pooling",
                "true".into(),
                "no attention pooling",
            );
        }
        if let Some(dim) = self.guidance_cond_proj_dim {
            return refuse(
                "guidance_cond_proj_dim",
                dim.to_string(),
                "no guidance projection",
            );
        }
        if self.num_heads == 0 || !self.hidden_size.is_multiple_of(self.num_heads) {
            return refuse(
                "num_heads",
                self.num_heads.to_string(),
                &format!("it must divide hidden_size {}", self.hidden_size),
            );
        }
        if self.num_moe_layers > 0 && (self.moe_top_k == 0 || self.moe_top_k > self.num_experts) {
            return refuse(
                "moe_top_k",
                self.moe_top_k.to_string(),
                &format!("it must be 1 to num_experts ({})", self.num_experts),
            );
        }
        if self.mlp_ratio.is_nan() || self.mlp_ratio <= 0.0 {
            return refuse(
                "mlp_ratio",
                self.mlp_ratio.to_string(),
                "it must be positive",
            );
        }
        Ok(())
    }

    pub fn init(&self, device: &Device) -> HunyuanDitPlain {
        let d = self.hidden_size;
        let hd = d / self.num_heads;
        // Python's int(hidden_size * mlp_ratio).
        let inner = (d as f64 * self.mlp_ratio) as usize;
        let linear = |i, o, bias| LinearConfig::new(i, o).with_bias(bias).init(device);
        let norm = |n| LayerNormConfig::new(n).with_epsilon(1e-6).init(device);
        let rms = || {
            self.qk_norm
                .then(|| RmsNormConfig::new(hd).with_epsilon(1e-6).init(device))
        };
        let attention = |context: usize| Attention {
            to_q: linear(d, d, self.qkv_bias),
            to_k: linear(context, d, self.qkv_bias),
            to_v: linear(context, d, self.qkv_bias),
            q_norm: rms(),
            k_norm: rms(),
            out_proj: linear(d, d, true),
            heads: self.num_heads,
        };
        let feed_forward = || FeedForward {
            proj_in: linear(d, inner, true),
            proj_out: linear(inner, d, true),
        };
        let half = self.depth / 2;
        let blocks = (0..self.depth)
            .map(|layer| {
                let moe = self.depth - layer <= self.num_moe_layers;
                Block {
                    skip_linear: (layer > half).then(|| linear(2 * d, d, true)),
                    skip_norm: (layer > half).then(|| norm(d)),
                    norm1: norm(d),
                    attn1: attention(d),
                    norm2: norm(d),
                    attn2: attention(self.context_dim),
                    norm3: norm(d),
                    mlp: (!moe).then(|| Mlp {
                        fc1: linear(d, inner, true),
                        fc2: linear(inner, d, true),
                    }),
                    moe: moe.then(|| Moe {
                        gate: linear(d, self.num_experts, false),
                        experts: (0..self.num_experts).map(|_| feed_forward()).collect(),
                        shared_experts: feed_forward(),
                        top_k: self.moe_top_k,
                        route_tokens: true,
                    }),
                }
            })
            .collect();
        HunyuanDitPlain {
            t_embedder: TimestepEmbedder {
                fc_in: linear(d, inner, true),
                fc_out: linear(inner, d, true),
            },
            x_embedder: linear(self.in_channels, d, true),
            blocks,
            final_layer: FinalLayer {
                norm_final: norm(d),
                linear: linear(d, self.in_channels, true),
            },
        }
    }
}

#[derive(Module, Debug)]
pub struct HunyuanDitPlain {
    pub t_embedder: TimestepEmbedder,
    pub x_embedder: Linear,
    pub blocks: Vec<Block>,
    pub final_layer: FinalLayer,
}

#[derive(Module, Debug)]
pub struct TimestepEmbedder {
    pub fc_in: Linear,
    pub fc_out: Linear,
}

#[derive(Module, Debug)]
pub struct Block {
    pub skip_linear: Option<Linear>,
    pub skip_norm: Option<LayerNorm>,
    pub norm1: LayerNorm,
    pub attn1: Attention,
    pub norm2: LayerNorm,
    pub attn2: Attention,
    pub norm3: LayerNorm,
    pub mlp: Option<Mlp>,
    pub moe: Option<Moe>,
}

#[derive(Module, Debug)]
pub struct Attention {
    pub to_q: Linear,
    pub to_k: Linear,
    pub to_v: Linear,
    /// RMS qk-norm (`qk_norm: true`), or none.
    pub q_norm: Option<RmsNorm>,
    pub k_norm: Option<RmsNorm>,
    pub out_proj: Linear,
    heads: usize,
}

#[derive(Module, Debug)]
pub struct Mlp {
    pub fc1: Linear,
    pub fc2: Linear,
}

#[derive(Module, Debug)]
pub struct FeedForward {
    pub proj_in: Linear,
    pub proj_out: Linear,
}

#[derive(Module, Debug)]
pub struct Moe {
    pub gate: Linear,
    pub experts: Vec<FeedForward>,
    pub shared_experts: FeedForward,
    top_k: usize,
    /// Run each expert on its routed tokens only (the default); off, every expert runs on
    /// every token and the unchosen ones are weighted by zero (the benchmark's reference).
    route_tokens: bool,
}

#[derive(Module, Debug)]
pub struct FinalLayer {
    pub norm_final: LayerNorm,
    pub linear: Linear,
}

/// `norm(x)` where the norm exists.
fn maybe_norm(norm: &Option<RmsNorm>, x: Tensor<4>) -> Tensor<4> {
    match norm {
        Some(norm) => norm.forward(x),
        None => x,
    }
}

impl Attention {
    /// Self-attention: q|k|v concatenated, then sliced per head (the official interleave).
    /// The concatenation is built a slice of rows at a time (at the real size it would be
    /// three times the activation's width: 192 MiB in f32).
    fn self_attention(&self, x: Tensor<3>) -> Tensor<3> {
        let heads = self.heads;
        let [b, n, d] = x.dims();
        let hd = d / heads;
        let [q, k, v] = by_rows_many(x, 3 * d, |x| {
            let rows = x.dims()[1];
            let qkv = cat(
                vec![
                    linear(&self.to_q, x.clone()),
                    linear(&self.to_k, x.clone()),
                    linear(&self.to_v, x),
                ],
                2,
            )
            .reshape([b, rows, heads, 3 * hd]);
            [0, 1, 2].map(|i| qkv.clone().narrow(3, i * hd, hd).reshape([b, rows, d]))
        });
        let split = |t: Tensor<3>| t.reshape([b, n, heads, hd]);
        let q = maybe_norm(&self.q_norm, split(q));
        let k = maybe_norm(&self.k_norm, split(k));
        let out = attend(
            q.swap_dims(1, 2),
            k.swap_dims(1, 2),
            split(v).swap_dims(1, 2),
        );
        linear(&self.out_proj, out)
    }

    /// Cross-attention to `context`: plain heads for q, the k|v interleave for the context.
    fn cross_attention(&self, x: Tensor<3>, context: Tensor<3>) -> Tensor<3> {
        let heads = self.heads;
        let [b, n, d] = x.dims();
        let m = context.dims()[1];
        let hd = d / heads;
        let q = maybe_norm(
            &self.q_norm,
            linear(&self.to_q, x).reshape([b, n, heads, hd]),
        );
        let [k, v] = by_rows_many(context, 2 * d, |c| {
            let rows = c.dims()[1];
            let kv = cat(
                vec![linear(&self.to_k, c.clone()), linear(&self.to_v, c)],
                2,
            )
            .reshape([b, rows, heads, 2 * hd]);
            [0, 1].map(|i| kv.clone().narrow(3, i * hd, hd).reshape([b, rows, d]))
        });
        let k = maybe_norm(&self.k_norm, k.reshape([b, m, heads, hd]));
        let v = v.reshape([b, m, heads, hd]);
        let out = attend(q.swap_dims(1, 2), k.swap_dims(1, 2), v.swap_dims(1, 2));
        linear(&self.out_proj, out)
    }
}

impl FeedForward {
    fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        linear(&self.proj_out, gelu(linear(&self.proj_in, x)))
    }

    /// `forward` over slices of rows, so its `hidden`-wide activation stays within the budget.
    fn forward_by_rows(&self, x: Tensor<2>, hidden: usize) -> Tensor<2> {
        let [rows, d] = x.dims();
        by_rows(x.unsqueeze_dim::<3>(0), hidden, |x| {
            let rows = x.dims()[1];
            self.forward(x.reshape([rows, d])).unsqueeze_dim::<3>(0)
        })
        .reshape([rows, d])
    }
}

impl Moe {
    /// The widest activation per token: one expert's hidden layer.
    fn hidden_width(&self) -> usize {
        self.shared_experts.proj_in.weight.dims()[1]
    }

    /// Top-k experts per token, weighted by their softmax scores (not renormalised), plus the
    /// shared expert. Each expert runs only on the tokens routed to it: they are gathered, run
    /// and added back with their gate weights. How many tokens go where decides the batches'
    /// shapes, so the routing (`k` indices per token) is read back from the device once.
    async fn forward(&self, x: Tensor<3>) -> Result<Tensor<3>, ReadbackError> {
        let [b, n, d] = x.dims();
        let rows = b * n;
        let tokens = x.reshape([rows, d]);
        let dtype = tokens.dtype();
        let device = tokens.device();
        // The routing scores in f32: fp16 would tie near-equal experts.
        let scores = softmax(self.gate.forward(tokens.clone()).cast(DType::F32), 1);
        let (top, chosen) = scores.clone().topk_with_indices(self.top_k, 1);
        let hidden = self.hidden_width();
        let mut out = self.shared_experts.forward_by_rows(tokens.clone(), hidden);
        if !self.route_tokens {
            let weights = scores
                .zeros_like()
                .scatter(1, chosen, top, IndexingUpdateOp::Add)
                .cast(dtype);
            for (e, expert) in self.experts.iter().enumerate() {
                let w = weights.clone().narrow(1, e, 1);
                out = out + expert.forward_by_rows(tokens.clone(), hidden) * w;
            }
            return Ok(out.reshape([b, n, d]));
        }
        let chosen: Vec<usize> = chosen
            .into_data_async()
            .await
            .map_err(|e| ReadbackError::of("the experts' routing", e))?
            .iter::<i64>()
            .map(|e| e as usize)
            .collect();
        // `top` flattened: the gate weight of (token r, its i-th choice) sits at r·k + i.
        let gate_weights = top.reshape([rows * self.top_k]).cast(dtype);
        let ints = |values: Vec<i64>| {
            let len = values.len();
            Tensor::<1, Int>::from_data(TensorData::new(values, [len]), &device)
        };
        for (e, expert) in self.experts.iter().enumerate() {
            let picks: Vec<usize> = (0..chosen.len()).filter(|&p| chosen[p] == e).collect();
            for slice in row_slices(picks.len(), hidden * dtype.size()) {
                let picks = &picks[slice];
                let token_rows = ints(picks.iter().map(|&p| (p / self.top_k) as i64).collect());
                let weights = gate_weights
                    .clone()
                    .select(0, ints(picks.iter().map(|&p| p as i64).collect()))
                    .unsqueeze_dim::<2>(1);
                let routed = expert.forward(tokens.clone().select(0, token_rows.clone()));
                out = out.select_assign(0, token_rows, routed * weights, IndexingUpdateOp::Add);
            }
        }
        Ok(out.reshape([b, n, d]))
    }
}

impl Block {
    async fn forward(
        &self,
        h: Tensor<3>,
        context: Tensor<3>,
        skip: Option<Tensor<3>>,
    ) -> Result<Tensor<3>, ReadbackError> {
        let mut h = h;
        if let (Some(skip), Some(skip_linear), Some(norm)) =
            (skip, &self.skip_linear, &self.skip_norm)
        {
            // skip_linear(cat([skip, h])) without the double-width concatenation.
            h = norm.forward(linear_of_cat(skip_linear, vec![skip, h]));
        }
        h = h.clone() + self.attn1.self_attention(self.norm1.forward(h));
        h = h.clone() + self.attn2.cross_attention(self.norm2.forward(h), context);
        let normed = self.norm3.forward(h.clone());
        let fed = match (&self.mlp, &self.moe) {
            (_, Some(moe)) => moe.forward(normed).await?,
            (Some(mlp), None) => by_rows(normed, mlp.fc1.weight.dims()[1], |x| {
                linear(&mlp.fc2, gelu(linear(&mlp.fc1, x)))
            }),
            (None, None) => unreachable!("a block has an MLP or a MoE"),
        };
        Ok(h + fed)
    }
}

impl HunyuanDitPlain {
    /// The float dtype the network computes in (its weights').
    pub fn dtype(&self) -> DType {
        self.x_embedder.weight.val().dtype()
    }

    /// The sinusoidal timestep features: `t` in [0, 1] (not × 1000), sin half first; computed
    /// in f32 and narrowed to the network's dtype.
    fn timestep_features(&self, t: &[f32], device: &Device) -> Tensor<2> {
        let d = self.x_embedder.weight.dims()[1];
        let half = d / 2;
        let mut rows = Vec::with_capacity(t.len() * d);
        for &t in t {
            let args: Vec<f32> = (0..half)
                .map(|i| t * (-(10000f32.ln()) * i as f32 / half as f32).exp())
                .collect();
            rows.extend(args.iter().map(|a| a.sin()));
            rows.extend(args.iter().map(|a| a.cos()));
        }
        host_tensor(rows, [t.len(), d], self.dtype(), device)
    }

    /// Velocity for latents `x` `[b, latents, channels]` at times `t` (one per batch row) given
    /// image tokens `context` `[b, tokens, context_dim]`.
    pub async fn forward(
        &self,
        x: Tensor<3>,
        t: &[f32],
        context: Tensor<3>,
    ) -> Result<Tensor<3>, ReadbackError> {
        let device = x.device();
        let x = x.cast(self.dtype());
        let context = context.cast(self.dtype());
        let c = linear(
            &self.t_embedder.fc_out,
            gelu(linear(
                &self.t_embedder.fc_in,
                self.timestep_features(t, &device),
            )),
        );
        let mut h = cat(
            vec![c.unsqueeze_dim::<3>(1), linear(&self.x_embedder, x)],
            1,
        );
        let half = self.blocks.len() / 2;
        let mut skips = Vec::new();
        for (layer, block) in self.blocks.iter().enumerate() {
            let skip = (layer > half).then(|| skips.pop().expect("a skip per late block"));
            h = block.forward(h, context.clone(), skip).await?;
            if layer < half {
                skips.push(h.clone());
            }
        }
        let h = self.final_layer.norm_final.forward(h);
        let [b, n, d] = h.dims();
        Ok(linear(
            &self.final_layer.linear,
            h.slice([0..b, 1..n, 0..d]),
        ))
    }

    /// Route each token to its top-k experts only (`true`, the default), or run every expert
    /// on every token (the reference the benchmark compares routing with).
    pub fn set_moe_routing(&mut self, route_tokens: bool) {
        for moe in self.blocks.iter_mut().filter_map(|b| b.moe.as_mut()) {
            moe.route_tokens = route_tokens;
        }
    }
}
