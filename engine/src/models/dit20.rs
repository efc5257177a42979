//! `Hunyuan3DDiT`, the Hunyuan3D 2.0 / 2mini / turbo denoiser: Flux-style double-stream blocks
//! (latents and image tokens with their own weights, attending jointly, image tokens first) then
//! single-stream blocks over the joint sequence, all modulated (shift/scale/gate) by the
//! timestep vector; no positional encoding. The timestep embedding keeps the official call's
//! quirk: `max_period = 1000` (the time factor lands in that argument), cos half first.

use burn::module::{Module, Param};
use burn::nn::{Linear, LinearConfig};
use burn::tensor::activation::silu;
use burn::tensor::{Device, Tensor, TensorData};
use serde::Deserialize;

use super::{attend, by_rows, linear_columns};

pub const CHECKPOINT_PREFIX: &str = "model.";

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Dit20Config {
    pub in_channels: usize,
    pub context_in_dim: usize,
    pub hidden_size: usize,
    pub mlp_ratio: f64,
    pub num_heads: usize,
    pub depth: usize,
    pub depth_single_blocks: usize,
    #[serde(default = "yes")]
    pub qkv_bias: bool,
    #[serde(default)]
    pub guidance_embed: bool,
}

fn yes() -> bool {
    true
}

/// The checkpoint name of a module path (index-named PyTorch `Sequential`s).
pub fn checkpoint_name(path: &str) -> String {
    let name = path
        .replace("_mlp.fc_in.", "_mlp.0.")
        .replace("_mlp.fc_out.", "_mlp.2.")
        .replace("final_layer.ada_ln.", "final_layer.adaLN_modulation.1.");
    format!("{CHECKPOINT_PREFIX}{name}")
}

/// Width of the timestep features.
const TIME_FEATURES: usize = 256;

impl Dit20Config {
    pub fn init(&self, device: &Device) -> Dit20 {
        let d = self.hidden_size;
        let hd = d / self.num_heads;
        let mlp = (d as f64 * self.mlp_ratio) as usize;
        let linear = |i, o, bias| LinearConfig::new(i, o).with_bias(bias).init(device);
        let embedder = || MlpEmbedder {
            in_layer: linear(TIME_FEATURES, d, true),
            out_layer: linear(d, d, true),
        };
        let qk_norm = || QkNorm {
            query_norm: RmsNorm::new(hd, device),
            key_norm: RmsNorm::new(hd, device),
        };
        let attention = || SelfAttention {
            qkv: linear(d, 3 * d, self.qkv_bias),
            norm: qk_norm(),
            proj: linear(d, d, true),
        };
        let two_layer = || TwoLayerMlp {
            fc_in: linear(d, mlp, true),
            fc_out: linear(mlp, d, true),
        };
        Dit20 {
            latent_in: linear(self.in_channels, d, true),
            time_in: embedder(),
            guidance_in: self.guidance_embed.then(embedder),
            cond_in: linear(self.context_in_dim, d, true),
            double_blocks: (0..self.depth)
                .map(|_| DoubleStreamBlock {
                    img_mod: Modulation {
                        lin: linear(d, 6 * d, true),
                    },
                    img_attn: attention(),
                    img_mlp: two_layer(),
                    txt_mod: Modulation {
                        lin: linear(d, 6 * d, true),
                    },
                    txt_attn: attention(),
                    txt_mlp: two_layer(),
                })
                .collect(),
            single_blocks: (0..self.depth_single_blocks)
                .map(|_| SingleStreamBlock {
                    linear1: linear(d, 3 * d + mlp, true),
                    linear2: linear(d + mlp, d, true),
                    norm: qk_norm(),
                    modulation: Modulation {
                        lin: linear(d, 3 * d, true),
                    },
                })
                .collect(),
            final_layer: LastLayer {
                ada_ln: linear(d, 2 * d, true),
                linear: linear(d, self.in_channels, true),
            },
            heads: self.num_heads,
        }
    }
}

#[derive(Module, Debug)]
pub struct Dit20 {
    pub latent_in: Linear,
    pub time_in: MlpEmbedder,
    pub guidance_in: Option<MlpEmbedder>,
    pub cond_in: Linear,
    pub double_blocks: Vec<DoubleStreamBlock>,
    pub single_blocks: Vec<SingleStreamBlock>,
    pub final_layer: LastLayer,
    heads: usize,
}

#[derive(Module, Debug)]
pub struct MlpEmbedder {
    pub in_layer: Linear,
    pub out_layer: Linear,
}

/// RMSNorm with Flux's parameter name (`scale`).
#[derive(Module, Debug)]
pub struct RmsNorm {
    pub scale: Param<Tensor<1>>,
}

impl RmsNorm {
    fn new(dim: usize, device: &Device) -> Self {
        Self {
            scale: Param::from_tensor(Tensor::ones([dim], device)),
        }
    }

    fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let rms = (x.clone().powf_scalar(2.0).mean_dim(3) + 1e-6).sqrt();
        x / rms * self.scale.val().unsqueeze::<4>()
    }
}

#[derive(Module, Debug)]
pub struct QkNorm {
    pub query_norm: RmsNorm,
    pub key_norm: RmsNorm,
}

#[derive(Module, Debug)]
pub struct SelfAttention {
    pub qkv: Linear,
    pub norm: QkNorm,
    pub proj: Linear,
}

#[derive(Module, Debug)]
pub struct Modulation {
    pub lin: Linear,
}

#[derive(Module, Debug)]
pub struct TwoLayerMlp {
    pub fc_in: Linear,
    pub fc_out: Linear,
}

#[derive(Module, Debug)]
pub struct DoubleStreamBlock {
    pub img_mod: Modulation,
    pub img_attn: SelfAttention,
    pub img_mlp: TwoLayerMlp,
    pub txt_mod: Modulation,
    pub txt_attn: SelfAttention,
    pub txt_mlp: TwoLayerMlp,
}

#[derive(Module, Debug)]
pub struct SingleStreamBlock {
    pub linear1: Linear,
    pub linear2: Linear,
    pub norm: QkNorm,
    pub modulation: Modulation,
}

#[derive(Module, Debug)]
pub struct LastLayer {
    pub ada_ln: Linear,
    pub linear: Linear,
}

/// LayerNorm without affine parameters (eps 1e-6), over the last dimension.
fn layer_norm(x: Tensor<3>) -> Tensor<3> {
    let mean = x.clone().mean_dim(2);
    let centred = x - mean;
    let var = centred.clone().powf_scalar(2.0).mean_dim(2);
    centred / (var + 1e-6).sqrt()
}

/// GELU, tanh approximation (Flux's MLPs).
fn gelu_tanh(x: Tensor<3>) -> Tensor<3> {
    let inner =
        (x.clone() + x.clone().powf_scalar(3.0) * 0.044715) * (2.0 / std::f64::consts::PI).sqrt();
    x * (inner.tanh() + 1.0) * 0.5
}

/// `(shift, scale, gate)` triples from `silu(vec)`, each `[b, 1, d]`.
fn modulate(modulation: &Modulation, vec: Tensor<2>, parts: usize) -> Vec<Tensor<3>> {
    let out = modulation.lin.forward(silu(vec)).unsqueeze_dim::<3>(1);
    out.chunk(parts, 2)
}

/// `[b, l, 3d]` → q, k, v as `[b, h, l, hd]` (standard `(K H D)` layout), q and k RMS-normed.
fn split_qkv(qkv: Tensor<3>, heads: usize, norm: &QkNorm) -> (Tensor<4>, Tensor<4>, Tensor<4>) {
    let [b, l, three_d] = qkv.dims();
    let hd = three_d / 3 / heads;
    let qkv = qkv.reshape([b, l, 3, heads, hd]);
    let part = |i: usize| {
        qkv.clone()
            .narrow(2, i, 1)
            .reshape([b, l, heads, hd])
            .swap_dims(1, 2)
    };
    (
        norm.query_norm.forward(part(0)),
        norm.key_norm.forward(part(1)),
        part(2),
    )
}

/// The official `timestep_embedding(t, 256, 1000)`: `1000 t` against periods up to 1000,
/// cos half first.
fn timestep_features(t: &[f32], device: &Device) -> Tensor<2> {
    let half = TIME_FEATURES / 2;
    let mut rows = Vec::with_capacity(t.len() * TIME_FEATURES);
    for &t in t {
        let t = t * 1000.0;
        let args: Vec<f32> = (0..half)
            .map(|i| t * (-(1000f32.ln()) * i as f32 / half as f32).exp())
            .collect();
        rows.extend(args.iter().map(|a| a.cos()));
        rows.extend(args.iter().map(|a| a.sin()));
    }
    Tensor::from_data(TensorData::new(rows, [t.len(), TIME_FEATURES]), device)
}

impl MlpEmbedder {
    fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        self.out_layer.forward(silu(self.in_layer.forward(x)))
    }
}

impl DoubleStreamBlock {
    fn forward(
        &self,
        img: Tensor<3>,
        txt: Tensor<3>,
        vec: Tensor<2>,
        heads: usize,
    ) -> (Tensor<3>, Tensor<3>) {
        let im = modulate(&self.img_mod, vec.clone(), 6);
        let tm = modulate(&self.txt_mod, vec, 6);
        let pre =
            |x: Tensor<3>, m: &[Tensor<3>]| (m[1].clone() + 1.0) * layer_norm(x) + m[0].clone();
        let (iq, ik, iv) = split_qkv(
            self.img_attn.qkv.forward(pre(img.clone(), &im)),
            heads,
            &self.img_attn.norm,
        );
        let (tq, tk, tv) = split_qkv(
            self.txt_attn.qkv.forward(pre(txt.clone(), &tm)),
            heads,
            &self.txt_attn.norm,
        );
        let n_txt = txt.dims()[1];
        let attn = attend(
            Tensor::cat(vec![tq, iq], 2),
            Tensor::cat(vec![tk, ik], 2),
            Tensor::cat(vec![tv, iv], 2),
        );
        let [b, n, d] = attn.dims();
        let txt_attn = attn.clone().slice([0..b, 0..n_txt, 0..d]);
        let img_attn = attn.slice([0..b, n_txt..n, 0..d]);
        let mlp = |m: &TwoLayerMlp, x: Tensor<3>| {
            by_rows(x, m.fc_in.weight.dims()[1], |x| {
                m.fc_out.forward(gelu_tanh(m.fc_in.forward(x)))
            })
        };
        let img = img + im[2].clone() * self.img_attn.proj.forward(img_attn);
        let img = img.clone()
            + im[5].clone()
                * mlp(
                    &self.img_mlp,
                    (im[4].clone() + 1.0) * layer_norm(img) + im[3].clone(),
                );
        let txt = txt + tm[2].clone() * self.txt_attn.proj.forward(txt_attn);
        let txt = txt.clone()
            + tm[5].clone()
                * mlp(
                    &self.txt_mlp,
                    (tm[4].clone() + 1.0) * layer_norm(txt) + tm[3].clone(),
                );
        (img, txt)
    }
}

impl SingleStreamBlock {
    fn forward(&self, x: Tensor<3>, vec: Tensor<2>, heads: usize) -> Tensor<3> {
        let m = modulate(&self.modulation, vec, 3);
        let x_mod = (m[1].clone() + 1.0) * layer_norm(x.clone()) + m[0].clone();
        // linear1 is the fused [qkv | mlp] projection; its two parts are computed separately
        // (and by slices of rows) so that no activation outgrows the buffer budget.
        let d = self.linear2.weight.dims()[1];
        let width = self.linear1.weight.dims()[1];
        let qkv = by_rows(x_mod.clone(), 3 * d, |x| {
            linear_columns(&self.linear1, x, 0..3 * d)
        });
        let (q, k, v) = split_qkv(qkv, heads, &self.norm);
        let attended = attend(q, k, v);
        let out = by_rows(
            Tensor::cat(vec![x_mod, attended], 2),
            width - 3 * d,
            |rows| {
                let x_mod = rows.clone().narrow(2, 0, d);
                let attended = rows.narrow(2, d, d);
                let mlp = linear_columns(&self.linear1, x_mod, 3 * d..width);
                self.linear2
                    .forward(Tensor::cat(vec![attended, gelu_tanh(mlp)], 2))
            },
        );
        x + m[2].clone() * out
    }
}

impl Dit20 {
    /// Velocity for latents `x` `[b, latents, channels]` at times `t` given image tokens
    /// `context`; `guidance` (one per row) for the guidance-distilled variants.
    pub fn forward(
        &self,
        x: Tensor<3>,
        t: &[f32],
        context: Tensor<3>,
        guidance: Option<&[f32]>,
    ) -> Tensor<3> {
        let device = x.device();
        let mut vec = self.time_in.forward(timestep_features(t, &device));
        if let (Some(embedder), Some(g)) = (&self.guidance_in, guidance) {
            vec = vec + embedder.forward(timestep_features(g, &device));
        }
        let mut img = self.latent_in.forward(x);
        let mut txt = self.cond_in.forward(context);
        for block in &self.double_blocks {
            (img, txt) = block.forward(img, txt, vec.clone(), self.heads);
        }
        let n_txt = txt.dims()[1];
        let mut joint = Tensor::cat(vec![txt, img], 1);
        for block in &self.single_blocks {
            joint = block.forward(joint, vec.clone(), self.heads);
        }
        let [b, n, d] = joint.dims();
        let img = joint.slice([0..b, n_txt..n, 0..d]);
        let shift_scale = self
            .final_layer
            .ada_ln
            .forward(silu(vec))
            .unsqueeze_dim::<3>(1)
            .chunk(2, 2);
        let img = (shift_scale[1].clone() + 1.0) * layer_norm(img) + shift_scale[0].clone();
        self.final_layer.linear.forward(img)
    }
}
