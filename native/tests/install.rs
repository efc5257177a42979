//! `pack` and `convert` install a shard set as one transaction, as real processes: a writer
//! that fails part-way (a file-size limit standing in for a full disk), one killed part-way, and
//! two writers at once never leave an installed set that fails `verify`; the second writer is
//! refused, naming the first.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

mod common;
use common::{binary, orfeas, text};

/// A safetensors file of `mib` MiB of f32 values (half that once packed as F16).
fn input(dir: &Path, name: &str, mib: usize, seed: u32) -> PathBuf {
    let path = dir.join(name);
    let values: Vec<u8> = (0..(mib << 18) as u32)
        .flat_map(|k| (((k.wrapping_mul(seed) % 97) as f32) / 97.0 - 0.5).to_le_bytes())
        .collect();
    let view = safetensors::tensor::TensorView::new(
        safetensors::Dtype::F32,
        vec![values.len() / 4],
        &values,
    )
    .unwrap();
    safetensors::serialize_to_file([("w".to_string(), view)], None, &path).unwrap();
    path
}

fn pack_under(shell: &str, input: &Path, out: &Path) -> Output {
    Command::new("sh")
        .arg("-c")
        .arg(format!("{shell}; exec \"$0\" \"$@\""))
        .arg(binary())
        .args(["pack", "--model-id", "m", "--shard-size", "16", "-o"])
        .arg(out)
        .arg(input)
        .output()
        .unwrap()
}

fn verifies(out: &Path) -> bool {
    orfeas(&["verify", out.to_str().unwrap()]).status.success()
}

/// What is in `dir` besides the inputs.
fn leftovers(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| !n.ends_with(".safetensors"))
        .collect();
    names.sort();
    names
}

#[test]
fn a_repack_that_fails_or_dies_part_way_leaves_the_installed_set_verifying() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("m");
    let small = input(dir.path(), "a.safetensors", 1, 7);
    let large = input(dir.path(), "b.safetensors", 8, 13);
    assert!(pack_under("true", &small, &out).status.success());
    let index = std::fs::read(out.join("model.safetensors.index.json")).unwrap();

    // Writes fail past 1 MiB (SIGXFSZ ignored, so the write returns EFBIG): pack says so.
    let failed = pack_under("trap '' XFSZ; ulimit -f 1024", &large, &out);
    assert!(!failed.status.success());
    assert!(
        text(&failed).contains("File too large"),
        "{}",
        text(&failed)
    );
    assert!(verifies(&out));
    assert_eq!(
        std::fs::read(out.join("model.safetensors.index.json")).unwrap(),
        index
    );
    assert_eq!(leftovers(dir.path()), ["m"], "a failed write cleans up");

    // Killed part-way (SIGXFSZ's default): nothing is cleaned, and still the set verifies.
    let killed = pack_under("ulimit -f 1024", &large, &out);
    assert!(killed.status.code().is_none(), "{:?}", killed.status);
    assert!(verifies(&out));
    assert_eq!(
        std::fs::read(out.join("model.safetensors.index.json")).unwrap(),
        index
    );
    // The next writer takes over the dead one's lock and replaces the set.
    assert!(pack_under("true", &large, &out).status.success());
    assert!(verifies(&out));
    assert_ne!(
        std::fs::read(out.join("model.safetensors.index.json")).unwrap(),
        index
    );
    let left = leftovers(dir.path());
    assert!(
        left.iter().all(|n| n == "m" || n.contains(".partial-")),
        "{left:?}"
    );
    assert!(!left.iter().any(|n| n.ends_with(".lock")), "{left:?}");
}

#[test]
fn a_second_writer_is_refused_naming_the_first() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("m");
    let first_input = input(dir.path(), "a.safetensors", 64, 7);
    let second_input = input(dir.path(), "b.safetensors", 1, 13);
    let mut first = Command::new(binary())
        .args(["pack", "--model-id", "m", "--shard-size", "16", "-o"])
        .arg(&out)
        .arg(&first_input)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let lock = dir.path().join(".m.lock");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !lock.exists() {
        assert!(
            Instant::now() < deadline,
            "the first writer never took its lock"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    // Hold the first writer mid-write.
    let pid = first.id().to_string();
    Command::new("kill").args(["-STOP", &pid]).status().unwrap();
    assert!(
        lock.exists(),
        "the first writer finished before it was held"
    );
    let second = pack_under("true", &second_input, &out);
    assert!(!second.status.success());
    let said = text(&second);
    assert!(
        said.contains(&format!("being written by another process (pid {pid}"))
            && said.contains("pack"),
        "{said}"
    );
    Command::new("kill").args(["-CONT", &pid]).status().unwrap();
    assert!(first.wait().unwrap().success());
    assert!(verifies(&out));
    assert_eq!(leftovers(dir.path()), ["m"]);
}
