//! ISNet (DIS, "Highly Accurate Dichotomous Image Segmentation", MIT) as shipped by
//! `@imgly/background-removal-data` (`isnet_medium`): a U²-Net-style encoder/decoder of
//! residual U-blocks (RSU) with BatchNorm already folded into every convolution. Only the
//! finest side output is needed at inference: `sigmoid(upsample(side1(stage1d)))`.
//!
//! Follows `IS-Net/models/isnet.py` (`ISNetDIS`) of the authors' code,
//! <https://github.com/xuebinqin/DIS>, through the ONNX graph the npm package ships.
//!
//! Module paths mirror the ONNX node names (`stage1.rebnconv7.conv_s1`), which carry the
//! PyTorch module tree; [`checkpoint_name`] maps our `encoder.i` / `decoder.j` lists to them.

use burn::module::Module;
use burn::nn::PaddingConfig2d;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::tensor::activation::{relu, sigmoid};
use burn::tensor::module::{conv2d, interpolate, max_pool2d};
use burn::tensor::ops::{ConvOptions, InterpolateMode, InterpolateOptions, MaxPoolOptions};
use burn::tensor::{DType, Device, Tensor};

/// The side the reference runtime resizes every image to.
pub const INPUT_SIZE: usize = 1024;

/// A 3×3 convolution (BN folded in) then ReLU, dilated by `dilation` with matching padding.
#[derive(Module, Debug)]
pub struct RebnConv {
    pub conv_s1: Conv2d,
}

/// A residual U-block: `rebnconvin`, an encoder of `rebnconv1..L` (pooled between levels
/// unless dilated, the "F" variant), a decoder `rebnconv(L−1)d..1d`, plus the input.
#[derive(Module, Debug)]
pub struct Rsu {
    pub rebnconvin: RebnConv,
    pub encoder: Vec<RebnConv>,
    pub decoder: Vec<RebnConv>,
}

#[derive(Module, Debug)]
pub struct IsNet {
    pub conv_in: Conv2d,
    pub stage1: Rsu,
    pub stage2: Rsu,
    pub stage3: Rsu,
    pub stage4: Rsu,
    pub stage5: Rsu,
    pub stage6: Rsu,
    pub stage5d: Rsu,
    pub stage4d: Rsu,
    pub stage3d: Rsu,
    pub stage2d: Rsu,
    pub stage1d: Rsu,
    pub side1: Conv2d,
    // Training-time side outputs: in the weights, unused at inference.
    pub side2: Conv2d,
    pub side3: Conv2d,
    pub side4: Conv2d,
    pub side5: Conv2d,
    pub side6: Conv2d,
}

/// The checkpoint (ONNX-derived) name of a module path.
pub fn checkpoint_name(path: &str) -> String {
    let mut out = Vec::new();
    let mut parts = path.split('.').peekable();
    while let Some(part) = parts.next() {
        match part {
            "encoder" | "decoder" => {
                let index: usize = parts.next().and_then(|i| i.parse().ok()).unwrap_or(0);
                let suffix = if part == "decoder" { "d" } else { "" };
                out.push(format!("rebnconv{}{suffix}", index + 1));
            }
            other => out.push(other.to_string()),
        }
    }
    out.join(".")
}

fn conv(input: usize, output: usize, dilation: usize, stride: usize, device: &Device) -> Conv2d {
    Conv2dConfig::new([input, output], [3, 3])
        .with_stride([stride, stride])
        .with_dilation([dilation, dilation])
        .with_padding(PaddingConfig2d::Explicit(
            dilation, dilation, dilation, dilation,
        ))
        .init(device)
}

/// A 3×3 conv padded by its dilation (every conv here), computed in f32 whatever the weights'
/// dtype: burn's fp16 convolution on wgpu accumulates in fp16 (measured 8.5e-2 off fp32 at 1024
/// input channels, against 3.7e-3 on the CPU backend), which moved ISNet's probabilities by up
/// to 3e-2. The weights stay f16 on the device; the activations of this small network are f32.
///
/// A q8 set's weight is quantized, channels last (`[out, kh, kw, in]`, see
/// `weights::quant::QuantInfo::stored_shape`): it stays so on the device, and is dequantized
/// here, one layer's weight at a time, just before its convolution.
fn conv_f32(conv: &Conv2d, x: Tensor<4>) -> Tensor<4> {
    let weight = conv.weight.val();
    let weight = match weight.dtype() {
        DType::QFloat(_) => weight.dequantize().permute([0, 3, 1, 2]),
        _ => weight,
    };
    conv2d(
        x.cast(DType::F32),
        weight.cast(DType::F32),
        conv.bias.as_ref().map(|b| b.val().cast(DType::F32)),
        ConvOptions::new(conv.stride, conv.dilation, conv.dilation, conv.groups),
    )
}

impl RebnConv {
    fn new(input: usize, output: usize, dilation: usize, device: &Device) -> Self {
        Self {
            conv_s1: conv(input, output, dilation, 1, device),
        }
    }

    fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        relu(conv_f32(&self.conv_s1, x))
    }
}

impl Rsu {
    /// RSU-`height` (7, 6, 5, 4): pooled levels, the deepest conv dilated by 2.
    fn pooled(height: usize, input: usize, mid: usize, output: usize, device: &Device) -> Self {
        let encoder = (1..=height)
            .map(|level| {
                let from = if level == 1 { output } else { mid };
                RebnConv::new(from, mid, if level == height { 2 } else { 1 }, device)
            })
            .collect();
        let decoder = (1..height)
            .map(|level| RebnConv::new(2 * mid, if level == 1 { output } else { mid }, 1, device))
            .collect();
        Self {
            rebnconvin: RebnConv::new(input, output, 1, device),
            encoder,
            decoder,
        }
    }

    /// RSU-4F: no pooling, dilations 1, 2, 4, 8 down and 4, 2, 1 up.
    fn dilated(input: usize, mid: usize, output: usize, device: &Device) -> Self {
        let encoder = (0..4)
            .map(|level| {
                RebnConv::new(
                    if level == 0 { output } else { mid },
                    mid,
                    1 << level,
                    device,
                )
            })
            .collect();
        let decoder = (0..3)
            .map(|level| {
                RebnConv::new(
                    2 * mid,
                    if level == 0 { output } else { mid },
                    1 << level,
                    device,
                )
            })
            .collect();
        Self {
            rebnconvin: RebnConv::new(input, output, 1, device),
            encoder,
            decoder,
        }
    }

    /// Multiply-adds of the block's convolutions at a `side`² input, following `forward`'s
    /// resolutions.
    fn cost(&self, side: usize) -> f64 {
        let conv = |c: &RebnConv, side: usize| {
            c.conv_s1.weight.shape().num_elements() as f64 * (side * side) as f64
        };
        let pooled = !self.is_dilated();
        let depth = self.encoder.len();
        let mut total = conv(&self.rebnconvin, side);
        let mut sides = Vec::with_capacity(depth);
        let mut level_side = side;
        for (level, c) in self.encoder.iter().enumerate() {
            total += conv(c, level_side);
            sides.push(level_side);
            if pooled && level + 2 < depth {
                level_side = level_side.div_ceil(2);
            }
        }
        // Decoder level j works at the side of the skip it joins (levels depth−2 … 0).
        for (j, c) in self.decoder.iter().rev().enumerate() {
            total += conv(c, sides[depth - 2 - j]);
        }
        total
    }

    /// The "F" blocks keep the resolution and dilate instead.
    fn is_dilated(&self) -> bool {
        self.encoder[1].conv_s1.dilation[0] > 1
    }

    fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let input = self.rebnconvin.forward(x);
        let pooled = !self.is_dilated();
        let depth = self.encoder.len();
        // Down: every level's output is kept for its skip; pool between the shallow levels.
        let mut skips = Vec::with_capacity(depth);
        let mut hx = input.clone();
        for (level, conv) in self.encoder.iter().enumerate() {
            hx = conv.forward(hx);
            skips.push(hx.clone());
            if pooled && level + 2 < depth {
                hx = pool(hx);
            }
        }
        // Up: the deepest two levels meet first, then each shallower skip.
        let deepest = skips.pop().expect("levels");
        let mut up = deepest;
        for conv in self.decoder.iter().rev() {
            let skip = skips.pop().expect("a skip per decoder level");
            up = conv.forward(Tensor::cat(vec![upsample_like(up, &skip), skip], 1));
        }
        up + input
    }
}

/// 2×2 max pooling, stride 2, ceil mode (as the reference).
fn pool(x: Tensor<4>) -> Tensor<4> {
    max_pool2d(x, MaxPoolOptions::new([2, 2]).with_ceil_mode(true))
}

/// Bilinear resize (half-pixel centres, as `F.interpolate(align_corners=False)`) to `target`'s size.
fn upsample_like(x: Tensor<4>, target: &Tensor<4>) -> Tensor<4> {
    let [_, _, h, w] = target.dims();
    let [_, _, xh, xw] = x.dims();
    if (xh, xw) == (h, w) {
        return x;
    }
    interpolate(
        x,
        InterpolateOptions::new(InterpolateMode::Bilinear)
            .with_align_corners(false)
            .with_output_size([h, w]),
    )
}

impl IsNet {
    /// The `isnet_medium` architecture (ISNetDIS, 3 input channels, 1 output).
    pub fn init(device: &Device) -> Self {
        let side = |channels| conv(channels, 1, 1, 1, device);
        Self {
            conv_in: conv(3, 64, 1, 2, device),
            stage1: Rsu::pooled(7, 64, 32, 64, device),
            stage2: Rsu::pooled(6, 64, 32, 128, device),
            stage3: Rsu::pooled(5, 128, 64, 256, device),
            stage4: Rsu::pooled(4, 256, 128, 512, device),
            stage5: Rsu::dilated(512, 256, 512, device),
            stage6: Rsu::dilated(512, 256, 512, device),
            stage5d: Rsu::dilated(1024, 256, 512, device),
            stage4d: Rsu::pooled(4, 1024, 128, 256, device),
            stage3d: Rsu::pooled(5, 512, 64, 128, device),
            stage2d: Rsu::pooled(6, 256, 32, 64, device),
            stage1d: Rsu::pooled(7, 128, 16, 64, device),
            side1: side(64),
            side2: side(64),
            side3: side(128),
            side4: side(256),
            side5: side(512),
            side6: side(512),
        }
    }

    /// The network with a converted ISNet shard set's weights (the ONNX initializer names,
    /// see [`checkpoint_name`]); a set whose tensors do not fit it is refused, naming them.
    pub fn from_weights(
        weights: crate::weights::WeightSet,
        device: &Device,
    ) -> Result<Self, crate::weights::ApplyError> {
        crate::weights::apply_torch_weights(Self::init(device), weights, checkpoint_name)
    }

    /// The float dtype the network computes in (its weights').
    pub fn dtype(&self) -> DType {
        self.conv_in.weight.val().dtype()
    }

    /// Foreground probability `[b, 1, h, w]` in f32 for normalised RGB `[b, 3, h, w]`
    /// (`(u8 − 128) / 256`, see [`normalise`]). The weights may be f16; every conv runs in f32
    /// (see `conv_f32`), so the activations are f32.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        use futures::FutureExt;
        // Without a progress callback nothing is awaited: the future is ready at once.
        self.forward_staged(x, None)
            .now_or_never()
            .expect("a forward without progress does not wait")
            .expect("a forward without progress reads nothing back")
    }

    /// [`IsNet::forward`], reporting each of the [`STAGES`] stages as the device finishes it
    /// (`on_stage(done)`): a one-value read-back after each stage waits for its work, which is
    /// what makes the report honest on a device that queues work lazily. `on_stage` returning
    /// false stops the pass there (nothing more is queued) with [`StagedError::Stopped`];
    /// else the read-back error, if one fails (e.g. the device was lost).
    pub async fn forward_staged(
        &self,
        x: Tensor<4>,
        mut on_stage: Option<&mut dyn FnMut(usize) -> bool>,
    ) -> Result<Tensor<4>, StagedError> {
        let mut done = 0;
        let mut finished = async |stage: &Tensor<4>| -> Result<(), StagedError> {
            done += 1;
            if let Some(report) = on_stage.as_mut() {
                crate::device::computed(stage).await?;
                if !report(done) {
                    return Err(StagedError::Stopped);
                }
                crate::device::yield_now().await;
            }
            Ok(())
        };
        // Down: the first stage takes the strided input conv, each deeper one the pooled output
        // of the one above; every output is kept for its skip.
        let mut skips: Vec<Tensor<4>> = Vec::with_capacity(6);
        for stage in self.encoder() {
            let input = match skips.last() {
                Some(shallower) => pool(shallower.clone()),
                None => conv_f32(&self.conv_in, x.clone()),
            };
            let output = stage.forward(input);
            finished(&output).await?;
            skips.push(output);
        }
        // Up: each decoder stage joins the deeper output with the encoder's skip.
        let mut up = skips.pop().expect("stage 6");
        for stage in self.decoder() {
            let skip = skips.pop().expect("a skip per decoder stage");
            up = stage.forward(Tensor::cat(vec![upsample_like(up, &skip), skip], 1));
            finished(&up).await?;
        }
        Ok(sigmoid(upsample_like(conv_f32(&self.side1, up), &x)))
    }

    /// The encoder's six stages, shallowest first.
    fn encoder(&self) -> [&Rsu; 6] {
        [
            &self.stage1,
            &self.stage2,
            &self.stage3,
            &self.stage4,
            &self.stage5,
            &self.stage6,
        ]
    }

    /// The decoder's five stages, deepest first (the order they run in).
    fn decoder(&self) -> [&Rsu; 5] {
        [
            &self.stage5d,
            &self.stage4d,
            &self.stage3d,
            &self.stage2d,
            &self.stage1d,
        ]
    }

    /// Each stage's share of the work at a `size`² input (multiply-adds of its convolutions),
    /// in the order [`IsNet::forward_staged`] reports them; they sum to 1. A progress bar
    /// weighted by these moves evenly in time, where counting stages would not (the first
    /// stage alone is about a sixth of the work).
    pub fn stage_shares(&self, size: usize) -> [f64; STAGES] {
        let half = |side: usize| side.div_ceil(2);
        let mut side = half(size); // conv_in has stride 2
        let mut sides = Vec::new();
        for _ in 0..6 {
            sides.push(side);
            side = half(side);
        }
        let mut costs = [0.0; STAGES];
        for (i, stage) in self.encoder().into_iter().enumerate() {
            costs[i] = stage.cost(sides[i]);
        }
        // Decoder stage i works at the side of encoder stage 4 − i (its skip).
        for (i, stage) in self.decoder().into_iter().enumerate() {
            costs[6 + i] = stage.cost(sides[4 - i]);
        }
        let total: f64 = costs.iter().sum();
        costs.map(|c| c / total)
    }
}

/// Why a staged pass ([`IsNet::forward_staged`]) gave no output.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StagedError {
    /// Its caller's `on_stage` said stop.
    #[error("stopped by its caller")]
    Stopped,
    #[error(transparent)]
    Readback(#[from] crate::device::ReadbackError),
}

/// The stages [`IsNet::forward_staged`] reports: six down, five up.
pub const STAGES: usize = 11;

/// The reference runtime's normalisation of 8-bit RGB planes: `(v − 128) / 256`.
pub fn normalise(planes_u8: &[u8]) -> Vec<f32> {
    planes_u8
        .iter()
        .map(|&v| (v as f32 - 128.0) / 256.0)
        .collect()
}
