//! ShapeVAE decoder (Hunyuan3D, 3DShape2VecSet-style): latents are unscaled, projected
//! (`post_kl`) and refined by self-attention blocks; the geometry decoder then answers, for any
//! query point, one cross-attention from the point's Fourier embedding to the latents — the
//! field, positive inside. The latents' keys and values are computed once per shape
//! ([`ShapeVae::key_values`]) and reused for every chunk of query points.
//!
//! Follows `hy3dshape/hy3dshape/models/autoencoders/model.py` and `attention_blocks.py`
//! (`ShapeVAE`, `CrossAttentionDecoder`) of the official code,
//! <https://github.com/Tencent-Hunyuan/Hunyuan3D-2.1>.

use burn::module::Module;
use burn::nn::{LayerNorm, LayerNormConfig, Linear, LinearConfig};
use burn::tensor::activation::gelu;
use burn::tensor::{DType, Device, Tensor};
use serde::Deserialize;

use super::{
    attend, by_rows, by_rows_many, float, host_tensor, int, layer_norm_f32, linear, linear_f32, yes,
};

/// Where the decoder's weights sit in the official bundled checkpoint.
pub const CHECKPOINT_PREFIX: &str = "vae.";

/// The official `ShapeVAE` params, with the official defaults. Every field the class takes
/// is listed (the encoder's too: they are accepted and unused, the encoder is not part of
/// image-to-3D); an unknown one is refused, and [`ShapeVaeConfig::validate`] refuses decoder
/// settings the engine does not implement.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShapeVaeConfig {
    /// Latent tokens the sampler makes (the official `num_latents`).
    pub num_latents: usize,
    pub embed_dim: usize,
    pub width: usize,
    pub heads: usize,
    pub num_decoder_layers: usize,
    #[serde(default = "int::<8>")]
    pub num_encoder_layers: usize,
    #[serde(default = "int::<5120>")]
    pub pc_size: usize,
    #[serde(default = "int::<5120>")]
    pub pc_sharpedge_size: usize,
    #[serde(default = "int::<3>")]
    pub point_feats: usize,
    #[serde(default = "int::<20>")]
    pub downsample_ratio: usize,
    #[serde(default = "int::<1>")]
    pub geo_decoder_downsample_ratio: usize,
    #[serde(default = "int::<4>")]
    pub geo_decoder_mlp_expand_ratio: usize,
    #[serde(default = "yes")]
    pub geo_decoder_ln_post: bool,
    #[serde(default = "int::<8>")]
    pub num_freqs: usize,
    #[serde(default = "yes")]
    pub include_pi: bool,
    #[serde(default = "yes")]
    pub qkv_bias: bool,
    #[serde(default)]
    pub qk_norm: bool,
    #[serde(default = "binary")]
    pub label_type: String,
    #[serde(default)]
    pub drop_path_rate: f64,
    #[serde(default = "float::<1>")]
    pub scale_factor: f64,
    #[serde(default = "yes")]
    pub use_ln_post: bool,
    #[serde(default)]
    pub ckpt_path: Option<String>,
}

fn binary() -> String {
    "binary".into()
}

/// `geo_decoder.ln_post` is the one LayerNorm built with PyTorch's default eps.
const LN_POST_EPS: f64 = 1e-5;

/// The checkpoint name of a module path: the module tree mirrors the official one.
pub fn checkpoint_name(path: &str) -> String {
    format!("{CHECKPOINT_PREFIX}{path}")
}

impl ShapeVaeConfig {
    /// Inputs of the geometry decoder's query projection: xyz plus sin and cos per frequency.
    pub fn fourier_dims(&self) -> usize {
        3 * (2 * self.num_freqs + 1)
    }

    /// Refuse decoder settings the engine does not implement, naming the field and value.
    pub fn validate(&self) -> Result<(), String> {
        if self.geo_decoder_downsample_ratio != 1 {
            return Err(format!(
                "ShapeVAE geo_decoder_downsample_ratio: {} is the turbo (FlashVDM) geometry \
                 decoder, which is not supported yet (only 1)",
                self.geo_decoder_downsample_ratio
            ));
        }
        if !self.geo_decoder_ln_post {
            return Err(
                "ShapeVAE geo_decoder_ln_post: false is the turbo (FlashVDM) geometry decoder, \
                 which is not supported yet (only true)"
                    .into(),
            );
        }
        if self.heads == 0 || !self.width.is_multiple_of(self.heads) {
            return Err(format!(
                "ShapeVAE heads: {} must divide width {}",
                self.heads, self.width
            ));
        }
        if self.scale_factor == 0.0 || !self.scale_factor.is_finite() {
            return Err(format!(
                "ShapeVAE scale_factor: {} is not usable",
                self.scale_factor
            ));
        }
        Ok(())
    }

    pub fn init(&self, device: &Device) -> Result<ShapeVae, String> {
        self.validate()?;
        let w = self.width;
        let head_dim = w / self.heads;
        let linear = |i, o, bias| LinearConfig::new(i, o).with_bias(bias).init(device);
        let norm = |d, eps| LayerNormConfig::new(d).with_epsilon(eps).init(device);
        let qk_norm = || {
            self.qk_norm.then(|| QkNorm {
                q_norm: norm(head_dim, 1e-6),
                k_norm: norm(head_dim, 1e-6),
            })
        };
        let mlp = |ratio: usize| Mlp {
            c_fc: linear(w, w * ratio, true),
            c_proj: linear(w * ratio, w, true),
        };
        Ok(ShapeVae {
            post_kl: linear(self.embed_dim, w, true),
            transformer: Transformer {
                resblocks: (0..self.num_decoder_layers)
                    .map(|_| ResidualAttentionBlock {
                        ln_1: norm(w, 1e-6),
                        attn: SelfAttention {
                            c_qkv: linear(w, 3 * w, self.qkv_bias),
                            attention: qk_norm(),
                            c_proj: linear(w, w, true),
                            heads: self.heads,
                        },
                        ln_2: norm(w, 1e-6),
                        mlp: mlp(4),
                    })
                    .collect(),
            },
            geo_decoder: GeoDecoder {
                query_proj: linear(self.fourier_dims(), w, true),
                cross_attn_decoder: CrossAttentionBlock {
                    ln_1: norm(w, 1e-6),
                    ln_2: norm(w, 1e-6),
                    attn: CrossAttention {
                        c_q: linear(w, w, self.qkv_bias),
                        c_kv: linear(w, 2 * w, self.qkv_bias),
                        attention: qk_norm(),
                        c_proj: linear(w, w, true),
                        heads: self.heads,
                    },
                    ln_3: norm(w, 1e-6),
                    mlp: mlp(self.geo_decoder_mlp_expand_ratio),
                },
                // The one LayerNorm with PyTorch's default eps.
                ln_post: norm(w, LN_POST_EPS),
                output_proj: linear(w, 1, true),
            },
            num_freqs: self.num_freqs,
            include_pi: self.include_pi,
            scale_factor: self.scale_factor,
        })
    }
}

#[derive(Module, Debug)]
pub struct ShapeVae {
    pub post_kl: Linear,
    pub transformer: Transformer,
    pub geo_decoder: GeoDecoder,
    num_freqs: usize,
    include_pi: bool,
    scale_factor: f64,
}

#[derive(Module, Debug)]
pub struct Transformer {
    pub resblocks: Vec<ResidualAttentionBlock>,
}

#[derive(Module, Debug)]
pub struct ResidualAttentionBlock {
    pub ln_1: LayerNorm,
    pub attn: SelfAttention,
    pub ln_2: LayerNorm,
    pub mlp: Mlp,
}

#[derive(Module, Debug)]
pub struct SelfAttention {
    pub c_qkv: Linear,
    pub attention: Option<QkNorm>,
    pub c_proj: Linear,
    heads: usize,
}

#[derive(Module, Debug)]
pub struct QkNorm {
    pub q_norm: LayerNorm,
    pub k_norm: LayerNorm,
}

#[derive(Module, Debug)]
pub struct Mlp {
    pub c_fc: Linear,
    pub c_proj: Linear,
}

#[derive(Module, Debug)]
pub struct GeoDecoder {
    pub query_proj: Linear,
    pub cross_attn_decoder: CrossAttentionBlock,
    pub ln_post: LayerNorm,
    pub output_proj: Linear,
}

#[derive(Module, Debug)]
pub struct CrossAttentionBlock {
    pub ln_1: LayerNorm,
    pub ln_2: LayerNorm,
    pub attn: CrossAttention,
    pub ln_3: LayerNorm,
    pub mlp: Mlp,
}

#[derive(Module, Debug)]
pub struct CrossAttention {
    pub c_q: Linear,
    pub c_kv: Linear,
    pub attention: Option<QkNorm>,
    pub c_proj: Linear,
    heads: usize,
}

/// The latents' keys and values for the geometry decoder, `[batch, heads, latents, head_dim]`.
#[derive(Debug, Clone)]
pub struct KeyValues {
    k: Tensor<4>,
    v: Tensor<4>,
}

impl Mlp {
    fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        by_rows(x, self.c_fc.weight.dims()[1], |x| {
            linear(&self.c_proj, gelu(linear(&self.c_fc, x)))
        })
    }
}

impl SelfAttention {
    fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let heads = self.heads;
        let [b, n, w] = x.dims();
        let hd = w / heads;
        // The official per-head interleave: each head's slice of the concatenated q|k|v.
        let [q, k, v] = by_rows_many(x, 3 * w, |x| {
            let rows = x.dims()[1];
            let qkv = linear(&self.c_qkv, x).reshape([b, rows, heads, 3 * hd]);
            [0, 1, 2].map(|i| qkv.clone().narrow(3, i * hd, hd).reshape([b, rows, w]))
        });
        let split = |t: Tensor<3>| t.reshape([b, n, heads, hd]);
        let (mut q, mut k) = (split(q), split(k));
        if let Some(norm) = &self.attention {
            q = norm.q_norm.forward(q);
            k = norm.k_norm.forward(k);
        }
        let out = attend(
            q.swap_dims(1, 2),
            k.swap_dims(1, 2),
            split(v).swap_dims(1, 2),
        );
        linear(&self.c_proj, out)
    }
}

impl ShapeVae {
    /// The float dtype the network computes in (its weights').
    pub fn dtype(&self) -> DType {
        self.post_kl.weight.val().dtype()
    }

    /// Sampler latents `[batch, latents, embed_dim]` (f32) → decoded latents
    /// `[batch, latents, width]` in the network's dtype.
    pub fn decode_latents(&self, latents: Tensor<3>) -> Tensor<3> {
        // As the reference: one f32 multiply by float32(1 / scale_factor), then the network's
        // dtype.
        let unscale = (1.0 / self.scale_factor) as f32;
        let latents = (latents.cast(DType::F32) * unscale).cast(self.dtype());
        let mut x = linear(&self.post_kl, latents);
        for block in &self.transformer.resblocks {
            x = x.clone() + block.attn.forward(block.ln_1.forward(x));
            x = x.clone() + block.mlp.forward(block.ln_2.forward(x));
        }
        x
    }

    /// The decoded latents' keys and values for [`Self::field`], computed once per shape.
    pub fn key_values(&self, decoded: Tensor<3>) -> KeyValues {
        let attn = &self.geo_decoder.cross_attn_decoder.attn;
        let [b, m, w] = decoded.dims();
        let heads = attn.heads;
        let hd = w / heads;
        let ln = &self.geo_decoder.cross_attn_decoder.ln_2;
        let [k, v] = by_rows_many(ln.forward(decoded), 2 * w, |x| {
            let rows = x.dims()[1];
            let kv = linear(&attn.c_kv, x).reshape([b, rows, heads, 2 * hd]);
            [0, 1].map(|i| kv.clone().narrow(3, i * hd, hd).reshape([b, rows, w]))
        });
        let mut k = k.reshape([b, m, heads, hd]);
        let v = v.reshape([b, m, heads, hd]);
        if let Some(norm) = &attn.attention {
            k = norm.k_norm.forward(k);
        }
        KeyValues {
            k: k.swap_dims(1, 2),
            v: v.swap_dims(1, 2),
        }
    }

    /// The Fourier embedding of points `[batch, n, 3]`: xyz, then sin and cos of each
    /// coordinate times 1, 2, 4, … (x's frequencies first, then y's, then z's). Always in f32:
    /// at fp16 a coordinate times 128 keeps barely a digit after the point.
    pub fn embed(&self, points: Tensor<3>) -> Tensor<3> {
        let points = points.cast(DType::F32);
        let [b, n, _] = points.dims();
        let scale = if self.include_pi {
            std::f32::consts::PI
        } else {
            1.0
        };
        let freqs: Vec<f32> = (0..self.num_freqs)
            .map(|i| 2f32.powi(i as i32) * scale)
            .collect();
        let freqs = host_tensor(
            freqs,
            [1, 1, 1, self.num_freqs],
            DType::F32,
            &points.device(),
        );
        let e = (points.clone().unsqueeze_dim::<4>(3) * freqs).reshape([b, n, 3 * self.num_freqs]);
        Tensor::cat(vec![points, e.clone().sin(), e.cos()], 2)
    }

    /// The field at `points` `[batch, n, 3]` → `[batch, n]` in f32, positive inside. The last
    /// norm and projection run in f32: the field's sign decides the surface.
    pub fn field(&self, points: Tensor<3>, kv: &KeyValues) -> Tensor<2> {
        let decoder = &self.geo_decoder;
        let block = &decoder.cross_attn_decoder;
        let q = linear(&decoder.query_proj, self.embed(points).cast(self.dtype()));
        let [b, n, w] = q.dims();
        let heads = block.attn.heads;
        let hd = w / heads;
        let mut query =
            linear(&block.attn.c_q, block.ln_1.forward(q.clone())).reshape([b, n, heads, hd]);
        if let Some(norm) = &block.attn.attention {
            query = norm.q_norm.forward(query);
        }
        let attended = attend(query.swap_dims(1, 2), kv.k.clone(), kv.v.clone());
        let x = q + linear(&block.attn.c_proj, attended);
        let x = x.clone() + block.mlp.forward(block.ln_3.forward(x));
        let x = layer_norm_f32(&decoder.ln_post, x, LN_POST_EPS);
        let out = linear_f32(&decoder.output_proj, x);
        out.reshape([b, n])
    }
}
