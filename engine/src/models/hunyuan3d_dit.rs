//! `Hunyuan3DDiT`, the Hunyuan3D 2.0 / 2mini / turbo denoiser: Flux-style double-stream blocks
//! (latents and image tokens with their own weights, attending jointly, image tokens first) then
//! single-stream blocks over the joint sequence, all modulated (shift/scale/gate) by the
//! timestep vector; no positional encoding. The timestep embedding keeps the official call's
//! quirk: `max_period = 1000` (the time factor lands in that argument), cos half first.
//!
//! Follows `hy3dgen/shapegen/models/denoisers/hunyuan3ddit.py` of the official code,
//! <https://github.com/Tencent-Hunyuan/Hunyuan3D-2> (the 2.1 repository carries the same file).

use burn::module::{Module, Param};
use burn::nn::{Linear, LinearConfig};
use burn::tensor::activation::silu;
use burn::tensor::{DType, Device, Tensor};
use serde::Deserialize;

use super::{
    ForwardError, attend, by_rows, cat, float, host_tensor, int, linear, linear_columns, yes,
};

pub const CHECKPOINT_PREFIX: &str = "model.";

/// The official `Hunyuan3DDiT` params, with the official defaults. Every field the class
/// takes is listed: an unknown one is refused, and [`Hunyuan3dDitConfig::validate`] refuses what the
/// official constructor refuses.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Hunyuan3dDitConfig {
    #[serde(default = "int::<64>")]
    pub in_channels: usize,
    #[serde(default = "int::<1536>")]
    pub context_in_dim: usize,
    #[serde(default = "int::<1024>")]
    pub hidden_size: usize,
    #[serde(default = "float::<4>")]
    pub mlp_ratio: f64,
    #[serde(default = "int::<16>")]
    pub num_heads: usize,
    #[serde(default = "int::<16>")]
    pub depth: usize,
    #[serde(default = "int::<32>")]
    pub depth_single_blocks: usize,
    /// Rotary axes; unused (the official forward passes no positional encoding) but checked
    /// against the head width as the official constructor does.
    #[serde(default = "axes")]
    pub axes_dim: Vec<usize>,
    #[serde(default = "float::<10000>")]
    pub theta: f64,
    #[serde(default = "yes")]
    pub qkv_bias: bool,
    /// Lands in `timestep_embedding`'s `max_period` argument (the official call's quirk).
    #[serde(default = "float::<1000>")]
    pub time_factor: f64,
    #[serde(default)]
    pub guidance_embed: bool,
    /// A training-time checkpoint path; the weights come from the bundle.
    #[serde(default)]
    pub ckpt_path: Option<String>,
}

fn axes() -> Vec<usize> {
    vec![64]
}

impl Hunyuan3dDitConfig {
    /// The official constructor's own checks.
    pub fn validate(&self) -> Result<(), String> {
        if self.num_heads == 0 || !self.hidden_size.is_multiple_of(self.num_heads) {
            return Err(format!(
                "Hunyuan3DDiT num_heads: {} must divide hidden_size {}",
                self.num_heads, self.hidden_size
            ));
        }
        let head = self.hidden_size / self.num_heads;
        if self.axes_dim.iter().sum::<usize>() != head {
            return Err(format!(
                "Hunyuan3DDiT axes_dim: {:?} must sum to the head width {head}",
                self.axes_dim
            ));
        }
        if self.mlp_ratio.is_nan()
            || self.mlp_ratio <= 0.0
            || self.time_factor.is_nan()
            || self.time_factor <= 1.0
        {
            return Err(format!(
                "Hunyuan3DDiT mlp_ratio {} / time_factor {}: both must be positive (time_factor > 1)",
                self.mlp_ratio, self.time_factor
            ));
        }
        Ok(())
    }
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

impl Hunyuan3dDitConfig {
    pub fn init(&self, device: &Device) -> Hunyuan3dDit {
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
            heads: self.num_heads,
        };
        let two_layer = || TwoLayerMlp {
            fc_in: linear(d, mlp, true),
            fc_out: linear(mlp, d, true),
        };
        Hunyuan3dDit {
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
                    heads: self.num_heads,
                })
                .collect(),
            final_layer: LastLayer {
                ada_ln: linear(d, 2 * d, true),
                linear: linear(d, self.in_channels, true),
            },
            max_period: self.time_factor,
        }
    }
}

#[derive(Module, Debug)]
pub struct Hunyuan3dDit {
    pub latent_in: Linear,
    pub time_in: MlpEmbedder,
    pub guidance_in: Option<MlpEmbedder>,
    pub cond_in: Linear,
    pub double_blocks: Vec<DoubleStreamBlock>,
    pub single_blocks: Vec<SingleStreamBlock>,
    pub final_layer: LastLayer,
    max_period: f64,
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

    /// Flux's QK RMSNorm: computed in f32 (squares of fp16 values overflow past 256), the
    /// normalised value narrowed back before the scale, as the official code does.
    fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let dtype = x.dtype();
        let x = x.cast(DType::F32);
        let rms = (x.clone().powf_scalar(2.0).mean_dim(3) + 1e-6).sqrt();
        (x / rms).cast(dtype) * self.scale.val().unsqueeze::<4>()
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
    heads: usize,
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
    heads: usize,
}

#[derive(Module, Debug)]
pub struct LastLayer {
    pub ada_ln: Linear,
    pub linear: Linear,
}

/// LayerNorm without affine parameters (eps 1e-6), over the last dimension; statistics in f32.
fn layer_norm(x: Tensor<3>) -> Tensor<3> {
    let dtype = x.dtype();
    let x = x.cast(DType::F32);
    let mean = x.clone().mean_dim(2);
    let centred = x - mean;
    let var = centred.clone().powf_scalar(2.0).mean_dim(2);
    (centred / (var + 1e-6).sqrt()).cast(dtype)
}

/// GELU, tanh approximation (Flux's MLPs).
fn gelu_tanh(x: Tensor<3>) -> Tensor<3> {
    let inner =
        (x.clone() + x.clone().powf_scalar(3.0) * 0.044715) * (2.0 / std::f64::consts::PI).sqrt();
    x * (inner.tanh() + 1.0) * 0.5
}

/// One adaLN modulation, each part `[b, 1, d]`: the input of a sub-layer is
/// `(1 + scale) · LayerNorm(x) + shift`, and its output joins the residual times `gate`.
struct Modulated {
    shift: Tensor<3>,
    scale: Tensor<3>,
    gate: Tensor<3>,
}

impl Modulated {
    fn norm(&self, x: Tensor<3>) -> Tensor<3> {
        (self.scale.clone() + 1.0) * layer_norm(x) + self.shift.clone()
    }

    fn gated(&self, x: Tensor<3>) -> Tensor<3> {
        self.gate.clone() * x
    }
}

impl Modulation {
    /// `silu(vec)` → `N` (shift, scale, gate) triples, in the checkpoint's order.
    fn forward<const N: usize>(&self, vec: Tensor<2>) -> [Modulated; N] {
        let out = linear(&self.lin, silu(vec)).unsqueeze_dim::<3>(1);
        let mut parts = out.chunk(3 * N, 2).into_iter();
        std::array::from_fn(|_| {
            let mut next = || parts.next().expect("3 N chunks");
            Modulated {
                shift: next(),
                scale: next(),
                gate: next(),
            }
        })
    }
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

/// The official `timestep_embedding(t, 256, time_factor)`: `1000 t` against periods up to
/// `max_period` (the config's `time_factor`, 1000), cos half first; in f32 on the host.
fn timestep_features(t: &[f32], max_period: f64) -> Vec<f32> {
    let half = TIME_FEATURES / 2;
    let mut rows = Vec::with_capacity(t.len() * TIME_FEATURES);
    for &t in t {
        let t = t * 1000.0;
        let args: Vec<f32> = (0..half)
            .map(|i| t * (-((max_period as f32).ln()) * i as f32 / half as f32).exp())
            .collect();
        rows.extend(args.iter().map(|a| a.cos()));
        rows.extend(args.iter().map(|a| a.sin()));
    }
    rows
}

impl MlpEmbedder {
    fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        linear(&self.out_layer, silu(linear(&self.in_layer, x)))
    }
}

impl DoubleStreamBlock {
    fn forward(&self, img: Tensor<3>, txt: Tensor<3>, vec: Tensor<2>) -> (Tensor<3>, Tensor<3>) {
        let [img_attn_mod, img_mlp_mod] = self.img_mod.forward(vec.clone());
        let [txt_attn_mod, txt_mlp_mod] = self.txt_mod.forward(vec);
        let qkv = |attn: &SelfAttention, x: Tensor<3>| {
            let d = x.dims()[2];
            split_qkv(
                by_rows(x, 3 * d, |x| linear(&attn.qkv, x)),
                attn.heads,
                &attn.norm,
            )
        };
        let (iq, ik, iv) = qkv(&self.img_attn, img_attn_mod.norm(img.clone()));
        let (tq, tk, tv) = qkv(&self.txt_attn, txt_attn_mod.norm(txt.clone()));
        let n_txt = txt.dims()[1];
        let attn = attend(
            cat(vec![tq, iq], 2),
            cat(vec![tk, ik], 2),
            cat(vec![tv, iv], 2),
        );
        let [b, n, d] = attn.dims();
        let txt_attn = attn.clone().slice([0..b, 0..n_txt, 0..d]);
        let img_attn = attn.slice([0..b, n_txt..n, 0..d]);
        let mlp = |m: &TwoLayerMlp, x: Tensor<3>| {
            by_rows(x, m.fc_in.weight.dims()[1], |x| {
                linear(&m.fc_out, gelu_tanh(linear(&m.fc_in, x)))
            })
        };
        let img = img + img_attn_mod.gated(linear(&self.img_attn.proj, img_attn));
        let img = img.clone() + img_mlp_mod.gated(mlp(&self.img_mlp, img_mlp_mod.norm(img)));
        let txt = txt + txt_attn_mod.gated(linear(&self.txt_attn.proj, txt_attn));
        let txt = txt.clone() + txt_mlp_mod.gated(mlp(&self.txt_mlp, txt_mlp_mod.norm(txt)));
        (img, txt)
    }
}

impl SingleStreamBlock {
    fn forward(&self, x: Tensor<3>, vec: Tensor<2>) -> Tensor<3> {
        let [modulated] = self.modulation.forward(vec);
        let x_mod = modulated.norm(x.clone());
        // linear1 is the fused [qkv | mlp] projection; its two parts are computed separately
        // (and by slices of rows) so that no activation outgrows the buffer budget.
        let d = self.linear2.weight.dims()[1];
        let width = self.linear1.weight.dims()[1];
        let qkv = by_rows(x_mod.clone(), 3 * d, |x| {
            linear_columns(&self.linear1, x, 0..3 * d)
        });
        let (q, k, v) = split_qkv(qkv, self.heads, &self.norm);
        let attended = attend(q, k, v);
        // linear2(cat(attn, gelu(mlp))): the widest row is that concatenation, d + mlp wide.
        let out = by_rows(cat(vec![x_mod, attended], 2), width - 2 * d, |rows| {
            let x_mod = rows.clone().narrow(2, 0, d);
            let attended = rows.narrow(2, d, d);
            let mlp = linear_columns(&self.linear1, x_mod, 3 * d..width);
            linear(&self.linear2, cat(vec![attended, gelu_tanh(mlp)], 2))
        });
        x + modulated.gated(out)
    }
}

impl Hunyuan3dDit {
    /// The float dtype the network computes in (its weights').
    pub fn dtype(&self) -> DType {
        self.latent_in.weight.val().dtype()
    }

    /// Whether the network takes the guidance scale as an input (fast / turbo).
    pub fn guidance_embed(&self) -> bool {
        self.guidance_in.is_some()
    }

    fn time_vector(&self, t: &[f32], device: &Device) -> Tensor<2> {
        let features = timestep_features(t, self.max_period);
        host_tensor(features, [t.len(), TIME_FEATURES], self.dtype(), device)
    }

    /// Velocity for latents `x` `[b, latents, channels]` at times `t` given image tokens
    /// `context`; `guidance` (one per row) for the guidance-distilled variants, which refuse
    /// to run without it (as the official model raises).
    pub fn forward(
        &self,
        x: Tensor<3>,
        t: &[f32],
        context: Tensor<3>,
        guidance: Option<&[f32]>,
    ) -> Result<Tensor<3>, ForwardError> {
        let device = x.device();
        let mut vec = self.time_in.forward(self.time_vector(t, &device));
        if let Some(embedder) = &self.guidance_in {
            let g = guidance.ok_or_else(|| {
                ForwardError::Input(
                    "this denoiser is guidance-distilled (guidance_embed): it needs the \
                     guidance scale as an input, and none was given"
                        .into(),
                )
            })?;
            if g.len() != t.len() {
                return Err(ForwardError::Input(format!(
                    "{} guidance values for a batch of {}",
                    g.len(),
                    t.len()
                )));
            }
            vec = vec + embedder.forward(self.time_vector(g, &device));
        }
        let mut img = linear(&self.latent_in, x.cast(self.dtype()));
        let mut txt = by_rows(context.cast(self.dtype()), self.hidden_width(), |c| {
            linear(&self.cond_in, c)
        });
        for block in &self.double_blocks {
            (img, txt) = block.forward(img, txt, vec.clone());
        }
        let n_txt = txt.dims()[1];
        let mut joint = cat(vec![txt, img], 1);
        for block in &self.single_blocks {
            joint = block.forward(joint, vec.clone());
        }
        let [b, n, d] = joint.dims();
        let img = joint.slice([0..b, n_txt..n, 0..d]);
        // The last layer's adaLN has a shift and a scale, no gate.
        let shift_scale = linear(&self.final_layer.ada_ln, silu(vec))
            .unsqueeze_dim::<3>(1)
            .chunk(2, 2);
        let [shift, scale] = [shift_scale[0].clone(), shift_scale[1].clone()];
        let img = (scale + 1.0) * layer_norm(img) + shift;
        Ok(linear(&self.final_layer.linear, img))
    }

    fn hidden_width(&self) -> usize {
        self.latent_in.weight.dims()[1]
    }
}
