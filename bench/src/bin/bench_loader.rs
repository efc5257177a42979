//! Loader benchmark: streamed parse + upload throughput against raw read throughput of the
//! same bytes, measured side by side in one run, and the loader's peak memory for two model
//! sizes (it must not grow with the model).
//!
//! `cargo run --release -p orfeas --bin bench-loader -- [--sizes-mib 256,1024] [--backends cpu,wgpu]`

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use burn::tensor::{DType, Device};
use futures::StreamExt;
use orfeas_engine::weights::loader::read_index;
use orfeas_engine::weights::pack::{PackOptions, pack};
use orfeas_engine::weights::source::DirSource;
use orfeas_engine::weights::{ShardSource, WeightSet, load_all};

const MIB: u64 = 1 << 20;

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("--child-load") {
        return child_load(Path::new(&args[2]), &args[3]);
    }
    let mut sizes = vec![256u64, 1024];
    let mut backends = vec!["cpu".to_string()];
    let mut root = std::env::temp_dir().join("orfeas-bench-loader");
    let mut it = args.iter().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().context("flag without a value")?;
        match flag.as_str() {
            "--sizes-mib" => sizes = value.split(',').map(str::parse).collect::<Result<_, _>>()?,
            "--backends" => backends = value.split(',').map(str::to_string).collect(),
            "--dir" => root = PathBuf::from(value),
            other => bail!("unknown flag {other}"),
        }
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;

    println!("# loader benchmark (shards of 32 MiB, F16 on disk, 1 MiB read chunks)");
    println!(
        "{:>9} {:>8} {:>12} {:>12} {:>7} {:>11} {:>13} {:>14}",
        "set",
        "backend",
        "raw MiB/s",
        "load MiB/s",
        "ratio",
        "peak RSS",
        "device bytes",
        "loader extra"
    );
    for size in sizes {
        let dir = root.join(format!("set-{size}mib"));
        ensure_set(&dir, size * MIB)?;
        for backend in &backends {
            // One untimed pass first: both timed passes then read from the page cache.
            runtime.block_on(raw_read(&dir))?;
            let raw = runtime.block_on(raw_read(&dir))?;
            let load = runtime.block_on(timed_load(&dir, backend))?;
            let child = Command::new(std::env::current_exe()?)
                .args(["--child-load", dir.to_str().unwrap(), backend])
                .output()?;
            if !child.status.success() {
                bail!(
                    "child load failed: {}",
                    String::from_utf8_lossy(&child.stderr)
                );
            }
            let text = String::from_utf8(child.stdout)?;
            let mut fields = text
                .split_whitespace()
                .map(|v| v.parse::<u64>().unwrap_or(0));
            let (base, peak, device_bytes) = (
                fields.next().unwrap_or(0),
                fields.next().unwrap_or(0),
                fields.next().unwrap_or(0),
            );
            let extra = peak.saturating_sub(base).saturating_sub(device_bytes);
            println!(
                "{:>6}MiB {:>8} {:>12.0} {:>12.0} {:>7.2} {:>8}MiB {:>10}MiB {:>11}MiB",
                size,
                backend,
                raw,
                load,
                load / raw,
                peak / MIB,
                device_bytes / MIB,
                extra / MIB
            );
        }
    }
    println!(
        "# ratio = streamed parse+verify+upload ÷ raw read of the same shards; loader extra = peak RSS − RSS before loading − bytes of weights the device holds (on CPU backends the weights themselves live in RAM)"
    );
    Ok(())
}

/// A synthetic model of `bytes` F16 bytes: 2 MiB tensors plus small ones, packed in 32 MiB shards.
fn ensure_set(dir: &Path, bytes: u64) -> Result<()> {
    if dir.join("model.safetensors.index.json").exists() {
        return Ok(());
    }
    std::fs::create_dir_all(dir)?;
    let input = dir.join("input.safetensors.tmp");
    let big = MIB as usize; // elements
    let count = (bytes / (2 * MIB)) as usize;
    let mut header = serde_json::Map::new();
    let mut offset = 0usize;
    for i in 0..count {
        let shape = if i % 8 == 0 {
            vec![big / 2 - 64]
        } else {
            vec![1024, big / 1024]
        };
        let len = shape.iter().product::<usize>() * 2;
        header.insert(
            format!("blocks.{i}.weight"),
            serde_json::json!({"dtype": "F16", "shape": shape, "data_offsets": [offset, offset + len]}),
        );
        offset += len;
    }
    let mut text = serde_json::to_vec(&header)?;
    text.resize(text.len().next_multiple_of(8), b' ');
    use std::io::Write;
    let mut out = std::io::BufWriter::new(std::fs::File::create(&input)?);
    out.write_all(&(text.len() as u64).to_le_bytes())?;
    out.write_all(&text)?;
    // Deterministic values in [-1, 1]: a cheap LCG, f16-encoded.
    let mut state = 0x2545F4914F6CDD1Du64;
    let mut buf = Vec::with_capacity(1 << 20);
    let mut left = offset / 2;
    while left > 0 {
        buf.clear();
        for _ in 0..left.min(1 << 19) {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let v = ((state >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0;
            buf.extend_from_slice(&half::f16::from_f32(v).to_le_bytes());
        }
        left -= buf.len() / 2;
        out.write_all(&buf)?;
    }
    out.flush()?;
    drop(out);
    let final_input = dir.join("input.safetensors");
    std::fs::rename(&input, &final_input)?;
    pack(
        std::slice::from_ref(&final_input),
        dir,
        &PackOptions {
            model_id: "bench".into(),
            ..Default::default()
        },
        |_, _| {},
    )?;
    std::fs::remove_file(final_input)?;
    Ok(())
}

async fn raw_read(dir: &Path) -> Result<f64> {
    let source = DirSource::new(dir);
    let index = read_index(&source).await?;
    let start = Instant::now();
    let mut total = 0u64;
    for shard in &index.shards {
        let mut stream = source.open_shard(&shard.file).await?;
        while let Some(chunk) = stream.next().await {
            total += chunk?.len() as u64;
        }
    }
    Ok(total as f64 / MIB as f64 / start.elapsed().as_secs_f64())
}

/// The device for `backend`, started and warmed up: device start-up is not part of a load.
fn ready_device(backend: &str) -> Result<Device> {
    let device = orfeas_engine::device::by_name(backend).map_err(anyhow::Error::msg)?;
    let started = burn::tensor::Tensor::<1>::zeros([1], &device).into_data();
    std::hint::black_box(started.as_bytes().first().copied());
    Ok(device)
}

async fn load_once(dir: &Path, device: &Device) -> Result<(WeightSet, u64)> {
    let (index, weights) = load_all(&DirSource::new(dir), device, DType::F16, |_| {}).await?;
    Ok((weights, index.total_bytes()))
}

async fn timed_load(dir: &Path, backend: &str) -> Result<f64> {
    let device = ready_device(backend)?;
    let start = Instant::now();
    let (weights, bytes) = load_once(dir, &device).await?;
    let secs = start.elapsed().as_secs_f64();
    drop(weights);
    Ok(bytes as f64 / MIB as f64 / secs)
}

/// Runs in a fresh process: prints `rss_before peak_rss device_bytes`, in bytes.
fn child_load(dir: &Path, backend: &str) -> Result<()> {
    let device = ready_device(backend)?;
    let before = status_kib("VmRSS")? * 1024;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (weights, _) = runtime.block_on(load_once(dir, &device))?;
    let peak = status_kib("VmHWM")? * 1024;
    let device_bytes: u64 = weights
        .names()
        .map(|n| weights.get(n).unwrap().numel() as u64 * 2)
        .sum();
    println!("{before} {peak} {device_bytes}");
    Ok(())
}

fn status_kib(key: &str) -> Result<u64> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    status
        .lines()
        .find_map(|l| {
            l.strip_prefix(key).and_then(|v| {
                v.trim_start_matches(':')
                    .split_whitespace()
                    .next()?
                    .parse()
                    .ok()
            })
        })
        .with_context(|| format!("{key} not in /proc/self/status"))
}
