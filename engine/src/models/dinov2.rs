//! DINOv2 image encoder with Hugging Face `Dinov2Model` semantics, as Hunyuan3D's conditioner
//! uses it: 14×14 patches plus a CLS token, pre-norm transformer layers with LayerScale, a GELU
//! MLP (2.1, DINOv2-large) or a SwiGLU FFN (2.0 / 2mini, DINOv2-giant), and a final LayerNorm.
//! The output keeps the CLS token. [`preprocess`] is the official image transform: bilinear
//! (antialiased) resize to the model's size and ImageNet normalisation.
//!
//! Follows Hugging Face's `transformers/models/dinov2/modeling_dinov2.py`
//! (<https://github.com/huggingface/transformers>) and the conditioner that wraps it,
//! `hy3dshape/hy3dshape/models/conditioner.py` (`DinoImageEncoder`) of
//! <https://github.com/Tencent-Hunyuan/Hunyuan3D-2.1>.

use burn::module::{Module, Param};
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{LayerNorm, LayerNormConfig, Linear, LinearConfig};
use burn::tensor::activation::{gelu, silu};
use burn::tensor::module::conv2d;
use burn::tensor::ops::ConvOptions;
use burn::tensor::{DType, Device, Tensor};
use serde::Deserialize;

use super::{attend, by_rows, float, host_tensor, int, linear, yes};

/// Where the encoder's weights sit in the official bundled checkpoint.
pub const CHECKPOINT_PREFIX: &str = "conditioner.main_image_encoder.model.";

/// The bundled checkpoint's name of a module path: the prefix, then the Hugging Face name
/// (the FFN enum's variant appears in our path; the checkpoint has no such level).
pub fn checkpoint_name(path: &str) -> String {
    let name = path
        .split('.')
        .filter(|segment| !matches!(*segment, "Mlp" | "SwiGlu"))
        .collect::<Vec<_>>()
        .join(".");
    format!("{CHECKPOINT_PREFIX}{name}")
}

/// The Hugging Face `Dinov2Config` fields the forward pass depends on, with HF's defaults.
/// The other fields a saved HF config carries are training or bookkeeping settings
/// ([`INERT_HF_FIELDS`]); any field outside both lists is refused by [`Dinov2Config::validate`].
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Dinov2Config {
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub patch_size: usize,
    /// The side the position embeddings were trained for.
    pub image_size: usize,
    #[serde(default = "int::<3>")]
    pub num_channels: usize,
    /// HF keeps it an int in practice; `int(hidden_size * mlp_ratio)` wide.
    #[serde(default = "float::<4>")]
    pub mlp_ratio: f64,
    #[serde(default = "eps")]
    pub layer_norm_eps: f64,
    #[serde(default = "yes")]
    pub qkv_bias: bool,
    #[serde(default)]
    pub use_swiglu_ffn: bool,
    #[serde(default = "gelu_name")]
    pub hidden_act: String,
    /// Every other field, checked against [`INERT_HF_FIELDS`].
    #[serde(flatten)]
    pub other: std::collections::BTreeMap<String, serde_json::Value>,
}

/// `Dinov2Config` fields that do not change inference (dropout, init, bookkeeping, the
/// backbone-only outputs).
pub const INERT_HF_FIELDS: &[&str] = &[
    "attention_probs_dropout_prob",
    "hidden_dropout_prob",
    "drop_path_rate",
    "initializer_range",
    "layerscale_value",
    "model_type",
    "torch_dtype",
    "attn_implementation",
    "_attn_implementation",
    "architectures",
    "transformers_version",
    "apply_layernorm",
    "reshape_hidden_states",
    "out_features",
    "out_indices",
    "stage_names",
    "use_mask_token",
    "_name_or_path",
];

fn eps() -> f64 {
    1e-6
}
fn gelu_name() -> String {
    "gelu".into()
}

impl Dinov2Config {
    pub fn patches_per_side(&self) -> usize {
        self.image_size / self.patch_size
    }

    /// Refuse settings the engine does not implement, naming the field and the value.
    pub fn validate(&self) -> Result<(), String> {
        if let Some(field) = self
            .other
            .keys()
            .find(|k| !INERT_HF_FIELDS.contains(&k.as_str()))
        {
            return Err(format!(
                "Dinov2Config {field}: {} is a setting the engine does not know",
                self.other[field]
            ));
        }
        if !self.use_swiglu_ffn && self.hidden_act != "gelu" {
            return Err(format!(
                "Dinov2Config hidden_act: {:?} is not supported (only \"gelu\")",
                self.hidden_act
            ));
        }
        if self.num_attention_heads == 0
            || !self.hidden_size.is_multiple_of(self.num_attention_heads)
        {
            return Err(format!(
                "Dinov2Config num_attention_heads: {} must divide hidden_size {}",
                self.num_attention_heads, self.hidden_size
            ));
        }
        if self.patch_size == 0 || !self.image_size.is_multiple_of(self.patch_size) {
            return Err(format!(
                "Dinov2Config image_size: {} is not a multiple of patch_size {}",
                self.image_size, self.patch_size
            ));
        }
        Ok(())
    }

    pub fn init(&self, device: &Device) -> Dinov2 {
        let d = self.hidden_size;
        let n = self.patches_per_side().pow(2);
        let zeros3 = |shape: [usize; 3]| Param::from_tensor(Tensor::zeros(shape, device));
        Dinov2 {
            embeddings: Embeddings {
                cls_token: zeros3([1, 1, d]),
                mask_token: Param::from_tensor(Tensor::zeros([1, d], device)),
                patch_embeddings: PatchEmbeddings {
                    projection: Conv2dConfig::new(
                        [self.num_channels, d],
                        [self.patch_size, self.patch_size],
                    )
                    .with_stride([self.patch_size, self.patch_size])
                    .init(device),
                },
                position_embeddings: zeros3([1, n + 1, d]),
            },
            encoder: Encoder {
                layer: (0..self.num_hidden_layers)
                    .map(|_| self.init_layer(device))
                    .collect(),
            },
            layernorm: self.norm(device),
        }
    }

    fn norm(&self, device: &Device) -> LayerNorm {
        LayerNormConfig::new(self.hidden_size)
            .with_epsilon(self.layer_norm_eps)
            .init(device)
    }

    fn init_layer(&self, device: &Device) -> Layer {
        let d = self.hidden_size;
        let linear = |i, o, bias| LinearConfig::new(i, o).with_bias(bias).init(device);
        let hidden = (d as f64 * self.mlp_ratio) as usize;
        let mlp = if self.use_swiglu_ffn {
            // HF's SwiGLU width: two thirds of the MLP's, rounded up to a multiple of 8.
            let hidden = (hidden * 2 / 3).div_ceil(8) * 8;
            Ffn::SwiGlu(SwiGluFfn {
                weights_in: linear(d, 2 * hidden, true),
                weights_out: linear(hidden, d, true),
            })
        } else {
            Ffn::Mlp(Mlp {
                fc1: linear(d, hidden, true),
                fc2: linear(hidden, d, true),
            })
        };
        let scale = || LayerScale {
            lambda1: Param::from_tensor(Tensor::ones([d], device)),
        };
        Layer {
            norm1: self.norm(device),
            attention: Attention {
                attention: SelfAttention {
                    query: linear(d, d, self.qkv_bias),
                    key: linear(d, d, self.qkv_bias),
                    value: linear(d, d, self.qkv_bias),
                },
                output: AttentionOutput {
                    dense: linear(d, d, true),
                },
                heads: self.num_attention_heads,
            },
            layer_scale1: scale(),
            norm2: self.norm(device),
            mlp,
            layer_scale2: scale(),
        }
    }
}

#[derive(Module, Debug)]
pub struct Dinov2 {
    pub embeddings: Embeddings,
    pub encoder: Encoder,
    pub layernorm: LayerNorm,
}

#[derive(Module, Debug)]
pub struct Embeddings {
    pub cls_token: Param<Tensor<3>>,
    /// Unused at inference (masked image modelling); kept so the checkpoint loads whole.
    pub mask_token: Param<Tensor<2>>,
    pub patch_embeddings: PatchEmbeddings,
    pub position_embeddings: Param<Tensor<3>>,
}

#[derive(Module, Debug)]
pub struct PatchEmbeddings {
    pub projection: Conv2d,
}

#[derive(Module, Debug)]
pub struct Encoder {
    pub layer: Vec<Layer>,
}

#[derive(Module, Debug)]
pub struct Layer {
    pub norm1: LayerNorm,
    pub attention: Attention,
    pub layer_scale1: LayerScale,
    pub norm2: LayerNorm,
    pub mlp: Ffn,
    pub layer_scale2: LayerScale,
}

#[derive(Module, Debug)]
pub struct Attention {
    pub attention: SelfAttention,
    pub output: AttentionOutput,
    heads: usize,
}

#[derive(Module, Debug)]
pub struct SelfAttention {
    pub query: Linear,
    pub key: Linear,
    pub value: Linear,
}

#[derive(Module, Debug)]
pub struct AttentionOutput {
    pub dense: Linear,
}

#[derive(Module, Debug)]
pub struct LayerScale {
    pub lambda1: Param<Tensor<1>>,
}

#[derive(Module, Debug)]
pub enum Ffn {
    Mlp(Mlp),
    SwiGlu(SwiGluFfn),
}

#[derive(Module, Debug)]
pub struct Mlp {
    pub fc1: Linear,
    pub fc2: Linear,
}

#[derive(Module, Debug)]
pub struct SwiGluFfn {
    pub weights_in: Linear,
    pub weights_out: Linear,
}

impl Dinov2 {
    /// The float dtype the network computes in (its weights').
    pub fn dtype(&self) -> DType {
        self.layernorm.gamma.val().dtype()
    }

    /// Resample the position table for `side × side` images (Hugging Face's
    /// `interpolate_pos_encoding`, which Hunyuan3D relies on when its encoder size is not the
    /// table's: bicubic, `align_corners=False`, in f32). Done once, when the model is built.
    pub fn resize_positions(mut self, side: usize) -> Self {
        let patch = self.embeddings.patch_embeddings.projection.weight.dims()[2];
        let table = self.embeddings.position_embeddings.val();
        let from = ((table.dims()[1] - 1) as f64).sqrt().round() as usize;
        if side / patch != from {
            let resized = interpolate_positions(table, side / patch);
            self.embeddings.position_embeddings = Param::from_tensor(resized);
        }
        self
    }

    /// `pixels` `[batch, channels, size, size]` (already transformed) → the last hidden state
    /// `[batch, 1 + patches, hidden]`, CLS first.
    pub fn forward(&self, pixels: Tensor<4>) -> Tensor<3> {
        let mut x = self.embeddings.forward(pixels);
        for layer in &self.encoder.layer {
            x = layer.forward(x);
        }
        self.layernorm.forward(x)
    }

    /// The hidden states after the embeddings and after each layer (HF `hidden_states`).
    pub fn hidden_states(&self, pixels: Tensor<4>) -> Vec<Tensor<3>> {
        let mut states = vec![self.embeddings.forward(pixels)];
        for layer in &self.encoder.layer {
            let next = layer.forward(states.last().expect("one").clone());
            states.push(next);
        }
        states
    }
}

impl Embeddings {
    fn forward(&self, pixels: Tensor<4>) -> Tensor<3> {
        let batch = pixels.dims()[0];
        let dtype = self.cls_token.val().dtype();
        let patches = self.patch_embeddings.forward_f32(pixels).cast(dtype); // [b, d, h, w]
        let [_, d, h, w] = patches.dims();
        let patches = patches.reshape([batch, d, h * w]).swap_dims(1, 2);
        let cls = self.cls_token.val().repeat_dim(0, batch);
        let tokens = Tensor::cat(vec![cls, patches], 1);
        let positions = self.position_embeddings.val();
        assert_eq!(
            positions.dims()[1],
            tokens.dims()[1],
            "DINOv2: the image gives {} patches; the position embeddings are for {} (resize them with Dinov2::resize_positions)",
            tokens.dims()[1] - 1,
            positions.dims()[1] - 1
        );
        tokens + positions
    }
}

impl PatchEmbeddings {
    /// The patch projection in f32 whatever the weights' dtype: each output sums 3·14·14
    /// products of raw pixels, and fp16 accumulation there (wgpu's fp16 convolution) lands
    /// 8× further from fp32 than PyTorch's fp16 (which accumulates in fp32).
    fn forward_f32(&self, pixels: Tensor<4>) -> Tensor<4> {
        let conv = &self.projection;
        conv2d(
            pixels.cast(DType::F32),
            conv.weight.val().cast(DType::F32),
            conv.bias.as_ref().map(|b| b.val().cast(DType::F32)),
            ConvOptions::new(conv.stride, [0, 0], conv.dilation, conv.groups),
        )
    }
}

impl Layer {
    fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let attended = self.attention.forward(self.norm1.forward(x.clone()));
        let x = x + self.layer_scale1.forward(attended);
        let fed = self.mlp.forward(self.norm2.forward(x.clone()));
        x + self.layer_scale2.forward(fed)
    }
}

impl LayerScale {
    fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        x * self.lambda1.val().unsqueeze::<3>()
    }
}

impl Attention {
    /// Multi-head scaled dot-product attention over all tokens.
    fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let (heads, [b, n, d]) = (self.heads, x.dims());
        let split = |t: Tensor<3>| t.reshape([b, n, heads, d / heads]).swap_dims(1, 2);
        let q = split(linear(&self.attention.query, x.clone()));
        let k = split(linear(&self.attention.key, x.clone()));
        let v = split(linear(&self.attention.value, x));
        linear(&self.output.dense, attend(q, k, v))
    }
}

impl Ffn {
    fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        match self {
            Ffn::Mlp(mlp) => by_rows(x, mlp.fc1.weight.dims()[1], |x| {
                linear(&mlp.fc2, gelu(linear(&mlp.fc1, x)))
            }),
            Ffn::SwiGlu(ffn) => by_rows(x, ffn.weights_in.weight.dims()[1], |x| {
                let both = linear(&ffn.weights_in, x);
                let half = both.dims()[2] / 2;
                let gate = both.clone().narrow(2, 0, half);
                let value = both.narrow(2, half, half);
                linear(&ffn.weights_out, silu(gate) * value)
            }),
        }
    }
}

/// The official transform: map an RGB image `[3, h, w]` from [-1, 1] (the shape
/// pre-processor's output) to [0, 1], resize it to `size × size` with
/// torchvision's antialiased bilinear filter (triangle filter widened when shrinking, pixel
/// centres aligned), then normalise with the ImageNet mean and std. Returns `[3, size, size]`
/// values, channel-major.
pub fn preprocess(image: &[f32], height: usize, width: usize, size: usize) -> Vec<f32> {
    const MEAN: [f32; 3] = [0.485, 0.456, 0.406];
    const STD: [f32; 3] = [0.229, 0.224, 0.225];
    assert_eq!(image.len(), 3 * height * width, "a 3-channel image");
    let rows = resample_weights(height, size);
    let cols = resample_weights(width, size);
    let mut out = vec![0f32; 3 * size * size];
    let mut horizontal = vec![0f32; height * size];
    for c in 0..3 {
        let plane: Vec<f32> = image[c * height * width..(c + 1) * height * width]
            .iter()
            .map(|v| (v + 1.0) / 2.0)
            .collect();
        for y in 0..height {
            for (x, (start, weights)) in cols.iter().enumerate() {
                horizontal[y * size + x] = weights
                    .iter()
                    .enumerate()
                    .map(|(i, w)| w * plane[y * width + start + i])
                    .sum();
            }
        }
        for (y, (start, weights)) in rows.iter().enumerate() {
            for x in 0..size {
                let v: f32 = weights
                    .iter()
                    .enumerate()
                    .map(|(i, w)| w * horizontal[(start + i) * size + x])
                    .sum();
                out[(c * size + y) * size + x] = (v - MEAN[c]) / STD[c];
            }
        }
    }
    out
}

/// Per output index: the first input index and the normalised triangle-filter weights.
fn resample_weights(input: usize, output: usize) -> Vec<(usize, Vec<f32>)> {
    let scale = input as f64 / output as f64;
    let support = scale.max(1.0);
    (0..output)
        .map(|i| {
            let centre = (i as f64 + 0.5) * scale;
            let lo = ((centre - support + 0.5).floor().max(0.0)) as usize;
            let hi = ((centre + support + 0.5).floor() as usize).min(input);
            let weights: Vec<f64> = (lo..hi)
                .map(|j| (1.0 - ((j as f64 - centre + 0.5) / support).abs()).max(0.0))
                .collect();
            let total: f64 = weights.iter().sum();
            (lo, weights.iter().map(|w| (w / total) as f32).collect())
        })
        .collect()
}

/// A `[1, 3, size, size]` f32 tensor from [`preprocess`]'s output (the network narrows it to
/// its own dtype).
pub fn pixels_tensor(values: Vec<f32>, size: usize, device: &Device) -> Tensor<4> {
    host_tensor(values, [1, 3, size, size], DType::F32, device)
}

/// A position table `[1, 1 + n², d]` (CLS first) resampled to `[1, 1 + to², d]`: the CLS
/// position kept, the n × n grid resized bicubically (`align_corners=False`) in f32 and
/// narrowed back to the table's dtype, as Hugging Face's `interpolate_pos_encoding`.
pub fn interpolate_positions(table: Tensor<3>, to: usize) -> Tensor<3> {
    let [_, tokens, d] = table.dims();
    let from = ((tokens - 1) as f64).sqrt().round() as usize;
    let dtype = table.dtype();
    let device = table.device();
    let table = table.cast(DType::F32);
    let cls = table.clone().narrow(1, 0, 1);
    let grid = table.narrow(1, 1, from * from).reshape([from, from * d]);
    let weights = host_tensor(bicubic_weights(from, to), [to, from], DType::F32, &device);
    // Rows, then columns: [from, from, d] → [to, from, d] → [to, to, d].
    let rows = weights.clone().matmul(grid).reshape([to, from, d]);
    let cols = weights
        .matmul(rows.swap_dims(0, 1).reshape([from, to * d]))
        .reshape([to, to, d]);
    let grid = cols.swap_dims(0, 1).reshape([1, to * to, d]);
    Tensor::cat(vec![cls, grid], 1).cast(dtype)
}

/// PyTorch's bicubic resampling matrix `[to, from]` (`F.interpolate(mode="bicubic",
/// align_corners=False)` with an output size: source `(i + 0.5)·from/to − 0.5`, Keys' kernel
/// with A = −0.75, taps clamped to the border).
pub fn bicubic_weights(from: usize, to: usize) -> Vec<f32> {
    const A: f64 = -0.75;
    let near = |x: f64| ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0;
    let far = |x: f64| ((A * x - 5.0 * A) * x + 8.0 * A) * x - 4.0 * A;
    let scale = from as f32 / to as f32;
    let mut matrix = vec![0f32; to * from];
    for i in 0..to {
        // In f32, as PyTorch's kernel computes the source index.
        let source = (scale * (i as f32 + 0.5) - 0.5) as f64;
        let base = source.floor();
        let t = source - base;
        let taps = [far(t + 1.0), near(t), near(1.0 - t), far(2.0 - t)];
        for (k, w) in taps.into_iter().enumerate() {
            let j = (base as i64 - 1 + k as i64).clamp(0, from as i64 - 1) as usize;
            matrix[i * from + j] += w as f32;
        }
    }
    matrix
}

/// A view of the object for the multi-view encoder (the 2mv family), in the official order
/// (`MVImageProcessorV2.view2idx`: the front, then turned clockwise by 90°, 180°, 270°).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum View {
    Front,
    Left,
    Back,
    Right,
}

impl View {
    pub const ALL: [View; 4] = [View::Front, View::Left, View::Back, View::Right];

    /// The official index: the row of the view table this view's tokens get.
    pub fn index(self) -> usize {
        self as usize
    }

    /// As the official processor's dict keys, the CLI's `--view NAME=IMAGE` and the server's
    /// fields spell it.
    pub fn name(self) -> &'static str {
        match self {
            View::Front => "front",
            View::Left => "left",
            View::Back => "back",
            View::Right => "right",
        }
    }

    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|v| v.name() == name)
    }
}

/// The official `DinoImageEncoderMV`'s fixed view table row for view `index`:
/// `get_1d_sincos_pos_embed_from_grid(dim, index)` — `[sin(index·ω), cos(index·ω)]` with
/// `ω_k = 10000^(−k / (dim/2))`, computed in f64 and stored in f32 (not in the checkpoint).
pub fn view_embedding(dim: usize, index: usize) -> Vec<f32> {
    let half = dim / 2;
    let angles: Vec<f64> = (0..half)
        .map(|k| index as f64 / 10000f64.powf(k as f64 / half as f64))
        .collect();
    angles
        .iter()
        .map(|a| a.sin())
        .chain(angles.iter().map(|a| a.cos()))
        .map(|x| x as f32)
        .collect()
}

/// The multi-view encoder's tokens from each view's DINOv2 tokens `[1, T, D]`: the views in
/// the official order, each with its view table row added to every token (in the tokens'
/// dtype, as the official casts the table), concatenated along the tokens: `[1, V·T, D]`.
/// Views must be distinct (the official processor keys them by name).
pub fn multi_view_tokens(mut views: Vec<(View, Tensor<3>)>) -> Tensor<3> {
    views.sort_by_key(|(view, _)| *view);
    let parts = views
        .into_iter()
        .map(|(view, tokens)| {
            let [b, t, d] = tokens.dims();
            let row = host_tensor(
                view_embedding(d, view.index()),
                [1, 1, d],
                DType::F32,
                &tokens.device(),
            )
            .cast(tokens.dtype())
            .expand([b, t, d]);
            tokens + row
        })
        .collect();
    Tensor::cat(parts, 1)
}
