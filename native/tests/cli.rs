//! The `orfeas` binary as a user runs it: pack, verify, load, and clear errors on bad input.

use std::path::Path;

use safetensors::tensor::{Dtype, TensorView};

mod common;
use common::{orfeas, text};

fn write_model(path: &Path) -> usize {
    let tensors: Vec<(String, Vec<usize>, Vec<u8>)> = (0..5)
        .map(|i| {
            let shape = vec![16 + i, 8];
            let bytes = (0..shape[0] * shape[1])
                .flat_map(|k| ((k as f32) * 0.01 - i as f32).to_le_bytes())
                .collect();
            (format!("layer{i}.weight"), shape, bytes)
        })
        .collect();
    let views: Vec<(String, TensorView)> = tensors
        .iter()
        .map(|(n, s, b)| {
            (
                n.clone(),
                TensorView::new(Dtype::F32, s.clone(), b).unwrap(),
            )
        })
        .collect();
    safetensors::serialize_to_file(views, None, path).unwrap();
    tensors.len()
}

#[test]
fn pack_verify_load_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("m.safetensors");
    let count = write_model(&input);
    let out = dir.path().join("set");
    let packed = orfeas(&[
        "pack",
        input.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
        "--shard-size",
        "16",
        "--model-id",
        "demo",
    ]);
    assert!(packed.status.success(), "{}", text(&packed));
    assert!(
        text(&packed).contains(&format!("packed {count} tensors")),
        "{}",
        text(&packed)
    );
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("model.safetensors.index.json")).unwrap())
            .unwrap();
    assert_eq!(index["model"]["id"], "demo");
    assert_eq!(index["weight_map"].as_object().unwrap().len(), count);

    let verified = orfeas(&["verify", out.to_str().unwrap()]);
    assert!(verified.status.success(), "{}", text(&verified));

    let loaded = orfeas(&["load", out.to_str().unwrap(), "--backend", "cpu"]);
    assert!(loaded.status.success(), "{}", text(&loaded));
    assert!(
        text(&loaded).contains(&format!("loaded {count} tensors")),
        "{}",
        text(&loaded)
    );

    // Corrupt the shard: verify and load both name it.
    let shard = index["shards"][0]["file"].as_str().unwrap().to_string();
    let path = out.join(&shard);
    let mut bytes = std::fs::read(&path).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x10;
    std::fs::write(&path, bytes).unwrap();
    let verified = orfeas(&["verify", out.to_str().unwrap()]);
    assert!(!verified.status.success());
    assert!(text(&verified).contains(&shard), "{}", text(&verified));
    let loaded = orfeas(&["load", out.to_str().unwrap()]);
    assert!(!loaded.status.success());
    let message = text(&loaded);
    assert!(
        message.contains(&shard) && message.contains("sha256 mismatch"),
        "{message}"
    );
}

#[test]
fn pack_rejects_non_safetensors_input_with_a_reason() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("page.safetensors");
    std::fs::write(&input, "<html><body>not a model</body></html>").unwrap();
    let out = orfeas(&[
        "pack",
        input.to_str().unwrap(),
        "-o",
        dir.path().join("o").to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    let message = text(&out);
    assert!(
        message.contains("page.safetensors") && message.contains("header length"),
        "{message}"
    );
}

#[test]
fn pack_rejects_shard_sizes_outside_the_range() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("m.safetensors");
    write_model(&input);
    let out = orfeas(&[
        "pack",
        input.to_str().unwrap(),
        "-o",
        "x",
        "--shard-size",
        "4",
    ]);
    assert!(!out.status.success());
    assert!(text(&out).contains("between 16 and 64"), "{}", text(&out));
}
