//! `HunYuanDiTPlain`, the Hunyuan3D 2.1 denoiser: the timestep enters as a prepended token (not
//! adaLN), U-Net-style long skips join the second half of the blocks to the first (LIFO), each
//! block is self-attention → cross-attention to the image tokens → MLP, and the last
//! `num_moe_layers` blocks replace the MLP with a mixture of experts (top-k softmax weights, not
//! renormalised, plus a shared expert). Attention keeps the official per-head q|k|v interleave
//! and RMS qk-norm.

use burn::module::Module;
use burn::nn::{LayerNorm, LayerNormConfig, Linear, LinearConfig, RmsNorm, RmsNormConfig};
use burn::tensor::activation::{gelu, softmax};
use burn::tensor::{Device, IndexingUpdateOp, Tensor, TensorData};
use serde::Deserialize;

use super::{attend, by_rows};

/// Where the denoiser's weights sit in the official bundled checkpoint.
pub const CHECKPOINT_PREFIX: &str = "model.";

/// The official `HunYuanDiTPlain` params the forward pass depends on.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Dit21Config {
    pub in_channels: usize,
    pub hidden_size: usize,
    pub context_dim: usize,
    pub depth: usize,
    pub num_heads: usize,
    #[serde(default = "four")]
    pub mlp_ratio: usize,
    #[serde(default)]
    pub qkv_bias: bool,
    #[serde(default)]
    pub num_moe_layers: usize,
    #[serde(default)]
    pub num_experts: usize,
    #[serde(default = "two")]
    pub moe_top_k: usize,
}

fn four() -> usize {
    4
}
fn two() -> usize {
    2
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

impl Dit21Config {
    pub fn init(&self, device: &Device) -> Dit21 {
        let d = self.hidden_size;
        let hd = d / self.num_heads;
        let inner = d * self.mlp_ratio;
        let linear = |i, o, bias| LinearConfig::new(i, o).with_bias(bias).init(device);
        let norm = |n| LayerNormConfig::new(n).with_epsilon(1e-6).init(device);
        let rms = || RmsNormConfig::new(hd).with_epsilon(1e-6).init(device);
        let attention = |context: usize| Attention {
            to_q: linear(d, d, self.qkv_bias),
            to_k: linear(context, d, self.qkv_bias),
            to_v: linear(context, d, self.qkv_bias),
            q_norm: rms(),
            k_norm: rms(),
            out_proj: linear(d, d, true),
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
                    }),
                }
            })
            .collect();
        Dit21 {
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
            heads: self.num_heads,
        }
    }
}

#[derive(Module, Debug)]
pub struct Dit21 {
    pub t_embedder: TimestepEmbedder,
    pub x_embedder: Linear,
    pub blocks: Vec<Block>,
    pub final_layer: FinalLayer,
    heads: usize,
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
    pub q_norm: RmsNorm,
    pub k_norm: RmsNorm,
    pub out_proj: Linear,
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
}

#[derive(Module, Debug)]
pub struct FinalLayer {
    pub norm_final: LayerNorm,
    pub linear: Linear,
}

impl Attention {
    /// Self-attention: q|k|v concatenated, then sliced per head (the official interleave).
    fn self_attention(&self, x: Tensor<3>, heads: usize) -> Tensor<3> {
        let [b, n, d] = x.dims();
        let hd = d / heads;
        let qkv = Tensor::cat(
            vec![
                self.to_q.forward(x.clone()),
                self.to_k.forward(x.clone()),
                self.to_v.forward(x),
            ],
            2,
        )
        .reshape([b, n, heads, 3 * hd]);
        let q = self.q_norm.forward(qkv.clone().narrow(3, 0, hd));
        let k = self.k_norm.forward(qkv.clone().narrow(3, hd, hd));
        let v = qkv.narrow(3, 2 * hd, hd);
        let out = attend(q.swap_dims(1, 2), k.swap_dims(1, 2), v.swap_dims(1, 2));
        self.out_proj.forward(out)
    }

    /// Cross-attention to `context`: plain heads for q, the k|v interleave for the context.
    fn cross_attention(&self, x: Tensor<3>, context: Tensor<3>, heads: usize) -> Tensor<3> {
        let [b, n, d] = x.dims();
        let m = context.dims()[1];
        let hd = d / heads;
        let q = self
            .q_norm
            .forward(self.to_q.forward(x).reshape([b, n, heads, hd]));
        let kv = Tensor::cat(
            vec![
                self.to_k.forward(context.clone()),
                self.to_v.forward(context),
            ],
            2,
        )
        .reshape([b, m, heads, 2 * hd]);
        let k = self.k_norm.forward(kv.clone().narrow(3, 0, hd));
        let v = kv.narrow(3, hd, hd);
        let out = attend(q.swap_dims(1, 2), k.swap_dims(1, 2), v.swap_dims(1, 2));
        self.out_proj.forward(out)
    }
}

impl FeedForward {
    fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        self.proj_out.forward(gelu(self.proj_in.forward(x)))
    }
}

impl Moe {
    /// The widest activation per token: one expert's hidden layer.
    fn hidden_width(&self) -> usize {
        self.shared_experts.proj_in.weight.dims()[1]
    }

    /// Top-k experts per token, weighted by their softmax scores (not renormalised), plus the
    /// shared expert. Every expert runs on every token here and the unchosen ones are weighted
    /// by zero: simple and exact; routing tokens to experts is the next optimisation.
    fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let [b, n, d] = x.dims();
        let tokens = x.reshape([b * n, d]);
        let scores = softmax(self.gate.forward(tokens.clone()), 1);
        let (top, index) = scores.clone().topk_with_indices(self.top_k, 1);
        let weights = scores
            .zeros_like()
            .scatter(1, index, top, IndexingUpdateOp::Add);
        let mut out = self.shared_experts.forward(tokens.clone());
        for (e, expert) in self.experts.iter().enumerate() {
            let w = weights.clone().narrow(1, e, 1);
            out = out + expert.forward(tokens.clone()) * w;
        }
        out.reshape([b, n, d])
    }
}

impl Block {
    fn forward(
        &self,
        h: Tensor<3>,
        context: Tensor<3>,
        skip: Option<Tensor<3>>,
        heads: usize,
    ) -> Tensor<3> {
        let mut h = h;
        if let (Some(skip), Some(linear), Some(norm)) = (skip, &self.skip_linear, &self.skip_norm) {
            h = norm.forward(linear.forward(Tensor::cat(vec![skip, h], 2)));
        }
        h = h.clone() + self.attn1.self_attention(self.norm1.forward(h), heads);
        h = h.clone()
            + self
                .attn2
                .cross_attention(self.norm2.forward(h), context, heads);
        let normed = self.norm3.forward(h.clone());
        let fed = match (&self.mlp, &self.moe) {
            (_, Some(moe)) => by_rows(normed, moe.hidden_width(), |x| moe.forward(x)),
            (Some(mlp), None) => by_rows(normed, mlp.fc1.weight.dims()[1], |x| {
                mlp.fc2.forward(gelu(mlp.fc1.forward(x)))
            }),
            (None, None) => unreachable!("a block has an MLP or a MoE"),
        };
        h + fed
    }
}

impl Dit21 {
    /// The sinusoidal timestep features: `t` in [0, 1] (not × 1000), sin half first.
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
        Tensor::from_data(TensorData::new(rows, [t.len(), d]), device)
    }

    /// Velocity for latents `x` `[b, latents, channels]` at times `t` (one per batch row) given
    /// image tokens `context` `[b, tokens, context_dim]`.
    pub fn forward(&self, x: Tensor<3>, t: &[f32], context: Tensor<3>) -> Tensor<3> {
        let device = x.device();
        let c = self.t_embedder.fc_out.forward(gelu(
            self.t_embedder
                .fc_in
                .forward(self.timestep_features(t, &device)),
        ));
        let mut h = Tensor::cat(vec![c.unsqueeze_dim::<3>(1), self.x_embedder.forward(x)], 1);
        let half = self.blocks.len() / 2;
        let mut skips = Vec::new();
        for (layer, block) in self.blocks.iter().enumerate() {
            let skip = (layer > half).then(|| skips.pop().expect("a skip per late block"));
            h = block.forward(h, context.clone(), skip, self.heads);
            if layer < half {
                skips.push(h.clone());
            }
        }
        let h = self.final_layer.norm_final.forward(h);
        let [b, n, d] = h.dims();
        self.final_layer.linear.forward(h.slice([0..b, 1..n, 0..d]))
    }
}
