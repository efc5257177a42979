//! Generated shard sets for the browser tests and the benchmark.

use std::path::Path;

use orfeas_engine::weights::ShardIndex;
use orfeas_engine::weights::pack::{PackOptions, pack};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use safetensors::tensor::{Dtype, TensorView};

/// Write a random fp16 model of about `total_bytes` (tensors of up to `tensor_bytes`) and pack
/// it into `out` as shards of about `shard_bytes`, with model id `id`.
pub fn generate(
    out: &Path,
    id: &str,
    total_bytes: u64,
    tensor_bytes: u64,
    shard_bytes: u64,
    seed: u64,
) -> anyhow::Result<ShardIndex> {
    let scratch = tempfile::tempdir()?;
    let mut rng = StdRng::seed_from_u64(seed);
    let mut inputs = Vec::new();
    let mut written = 0u64;
    let mut layer = 0usize;
    // Inputs of ≤ 64 MiB each so generation never holds a whole large model in memory.
    while written < total_bytes {
        let mut tensors: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
        let mut file_bytes = 0u64;
        while file_bytes < (64 << 20) && written < total_bytes {
            let bytes = tensor_bytes.min(total_bytes - written).max(2);
            let cols = 64usize;
            let rows = ((bytes / 2) as usize).div_ceil(cols);
            let mut data = vec![0u8; rows * cols * 2];
            rng.fill(&mut data[..]);
            for value in data.chunks_exact_mut(2) {
                // Clear the top exponent bit: finite values of magnitude < 2, never NaN/inf.
                value[1] &= 0xbf;
            }
            file_bytes += data.len() as u64;
            written += data.len() as u64;
            tensors.push((format!("blocks.{layer}.weight"), vec![rows, cols], data));
            layer += 1;
        }
        let path = scratch
            .path()
            .join(format!("part{}.safetensors", inputs.len()));
        let views: Vec<(String, TensorView)> = tensors
            .iter()
            .map(|(name, shape, data)| {
                Ok((
                    name.clone(),
                    TensorView::new(Dtype::F16, shape.clone(), data)?,
                ))
            })
            .collect::<anyhow::Result<_>>()?;
        safetensors::serialize_to_file(views, None, &path)?;
        inputs.push(path);
    }
    let options = PackOptions {
        shard_size: shard_bytes,
        model_id: id.to_string(),
        version: "1".into(),
        config: serde_json::json!({"kind": "generated test model"}),
        ..Default::default()
    };
    Ok(pack(&inputs, out, &options, |_, _| {})?)
}
