//! Host-side element conversions between the dtypes a shard may carry.

use half::{bf16, f16};
use safetensors::Dtype;

/// Float dtypes a shard tensor may be stored in and still be loaded (converted on the host).
pub fn is_float(dtype: Dtype) -> bool {
    matches!(dtype, Dtype::F16 | Dtype::BF16 | Dtype::F32 | Dtype::F64)
}

/// Decode little-endian elements of a float dtype into f32.
pub fn to_f32(dtype: Dtype, bytes: &[u8]) -> Option<Vec<f32>> {
    Some(match dtype {
        Dtype::F16 => bytes
            .chunks_exact(2)
            .map(|b| f16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect(),
        Dtype::BF16 => bytes
            .chunks_exact(2)
            .map(|b| bf16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect(),
        Dtype::F32 => bytes
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect(),
        Dtype::F64 => bytes
            .chunks_exact(8)
            .map(|b| f64::from_le_bytes(b.try_into().expect("8 bytes")) as f32)
            .collect(),
        _ => return None,
    })
}

/// Encode little-endian elements of a float dtype as F16 bytes (round to nearest even),
/// appending to `out`. Returns the number of finite inputs that overflowed to infinity.
pub fn append_f16(dtype: Dtype, bytes: &[u8], out: &mut Vec<u8>) -> Option<usize> {
    if dtype == Dtype::F16 {
        out.extend_from_slice(bytes);
        return Some(0);
    }
    let values = to_f32(dtype, bytes)?;
    let mut overflowed = 0;
    out.reserve(values.len() * 2);
    for v in values {
        let h = f16::from_f32(v);
        if v.is_finite() && h.is_infinite() {
            overflowed += 1;
        }
        out.extend_from_slice(&h.to_le_bytes());
    }
    Some(overflowed)
}
