//! Host-side element conversions between the dtypes a shard may carry.

use half::{bf16, f16};
use safetensors::Dtype;

/// Float dtypes a shard tensor may be stored in and still be loaded (converted on the host).
pub fn is_float(dtype: Dtype) -> bool {
    matches!(dtype, Dtype::F16 | Dtype::BF16 | Dtype::F32 | Dtype::F64)
}

/// Every f16 bit pattern widened to f32 (256 KiB). A table lookup is several times faster than
/// the bit manipulation where the CPU has no conversion instruction (wasm), and exact.
fn f16_table() -> &'static [f32] {
    static TABLE: std::sync::OnceLock<Vec<f32>> = std::sync::OnceLock::new();
    TABLE.get_or_init(|| {
        (0..=u16::MAX)
            .map(|bits| f16::from_bits(bits).to_f32())
            .collect()
    })
}

/// Decode little-endian elements of a float dtype into f32.
pub fn to_f32(dtype: Dtype, bytes: &[u8]) -> Option<Vec<f32>> {
    Some(match dtype {
        Dtype::F16 => {
            let table = f16_table();
            bytes
                .chunks_exact(2)
                .map(|b| table[usize::from(u16::from_le_bytes([b[0], b[1]]))])
                .collect()
        }
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

/// `len` seeded draws from N(`mean`, `std`²) as F16 bytes (synthetic weights for tests and
/// benchmarks: the same ChaCha8 stream and normal draws as the sampler's noise).
pub fn normal_f16(seed: u64, len: usize, mean: f32, std: f32) -> Vec<u8> {
    use chacha20::rand_core::SeedableRng;
    use rand_distr::Distribution;
    let mut rng = chacha20::ChaCha8Rng::seed_from_u64(seed);
    let mut out = Vec::with_capacity(len * 2);
    for _ in 0..len {
        let v: f32 = rand_distr::StandardNormal.sample(&mut rng);
        out.extend_from_slice(&f16::from_f32(mean + std * v).to_le_bytes());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_f16_table_widens_every_pattern_exactly() {
        let bytes: Vec<u8> = (0..=u16::MAX).flat_map(|b| b.to_le_bytes()).collect();
        let widened = to_f32(Dtype::F16, &bytes).unwrap();
        for (bits, value) in (0..=u16::MAX).zip(widened) {
            let expected = f16::from_bits(bits).to_f32();
            assert!(
                value.to_bits() == expected.to_bits() || (value.is_nan() && expected.is_nan()),
                "{bits:#06x}"
            );
        }
    }
}
