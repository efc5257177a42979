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
use burn::tensor::{DType, Device, Int, Tensor};
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

    /// The geometry decoder's width and heads: the turbo (FlashVDM) decoder divides both by
    /// `geo_decoder_downsample_ratio`.
    pub fn decoder_width_heads(&self) -> (usize, usize) {
        let ratio = self.geo_decoder_downsample_ratio.max(1);
        (self.width / ratio, self.heads / ratio)
    }

    /// The geometry decoder normalises queries and keys per head: the official decoder turns
    /// qk-norm off where it has no `ln_post` (the turbo decoder).
    fn decoder_qk_norm(&self) -> bool {
        self.qk_norm && self.geo_decoder_ln_post
    }

    /// Refuse decoder settings the engine does not implement, naming the field and value.
    pub fn validate(&self) -> Result<(), String> {
        let ratio = self.geo_decoder_downsample_ratio;
        if ratio == 0 || !self.width.is_multiple_of(ratio) || !self.heads.is_multiple_of(ratio) {
            return Err(format!(
                "ShapeVAE geo_decoder_downsample_ratio: {ratio} must divide width {} and heads {}",
                self.width, self.heads
            ));
        }
        let (decoder_width, decoder_heads) = self.decoder_width_heads();
        if decoder_heads == 0 || !decoder_width.is_multiple_of(decoder_heads) {
            return Err(format!(
                "ShapeVAE geometry decoder: {decoder_heads} heads must divide its width \
                 {decoder_width}"
            ));
        }
        if self.geo_decoder_mlp_expand_ratio == 0 {
            return Err("ShapeVAE geo_decoder_mlp_expand_ratio: 0 is not usable".into());
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
        let mlp = |w: usize, ratio: usize| Mlp {
            c_fc: linear(w, w * ratio, true),
            c_proj: linear(w * ratio, w, true),
        };
        let (dw, decoder_heads) = self.decoder_width_heads();
        let decoder_qk_norm = (self.decoder_qk_norm()).then(|| QkNorm {
            q_norm: norm(dw / decoder_heads, 1e-6),
            k_norm: norm(dw / decoder_heads, 1e-6),
        });
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
                        mlp: mlp(w, 4),
                    })
                    .collect(),
            },
            geo_decoder: GeoDecoder {
                query_proj: linear(self.fourier_dims(), dw, true),
                // The turbo decoder's projection of the latents to its narrower width.
                latents_proj: (self.geo_decoder_downsample_ratio != 1).then(|| linear(w, dw, true)),
                cross_attn_decoder: CrossAttentionBlock {
                    ln_1: norm(dw, 1e-6),
                    ln_2: norm(dw, 1e-6),
                    attn: CrossAttention {
                        c_q: linear(dw, dw, self.qkv_bias),
                        c_kv: linear(dw, 2 * dw, self.qkv_bias),
                        attention: decoder_qk_norm,
                        c_proj: linear(dw, dw, true),
                        heads: decoder_heads,
                    },
                    ln_3: norm(dw, 1e-6),
                    mlp: mlp(dw, self.geo_decoder_mlp_expand_ratio),
                },
                // The one LayerNorm with PyTorch's default eps; the turbo decoder has none.
                ln_post: self.geo_decoder_ln_post.then(|| norm(dw, LN_POST_EPS)),
                output_proj: linear(dw, 1, true),
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
    pub latents_proj: Option<Linear>,
    pub cross_attn_decoder: CrossAttentionBlock,
    pub ln_post: Option<LayerNorm>,
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
        let decoded = match &self.geo_decoder.latents_proj {
            Some(proj) => linear(proj, decoded),
            None => decoded,
        };
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

    /// The field at `points` `[batch, n, 3]` → `[batch, n]` in f32, positive inside, every
    /// query attending to every latent (the official default decoder).
    pub fn field(&self, points: Tensor<3>, kv: &KeyValues) -> Tensor<2> {
        let queries = self.queries(points);
        let attended = attend(queries.q.clone(), kv.k.clone(), kv.v.clone());
        self.field_from(queries, attended)
    }

    /// The geometry decoder's queries for `points` `[batch, n, 3]`.
    pub fn queries(&self, points: Tensor<3>) -> Queries {
        let decoder = &self.geo_decoder;
        let block = &decoder.cross_attn_decoder;
        let embedded = linear(&decoder.query_proj, self.embed(points).cast(self.dtype()));
        let [b, n, w] = embedded.dims();
        let heads = block.attn.heads;
        let mut q = linear(&block.attn.c_q, block.ln_1.forward(embedded.clone())).reshape([
            b,
            n,
            heads,
            w / heads,
        ]);
        if let Some(norm) = &block.attn.attention {
            q = norm.q_norm.forward(q);
        }
        Queries {
            embedded,
            q: q.swap_dims(1, 2),
        }
    }

    /// The rest of the decoder after its cross-attention (`attended`, `[batch, n, width]`):
    /// the field `[batch, n]` in f32. The last norm and projection run in f32: the field's
    /// sign decides the surface.
    pub fn field_from(&self, queries: Queries, attended: Tensor<3>) -> Tensor<2> {
        let decoder = &self.geo_decoder;
        let block = &decoder.cross_attn_decoder;
        let [b, n, _] = attended.dims();
        let x = queries.embedded + linear(&block.attn.c_proj, attended);
        let x = x.clone() + block.mlp.forward(block.ln_3.forward(x));
        let x = match &decoder.ln_post {
            Some(ln_post) => layer_norm_f32(ln_post, x, LN_POST_EPS),
            None => x.cast(DType::F32),
        };
        let out = linear_f32(&decoder.output_proj, x);
        out.reshape([b, n])
    }

    /// FlashVDM's adaptive key/value selection, its scores: how much each latent draws the
    /// mean of a group's sampled queries, `q_mean` `[1, heads, groups, head_dim]` → `[1,
    /// heads, groups, latents]` in f32. The official code averages the scores of the sampled
    /// queries; the mean of dot products is the dot product with the mean query.
    pub fn selection_scores(&self, q_mean: Tensor<4>, kv: &KeyValues) -> Tensor<4> {
        q_mean.matmul(kv.k.clone().swap_dims(2, 3)).cast(DType::F32)
    }

    /// Cross-attention of `q` `[1, heads, n, head_dim]` to the latents `selected`
    /// `[1, heads, k]` (each head's own) → `[1, n, width]`.
    pub fn attend_selected(
        &self,
        q: Tensor<4>,
        kv: &KeyValues,
        selected: Tensor<3, Int>,
    ) -> Tensor<3> {
        let [b, h, k] = selected.dims();
        let d = kv.k.dims()[3];
        let index = selected.unsqueeze_dim::<4>(3).expand([b, h, k, d]);
        let keys = kv.k.clone().gather(2, index.clone());
        let values = kv.v.clone().gather(2, index);
        attend(q, keys, values)
    }

    /// Latents the geometry decoder attends to (its keys' count).
    pub fn latents(kv: &KeyValues) -> usize {
        kv.k.dims()[2]
    }
}

/// The geometry decoder's queries: the embedded points (the residual stream) and their
/// per-head queries `[batch, heads, n, head_dim]`.
#[derive(Debug, Clone)]
pub struct Queries {
    pub embedded: Tensor<3>,
    pub q: Tensor<4>,
}
