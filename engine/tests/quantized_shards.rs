//! A quantized shard set that lies: every inconsistency between the index's entry for a
//! quantized tensor and the bytes its shard holds is refused with the tensor's name, before
//! the bytes reach the device. (The shards' hashes are kept consistent, so these are the
//! checks a writer's bug or a hand-edited index would meet, not the sha256 check.)

use std::path::Path;

use burn::tensor::DType;
use orfeas_engine::weights::pack::{PackOptions, pack};
use orfeas_engine::weights::source::DirSource;
use orfeas_engine::weights::{INDEX_FILE, Precision, ShardIndex, load_all};
use safetensors::tensor::TensorView;
use sha2::{Digest, Sha256};

mod fixtures;
use fixtures::fixtures;

/// The fixture 2.1 DiT packed at q4 into `dir`.
fn quantized_set(dir: &Path) -> ShardIndex {
    pack(
        &[fixtures().join("dit21.weights.safetensors")],
        dir,
        &PackOptions {
            shard_size: 256 << 10,
            precision: Precision::Q4,
            ..Default::default()
        },
        |_, _| {},
    )
    .unwrap()
}

fn write_index(dir: &Path, index: &ShardIndex) {
    std::fs::write(dir.join(INDEX_FILE), index.to_json()).unwrap();
}

/// Load the set on the CPU backend; the error's text.
fn load_error(dir: &Path) -> String {
    let source = DirSource::new(dir);
    let device = orfeas_engine::device::cpu();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    match runtime.block_on(load_all(&source, &device, DType::F32, |_| {})) {
        Ok(_) => panic!("the set loaded"),
        Err(e) => e.to_string(),
    }
}

/// Rewrite the shard holding `name` with `edit` applied to that tensor's bytes, and make the
/// index agree with the new file (size, sha256): only the tensor's contents lie.
fn rewrite_tensor(dir: &Path, index: &mut ShardIndex, name: &str, edit: impl Fn(&mut Vec<u8>)) {
    let file = index.weight_map[name].clone();
    let path = dir.join(&file);
    let bytes = std::fs::read(&path).unwrap();
    let shard = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut owned: Vec<(String, safetensors::Dtype, Vec<usize>, Vec<u8>)> = shard
        .tensors()
        .into_iter()
        .map(|(n, v)| (n, v.dtype(), v.shape().to_vec(), v.data().to_vec()))
        .collect();
    for (n, _, shape, data) in &mut owned {
        if n == name {
            edit(data);
            *shape = vec![data.len()];
        }
    }
    let views: Vec<(String, TensorView)> = owned
        .iter()
        .map(|(n, dtype, shape, data)| {
            (
                n.clone(),
                TensorView::new(*dtype, shape.clone(), data).unwrap(),
            )
        })
        .collect();
    let rewritten = safetensors::serialize(views, None).unwrap();
    std::fs::write(&path, &rewritten).unwrap();
    let info = index.shards.iter_mut().find(|s| s.file == file).unwrap();
    info.size = rewritten.len() as u64;
    info.sha256 = hex::encode(Sha256::digest(&rewritten));
    write_index(dir, index);
}

/// A quantized tensor of the set with K divisible by 8 (every block divides it).
fn some_quantized(index: &ShardIndex) -> String {
    index
        .quantized
        .iter()
        .find(|(_, q)| q.shape[1] % 32 != 0)
        .or_else(|| index.quantized.iter().next())
        .map(|(name, _)| name.clone())
        .expect("the set has quantized tensors")
}

#[test]
fn an_unknown_precision_is_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let mut index = quantized_set(dir.path());
    let name = some_quantized(&index);
    index.quantized.get_mut(&name).unwrap().precision = "q3".into();
    write_index(dir.path(), &index);
    let err = load_error(dir.path());
    assert!(err.contains("\"q3\"") && err.contains(&name), "{err}");
}

#[test]
fn a_wrong_block_size_names_the_tensor() {
    let dir = tempfile::tempdir().unwrap();
    let mut index = quantized_set(dir.path());
    let name = some_quantized(&index);
    // Half the recorded block: a valid size that divides K, but twice the scales the shard has.
    let entry = index.quantized.get_mut(&name).unwrap();
    entry.block /= 2;
    write_index(dir.path(), &index);
    let err = load_error(dir.path());
    assert!(
        err.contains(&name) && err.contains("blocks of") && err.contains("needs"),
        "{err}"
    );
    // A block that does not divide K is refused from the index alone.
    let entry = index.quantized.get_mut(&name).unwrap();
    entry.block = 32;
    entry.shape[1] += 8;
    write_index(dir.path(), &index);
    let err = load_error(dir.path());
    assert!(
        err.contains(&name) && err.contains("does not divide"),
        "{err}"
    );
}

#[test]
fn a_truncated_scale_table_names_the_tensor() {
    let dir = tempfile::tempdir().unwrap();
    let mut index = quantized_set(dir.path());
    let name = some_quantized(&index);
    rewrite_tensor(dir.path(), &mut index, &name, |bytes| {
        bytes.truncate(bytes.len() - 2)
    });
    let err = load_error(dir.path());
    assert!(
        err.contains(&name) && err.contains("truncated scale table"),
        "{err}"
    );
}

#[test]
fn a_corrupted_scale_names_the_tensor() {
    let dir = tempfile::tempdir().unwrap();
    let mut index = quantized_set(dir.path());
    let name = some_quantized(&index);
    rewrite_tensor(dir.path(), &mut index, &name, |bytes| {
        let n = bytes.len();
        bytes[n - 2..].copy_from_slice(&half::f16::INFINITY.to_le_bytes());
    });
    let err = load_error(dir.path());
    assert!(err.contains(&name) && err.contains("inf"), "{err}");
}

#[test]
fn quantized_bytes_the_index_does_not_describe_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut index = quantized_set(dir.path());
    let name = some_quantized(&index);
    index.quantized.remove(&name);
    write_index(dir.path(), &index);
    let err = load_error(dir.path());
    assert!(
        err.contains(&name) && err.contains("does not list it as quantized"),
        "{err}"
    );
}

#[test]
fn a_loader_without_quantization_refuses_the_format_by_name() {
    // What a set written by this version says to one that predates it: a new format.
    let dir = tempfile::tempdir().unwrap();
    let mut index = quantized_set(dir.path());
    assert_eq!(index.metadata.format, "orfeas-shards/2");
    index.metadata.format = "orfeas-shards/1".into();
    write_index(dir.path(), &index);
    let err = load_error(dir.path());
    assert!(
        err.contains("quantized tensors in a set of format"),
        "{err}"
    );
}
