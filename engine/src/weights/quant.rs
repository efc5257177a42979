//! Quantized weights: symmetric block quantization of a projection's weight along its input
//! (K) dimension, one f16 scale per block, stored exactly as burn lays out a quantized tensor
//! (`QuantStore::PackedU32`: values packed little-endian into u32 words along K, then the
//! scales) so the loader uploads a shard's bytes as they are and the device keeps them
//! quantized: burn's quantized matmul reads the packed words inside the kernel on wgpu/WebGPU;
//! its CPU backend unpacks them to one byte per value and dequantizes per product.
//!
//! Which weights are quantized is decided by role ([`quantizable`]), so the fixtures' tiny
//! configs take the same path as the full models.

use std::fmt;
use std::str::FromStr;

use burn::tensor::quantization::{
    QuantScheme, QuantStore, QuantValue, ScaleDtype, quantized_data_len,
};
use burn::tensor::{DType, Shape};
use half::f16;
use serde::{Deserialize, Serialize};

/// The block size along K: 32 values share one scale. A layer whose K is not a multiple of 32
/// (the fixtures' 80-wide layers) takes the largest of 16 or 8 that divides it; the index
/// records each tensor's own.
pub const BLOCK: usize = 32;
const SMALLER_BLOCKS: [usize; 2] = [16, 8];

/// How a shard set stores its weights.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    F16,
    /// int8 values, f16 scales: 1.0625 bytes a weight (f16: 2).
    Q8,
    /// int4 values, two to a byte, f16 scales: 0.5625 bytes a weight.
    Q4,
}

impl Precision {
    pub const ALL: [Precision; 3] = [Precision::F16, Precision::Q8, Precision::Q4];

    pub fn name(self) -> &'static str {
        match self {
            Precision::F16 => "f16",
            Precision::Q8 => "q8",
            Precision::Q4 => "q4",
        }
    }

    /// The narrowest of `precisions` (what a set, or a model of several sets, is called by:
    /// a model with one q4 set is "q4"); `None` for none.
    pub fn narrowest(precisions: impl IntoIterator<Item = Precision>) -> Option<Precision> {
        precisions
            .into_iter()
            .max_by_key(|p| std::cmp::Reverse(p.bits()))
    }

    /// Bits a value takes (before scales).
    pub fn bits(self) -> usize {
        match self {
            Precision::F16 => 16,
            Precision::Q8 => 8,
            Precision::Q4 => 4,
        }
    }

    /// The largest quantized magnitude (symmetric: −max..=max).
    fn max_level(self) -> f32 {
        match self {
            Precision::F16 => f32::INFINITY,
            Precision::Q8 => 127.0,
            Precision::Q4 => 7.0,
        }
    }
}

impl fmt::Display for Precision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Precision {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        Precision::ALL
            .into_iter()
            .find(|p| p.name() == s)
            .ok_or_else(|| format!("unknown precision {s:?} (this version reads f16, q8 and q4)"))
    }
}

/// The only packing written and read: values packed into little-endian u32 words along K.
pub const PACKING: &str = "u32le";

/// How one tensor of an index is quantized: recorded per tensor, checked before its bytes are
/// used. The precision is kept as written so an unknown one is refused by name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QuantInfo {
    pub precision: String,
    /// Values per scale along K.
    pub block: usize,
    pub packing: String,
    /// The weight's own shape, `[out, in]` (the shard holds its bytes as a flat U8 tensor).
    pub shape: Vec<usize>,
}

impl QuantInfo {
    pub fn new(precision: Precision, block: usize, shape: Vec<usize>) -> Self {
        Self {
            precision: precision.name().into(),
            block,
            packing: PACKING.into(),
            shape,
        }
    }

    /// The precision, block and packing checked against the shape: what a loader may trust.
    pub fn check(&self) -> Result<Precision, String> {
        let precision: Precision = self.precision.parse()?;
        if precision == Precision::F16 {
            return Err("precision f16 is not a quantized precision".into());
        }
        if self.packing != PACKING {
            return Err(format!(
                "unknown packing {:?} (this version reads {PACKING:?})",
                self.packing
            ));
        }
        // A projection `[out, in]`, or a convolution `[out, in, kh, kw]` (stored `[out, kh, kw,
        // in]`: its blocks run along the input channels of one tap).
        let (out, k) = match self.shape[..] {
            [out, k] => (out, k),
            [out, k, kh, kw] if kh > 0 && kw > 0 => (out, k),
            _ => {
                return Err(format!(
                    "a quantized weight has two dimensions (a projection) or four (a \
                     convolution), this one {:?}",
                    self.shape
                ));
            }
        };
        if out == 0 || k == 0 {
            return Err(format!("empty shape {:?}", self.shape));
        }
        if !(self.block == BLOCK || SMALLER_BLOCKS.contains(&self.block)) {
            return Err(format!(
                "block size {} is not one this version reads ({BLOCK}, 16 or 8)",
                self.block
            ));
        }
        if !k.is_multiple_of(self.block) {
            return Err(format!(
                "block size {} does not divide the {k} inputs",
                self.block
            ));
        }
        Ok(precision)
    }

    /// burn's scheme for this tensor (call after [`QuantInfo::check`]).
    pub fn scheme(&self, precision: Precision) -> QuantScheme {
        scheme(precision, self.block)
    }

    /// The exact byte length of the stored tensor: packed values, then one f16 per block.
    pub fn byte_len(&self, precision: Precision) -> usize {
        byte_len(precision, self.block, &self.stored_shape())
    }

    /// The shape the bytes are laid out in: a projection's own `[out, in]`; a convolution's
    /// `[out, in, kh, kw]` channels last, `[out, kh, kw, in]`, so that its blocks of input
    /// channels are contiguous (the quantized tensor has this shape on the device).
    pub fn stored_shape(&self) -> Vec<usize> {
        match self.shape[..] {
            [out, k, kh, kw] => vec![out, kh, kw, k],
            _ => self.shape.clone(),
        }
    }

    /// The weight as the matrix the bytes quantize: `[out, K]` (a convolution's K is
    /// `kh · kw · in`).
    pub fn matrix(&self) -> [usize; 2] {
        [self.shape[0], self.numel() / self.shape[0]]
    }

    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
}

/// The stored layout's scheme: packed along K, blocks `[1, block]`, f16 scales.
pub fn scheme(precision: Precision, block: usize) -> QuantScheme {
    scheme_of(
        precision,
        QuantStore::PackedU32(0),
        [1, block as u8],
        ScaleDtype::F16,
    )
}

fn scheme_of(
    precision: Precision,
    store: QuantStore,
    block: [u8; 2],
    scales: ScaleDtype,
) -> QuantScheme {
    let value = match precision {
        Precision::Q8 => QuantValue::Q8S,
        Precision::Q4 => QuantValue::Q4S,
        Precision::F16 => unreachable!("f16 is not quantized"),
    };
    QuantScheme::default()
        .with_value(value)
        .with_store(store)
        .per_block(block, scales)
}

/// A stored quantized tensor's bytes and scheme as a device computing in `compute` takes them:
/// as stored for f16 compute; for f32 compute (no `shader-f16`: SwiftShader, the CPU backend)
/// with the scale table widened to f32. A kernel that reads f16 scales is an `enable f16`
/// shader, which a device without `shader-f16` cannot compile: in Chromium the products came
/// out wrong, or the command buffer was invalid, until the scales were widened. Costs 2 bytes a
/// block (q4: 0.625 bytes a weight instead of 0.5625), only where weights are f32 anyway.
pub fn for_compute(
    info: &QuantInfo,
    precision: Precision,
    bytes: &[u8],
    compute: DType,
) -> (Vec<u8>, QuantScheme) {
    if compute == DType::F16 {
        return (bytes.to_vec(), info.scheme(precision));
    }
    let blocks = info.numel() / info.block;
    let values = bytes.len() - blocks * 2;
    let mut widened = Vec::with_capacity(values + blocks * 4);
    widened.extend_from_slice(&bytes[..values]);
    for scale in bytes[values..].chunks_exact(2) {
        let scale = f16::from_le_bytes([scale[0], scale[1]]).to_f32();
        widened.extend_from_slice(&scale.to_le_bytes());
    }
    let scheme = scheme_of(
        precision,
        QuantStore::PackedU32(0),
        [1, info.block as u8],
        ScaleDtype::F32,
    );
    (widened, scheme)
}

pub fn byte_len(precision: Precision, block: usize, shape: &[usize]) -> usize {
    quantized_data_len(&scheme(precision, block), &Shape::from(shape.to_vec()))
}

/// The block size for a weight with `k` inputs, or `None` when no block divides it (such a
/// weight stays f16).
pub fn block_for(k: usize) -> Option<usize> {
    std::iter::once(BLOCK)
        .chain(SMALLER_BLOCKS)
        .find(|b| k > 0 && k.is_multiple_of(*b))
}

/// Whether the weight `name` of `shape` is quantized: by role, the weight (`[out, in]`) of an
/// attention or MLP projection inside a transformer block. Kept f16: embeddings (patch, position,
/// timestep, latent and condition inputs), norms, biases, the final layer's modulation, the MoE router,
/// the U-Net skip projection, the VAE's post-KL and query projections and every model's final
/// projection (the field, the latents' velocity): small, and where an error reaches the
/// output undamped. Names are the official checkpoints'.
pub fn quantizable(name: &str, shape: &[usize]) -> bool {
    let Some(path) = name.strip_suffix(".weight") else {
        return false;
    };
    if shape.len() == 4 {
        // ISNet's convolutions (every `rebnconv…conv_s1`, 99.6 % of its weights), in blocks
        // of input channels; its first convolution (3 inputs) and the six side outputs (the
        // masks: one output channel each) stay f16.
        return path.ends_with(".conv_s1") && block_for(shape[1]).is_some();
    }
    if shape.len() != 2 || block_for(shape[1]).is_none() {
        return false;
    }
    let segments: Vec<&str> = path.split('.').collect();
    let has = |s: &str| segments.contains(&s);
    if segments.iter().any(|s| s.contains("embed")) || has("gate") {
        return false;
    }
    const ATTENTION_OR_MLP: [&str; 11] = [
        "attention",
        "attn",
        "attn1",
        "attn2",
        "img_attn",
        "txt_attn",
        "mlp",
        "img_mlp",
        "txt_mlp",
        "experts",
        "shared_experts",
    ];
    let last = segments.last().copied().unwrap_or_default();
    let in_block = has("double_blocks") || has("single_blocks");
    ATTENTION_OR_MLP.iter().any(|s| has(s))
        // 2.0's single-stream blocks fuse q, k, v and the MLP into linear1 and their outputs
        // into linear2.
        || (has("single_blocks") && matches!(last, "linear1" | "linear2"))
        // 2.0's per-block modulations (adaLN: shift, scale and gate from the timestep and
        // guidance vector) are projections of the same kind and 27 % of its weights.
        || (in_block && last == "lin")
}

/// How the tensor `name` of `shape` is stored at `precision`: its quantized entry, or `None`
/// for f16 (at f16, and for every tensor [`quantizable`] leaves alone).
pub fn storage(name: &str, shape: &[usize], precision: Precision) -> Option<QuantInfo> {
    if precision == Precision::F16 || !quantizable(name, shape) {
        return None;
    }
    let block = block_for(shape[1])?;
    Some(QuantInfo::new(precision, block, shape.to_vec()))
}

/// A convolution weight `[out, in, kh, kw]` (row-major values) laid out channels last,
/// `[out, kh, kw, in]`, as a quantized convolution is stored (see [`QuantInfo::stored_shape`]).
pub fn channels_last(values: &[f32], shape: &[usize]) -> Vec<f32> {
    let [out, k, kh, kw] = shape[..] else {
        return values.to_vec();
    };
    let mut laid = Vec::with_capacity(values.len());
    for o in 0..out {
        for y in 0..kh {
            for x in 0..kw {
                laid.extend((0..k).map(|i| values[((o * k + i) * kh + y) * kw + x]));
            }
        }
    }
    laid
}

/// The inverse of [`channels_last`].
fn channels_first(values: &[f32], shape: &[usize]) -> Vec<f32> {
    let [out, k, kh, kw] = shape[..] else {
        return values.to_vec();
    };
    let mut laid = vec![0.0; values.len()];
    let mut at = 0;
    for o in 0..out {
        for y in 0..kh {
            for x in 0..kw {
                for i in 0..k {
                    laid[((o * k + i) * kh + y) * kw + x] = values[at];
                    at += 1;
                }
            }
        }
    }
    laid
}

/// Bytes the tensor takes in a shard (and on a device computing in f16) at `precision`.
pub fn stored_len(name: &str, shape: &[usize], precision: Precision) -> u64 {
    match storage(name, shape, precision) {
        Some(info) => info.byte_len(precision) as u64,
        None => shape.iter().product::<usize>() as u64 * 2,
    }
}

/// Quantize a `[out, k]` weight (f32 values, row-major) into burn's packed layout.
pub fn quantize(values: &[f32], shape: [usize; 2], precision: Precision, block: usize) -> Vec<u8> {
    let [out, k] = shape;
    assert_eq!(values.len(), out * k, "values fill the shape");
    assert!(k.is_multiple_of(block), "the block divides K");
    let max_level = precision.max_level();
    let mut levels: Vec<i8> = Vec::with_capacity(values.len());
    let mut scales: Vec<f16> = Vec::with_capacity(values.len() / block);
    for chunk in values.chunks_exact(block) {
        let peak = chunk.iter().fold(0f32, |m, v| m.max(v.abs()));
        let scale = round_up_f16(peak / max_level);
        scales.push(scale);
        let scale = scale.to_f32();
        levels.extend(chunk.iter().map(|v| {
            if scale > 0.0 {
                (v / scale).round().clamp(-max_level, max_level) as i8
            } else {
                0
            }
        }));
    }
    let mut bytes = match precision {
        Precision::Q8 => levels.iter().map(|&v| v as u8).collect::<Vec<u8>>(),
        Precision::Q4 => {
            // Eight nibbles a word, the first value in the lowest bits; a row's last word is
            // zero-padded (K is a multiple of 8 whenever a block divides it).
            let mut bytes = Vec::with_capacity(levels.len() / 2);
            for row in levels.chunks_exact(k) {
                for word in row.chunks(8) {
                    let packed = word
                        .iter()
                        .enumerate()
                        .fold(0u32, |acc, (i, &v)| acc | ((v as u32 & 0xF) << (4 * i)));
                    bytes.extend_from_slice(&packed.to_le_bytes());
                }
            }
            bytes
        }
        Precision::F16 => unreachable!("f16 is not quantized"),
    };
    // burn aligns the scales to 4 bytes after the values.
    bytes.resize(bytes.len().next_multiple_of(4), 0);
    for scale in scales {
        bytes.extend_from_slice(&scale.to_le_bytes());
    }
    bytes
}

/// The dequantized values of a stored tensor (tests and quality measurements; the device never
/// needs it).
pub fn dequantize(bytes: &[u8], info: &QuantInfo) -> Result<Vec<f32>, String> {
    let precision = info.check()?;
    if bytes.len() != info.byte_len(precision) {
        return Err(format!(
            "holds {} bytes, {} {} of {:?} in blocks of {} take {}",
            bytes.len(),
            precision,
            PACKING,
            info.shape,
            info.block,
            info.byte_len(precision)
        ));
    }
    let scales = scales(bytes, info);
    let stored: Vec<f32> = (0..info.numel())
        .map(|i| level(bytes, precision, i) as f32 * scales[i / info.block])
        .collect();
    Ok(channels_first(&stored, &info.shape))
}

/// The level of row-major element `i` of a stored tensor (`bytes` starts with its values).
fn level(bytes: &[u8], precision: Precision, i: usize) -> i8 {
    match precision {
        Precision::Q4 => {
            let nibble = (bytes[i / 2] >> (4 * (i % 2))) & 0xF;
            (nibble << 4) as i8 >> 4
        }
        _ => bytes[i] as i8,
    }
}

/// A stored tensor's block scales, row-major `[out, in / block]`, widened to f32.
fn scales(bytes: &[u8], info: &QuantInfo) -> Vec<f32> {
    let start = bytes.len() - info.numel() / info.block * 2;
    bytes[start..]
        .chunks_exact(2)
        .map(|b| f16::from_le_bytes([b[0], b[1]]).to_f32())
        .collect()
}

/// A stored `[out, in]` tensor laid out for burn's CPU backend as a linear layer uses it:
/// `[in, out]`, one i8 a value (what that backend unpacks to anyway) and blocks along the first
/// dimension, with f32 scales. That backend moves a block-quantized tensor by dequantizing and
/// quantizing it again, so the transpose each linear weight takes at load made loading
/// 2mini-turbo's q8 sets 7.6× slower than its f16 sets (123 s against 16 s, and a second
/// rounding); laid out here, nothing moves on the device.
pub fn transposed_for_cpu(
    info: &QuantInfo,
    precision: Precision,
    bytes: &[u8],
) -> (Vec<u8>, QuantScheme, [usize; 2]) {
    let [out, k] = [info.shape[0], info.shape[1]];
    let blocks = k / info.block;
    let scheme = scheme_of(
        precision,
        QuantStore::Native,
        [info.block as u8, 1],
        ScaleDtype::F32,
    );
    let shape = [k, out];
    let total = quantized_data_len(&scheme, &Shape::from(shape.to_vec()));
    let levels: Vec<u8> = (0..out * k)
        .map(|i| level(bytes, precision, i) as u8)
        .collect();
    let mut data = vec![0u8; total - blocks * out * 4];
    // In tiles, so both sides stay in cache.
    const TILE: usize = 64;
    for i0 in (0..k).step_by(TILE) {
        for o0 in (0..out).step_by(TILE) {
            for i in i0..(i0 + TILE).min(k) {
                for o in o0..(o0 + TILE).min(out) {
                    data[i * out + o] = levels[o * k + i];
                }
            }
        }
    }
    drop(levels);
    let scales = scales(bytes, info);
    for block in 0..blocks {
        for o in 0..out {
            data.extend_from_slice(&scales[o * blocks + block].to_le_bytes());
        }
    }
    debug_assert_eq!(data.len(), total);
    (data, scheme, shape)
}

/// Every scale of a stored tensor is finite and not negative (a corrupted scale table would
/// otherwise poison every product that reads it). `bytes` has been length-checked.
pub fn check_scales(bytes: &[u8], info: &QuantInfo) -> Result<(), String> {
    let count = info.numel() / info.block;
    let table = &bytes[bytes.len() - count * 2..];
    match table
        .chunks_exact(2)
        .map(|b| f16::from_le_bytes([b[0], b[1]]))
        .position(|s| !s.is_finite() || s.is_sign_negative() && s != f16::ZERO)
    {
        Some(block) => Err(format!(
            "scale {block} of {count} is {} (a scale is finite and not negative)",
            f16::from_le_bytes([table[2 * block], table[2 * block + 1]])
        )),
        None => Ok(()),
    }
}

/// `module`'s projection weights ([`quantizable`], by their PyTorch checkpoint names through
/// `rename`, as [`super::apply_torch_weights`] takes them) quantized to `precision` on its
/// device, as if loaded from a quantized set: the benchmarks' way to time a quantized network
/// built with random weights. Each weight is read back to the host once.
pub fn quantize_module<M: burn::module::Module>(
    module: M,
    precision: Precision,
    rename: impl Fn(&str) -> String,
) -> M {
    use burn::module::{ModuleMapper, Param};
    use burn::tensor::{Tensor, TensorData};

    struct Quantizer<R> {
        rename: R,
        precision: Precision,
        path: Vec<String>,
    }
    impl<R: Fn(&str) -> String> ModuleMapper for Quantizer<R> {
        fn enter_module(&mut self, name: &str, _container_type: &str) {
            self.path.push(name.to_string());
        }
        fn exit_module(&mut self, _name: &str, _container_type: &str) {
            self.path.pop();
        }
        fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
            let shape = param.lazy_shape().to_vec();
            let (name, stored, linear) =
                super::apply::checkpoint_entry(&self.path, &shape, true, &self.rename);
            let Some(info) = linear
                .then(|| storage(&name, &stored, self.precision))
                .flatten()
            else {
                return param;
            };
            let id = param.id;
            let weight = param.val();
            let device = weight.device();
            // burn keeps `[in, out]`; the stored layout is PyTorch's `[out, in]`.
            let rows: Tensor<2> = weight.reshape([shape[0], shape[1]]).transpose();
            let values: Vec<f32> = rows
                .into_data()
                .convert::<f32>()
                .try_into_vec::<f32>()
                .expect("f32 values");
            let bytes = quantize(&values, [stored[0], stored[1]], self.precision, info.block);
            let data = TensorData::from_bytes_vec(
                bytes,
                [stored[0], stored[1]],
                dtype(self.precision, info.block),
            );
            // As the loader hands it to `apply`: `[out, in]` as rank D (the same shape), then
            // transposed as a linear layer's weight is.
            let dims: [usize; D] = stored.try_into().expect("rank D");
            let quantized = Tensor::<2>::from_data(data, &device).reshape(dims);
            Param::initialized(id, quantized.transpose())
        }
    }
    module.map(&mut Quantizer {
        rename,
        precision,
        path: Vec::new(),
    })
}

/// The dtype a quantized tensor has on the device.
pub fn dtype(precision: Precision, block: usize) -> DType {
    DType::QFloat(scheme(precision, block))
}

/// The smallest f16 not below `x` (a scale rounded down would clip its block's largest value).
fn round_up_f16(x: f32) -> f16 {
    let h = f16::from_f32(x);
    if h.to_f32() >= x || !x.is_finite() {
        h
    } else {
        f16::from_bits(h.to_bits() + 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn weight(out: usize, k: usize) -> Vec<f32> {
        (0..out * k)
            .map(|i| (i as f32 * 0.731).sin() * (1.0 + (i % 7) as f32))
            .collect()
    }

    #[test]
    fn a_quantized_weight_comes_back_within_half_a_step_of_its_block() {
        for precision in [Precision::Q8, Precision::Q4] {
            for (k, block) in [(64, 32), (80, 16), (24, 8)] {
                let values = weight(5, k);
                let bytes = quantize(&values, [5, k], precision, block);
                let info = QuantInfo::new(precision, block, vec![5, k]);
                assert_eq!(bytes.len(), info.byte_len(precision));
                let back = dequantize(&bytes, &info).unwrap();
                for (b, (chunk, got)) in values.chunks(block).zip(back.chunks(block)).enumerate() {
                    let peak = chunk.iter().fold(0f32, |m, v| m.max(v.abs()));
                    let step = peak / precision.max_level();
                    for (v, g) in chunk.iter().zip(got) {
                        assert!(
                            (v - g).abs() <= step * 0.5 + step * 2e-3,
                            "{precision} K={k} block {b}: {v} came back as {g} (step {step})"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn the_index_entry_is_checked_before_bytes_are_trusted() {
        let ok = QuantInfo::new(Precision::Q4, 32, vec![4, 64]);
        assert_eq!(ok.check(), Ok(Precision::Q4));
        let mut unknown = ok.clone();
        unknown.precision = "q3".into();
        assert!(unknown.check().unwrap_err().contains("\"q3\""));
        let mut block = ok.clone();
        block.block = 24;
        assert!(block.check().unwrap_err().contains("block size 24"));
        let mut indivisible = ok.clone();
        indivisible.shape = vec![4, 80];
        assert!(indivisible.check().unwrap_err().contains("does not divide"));
        let mut packing = ok;
        packing.packing = "u8".into();
        assert!(packing.check().unwrap_err().contains("packing"));
    }

    #[test]
    fn roles_decide_what_is_quantized() {
        let yes = [
            "conditioner.main_image_encoder.model.encoder.layer.3.attention.attention.query.weight",
            "conditioner.main_image_encoder.model.encoder.layer.3.attention.output.dense.weight",
            "conditioner.main_image_encoder.model.encoder.layer.3.mlp.fc1.weight",
            "model.blocks.2.attn1.to_q.weight",
            "model.blocks.2.attn2.out_proj.weight",
            "model.blocks.2.mlp.fc2.weight",
            "model.blocks.2.moe.experts.1.net.0.proj.weight",
            "model.blocks.2.moe.shared_experts.net.2.weight",
            "model.double_blocks.0.img_attn.qkv.weight",
            "model.double_blocks.0.txt_mlp.2.weight",
            "model.single_blocks.4.linear1.weight",
            "model.single_blocks.4.linear2.weight",
            "model.double_blocks.0.img_mod.lin.weight",
            "model.single_blocks.4.modulation.lin.weight",
            "vae.transformer.resblocks.1.attn.c_qkv.weight",
            "vae.geo_decoder.cross_attn_decoder.mlp.c_fc.weight",
        ];
        let no = [
            "model.blocks.2.attn1.to_q.bias",
            "model.blocks.2.moe.gate.weight",
            "model.blocks.2.skip_linear.weight",
            "model.t_embedder.mlp.0.weight",
            "model.x_embedder.weight",
            "model.final_layer.linear.weight",
            "model.final_layer.adaLN_modulation.1.weight",
            "vae.post_kl.weight",
            "vae.geo_decoder.output_proj.weight",
            "vae.geo_decoder.query_proj.weight",
        ];
        for name in yes {
            assert!(quantizable(name, &[64, 64]), "{name}");
        }
        for name in no {
            assert!(!quantizable(name, &[64, 64]), "{name}");
        }
        assert!(!quantizable("model.blocks.2.mlp.fc2.weight", &[64, 36]));
        assert!(!quantizable("model.blocks.2.mlp.fc2.weight", &[64]));
    }

    #[test]
    fn a_corrupted_scale_is_named() {
        let values = weight(2, 32);
        let mut bytes = quantize(&values, [2, 32], Precision::Q8, 32);
        let info = QuantInfo::new(Precision::Q8, 32, vec![2, 32]);
        assert!(check_scales(&bytes, &info).is_ok());
        let n = bytes.len();
        bytes[n - 2..].copy_from_slice(&f16::NAN.to_le_bytes());
        assert!(
            check_scales(&bytes, &info)
                .unwrap_err()
                .contains("scale 1 of 2")
        );
    }

    #[test]
    fn a_convolution_is_quantized_channels_last_and_dequantized_in_its_own_layout() {
        let shape = [32, 16, 3, 3];
        let values: Vec<f32> = (0..32 * 16 * 9)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 50.0)
            .collect();
        let name = "stage1.rebnconv1.conv_s1.weight";
        let info = storage(name, &shape, Precision::Q8).expect("an ISNet convolution");
        assert_eq!(info.block, 16, "blocks of the 16 input channels");
        assert_eq!(info.stored_shape(), [32, 3, 3, 16]);
        assert_eq!(info.matrix(), [32, 144]);
        let bytes = quantize(
            &channels_last(&values, &shape),
            info.matrix(),
            Precision::Q8,
            info.block,
        );
        assert_eq!(bytes.len(), info.byte_len(Precision::Q8));
        let back = dequantize(&bytes, &info).unwrap();
        let worst = values
            .iter()
            .zip(&back)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(worst <= 1.0 / 127.0, "worst {worst}");
        // The first convolution (3 inputs) and the side outputs (the masks) stay f16.
        assert!(!quantizable("conv_in.weight", &[64, 3, 3, 3]));
        assert!(!quantizable("side1.weight", &[1, 64, 3, 3]));
        assert!(storage(name, &shape, Precision::F16).is_none());
    }
}
