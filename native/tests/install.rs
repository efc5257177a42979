//! `pack` and `convert` install a shard set as one transaction, as real processes: a writer
//! that fails part-way (a file-size limit standing in for a full disk), one killed part-way, and
//! two writers at once never leave an installed set that fails `verify`; the second writer is
//! refused, naming the first.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

mod common;
use common::{binary, orfeas, text};

/// A safetensors file of two tensors: `a`, 1 MiB of f32 (half that packed as F16), and `b`, `mib`
/// MiB of f32. With `b` over the 16 MiB shard size once packed, a set has two shards, the first
/// small: a writer limited to a few MiB per file installs the first and fails on the second.
fn input(dir: &Path, name: &str, mib: usize, seed: u32) -> PathBuf {
    let path = dir.join(name);
    let values = |n: usize| -> Vec<u8> {
        (0..n as u32)
            .flat_map(|k| (((k.wrapping_mul(seed) % 97) as f32) / 97.0 - 0.5).to_le_bytes())
            .collect()
    };
    let (a, b) = (values(1 << 18), values(mib << 18));
    safetensors::serialize_to_file(
        [
            ("a".to_string(), f32_view(&a)),
            ("b".to_string(), f32_view(&b)),
        ],
        None,
        &path,
    )
    .unwrap();
    path
}

fn f32_view(bytes: &[u8]) -> safetensors::tensor::TensorView<'_> {
    safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![bytes.len() / 4], bytes)
        .unwrap()
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
    // The same layout (two shards, the same file names) with other values: a re-pack that
    // replaced shards one by one would leave the first new and the second old.
    let first = input(dir.path(), "a.safetensors", 40, 7);
    let second = input(dir.path(), "b.safetensors", 40, 13);
    assert!(pack_under("true", &first, &out).status.success());
    let index = std::fs::read(out.join("model.safetensors.index.json")).unwrap();

    // Writes fail past 2 MiB (sh counts 512-byte blocks; SIGXFSZ ignored, so the write returns
    // EFBIG): the first shard is written, the second is not, and pack says so.
    let failed = pack_under("trap '' XFSZ; ulimit -f 4096", &second, &out);
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
    let killed = pack_under("ulimit -f 4096", &second, &out);
    assert!(killed.status.code().is_none(), "{:?}", killed.status);
    assert!(verifies(&out));
    assert_eq!(
        std::fs::read(out.join("model.safetensors.index.json")).unwrap(),
        index
    );
    // The next writer takes over the dead one's lock and replaces the set.
    assert!(pack_under("true", &second, &out).status.success());
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
