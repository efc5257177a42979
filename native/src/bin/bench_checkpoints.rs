//! Full-size checkpoints in every official layout (`orfeas synthesize`, random F16 weights),
//! through `orfeas convert` and onto a device: per variant the bytes a user downloads, the time
//! to write, convert (with the converter's peak RSS, polled from /proc) and load, and the
//! weights on the device. Real layouts at real sizes, so what the tests check at reduced size
//! is shown to hold at full size.
//!
//! `cargo run -p orfeas --bin bench-checkpoints -- [--variants 2.1,2.0,2mini-turbo]
//! [--format ckpt|safetensors] [--dir DIR] [--no-load]`

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use burn::tensor::DType;
use clap::ValueEnum;
use orfeas::synthetic::{Format, Variant};
use orfeas_engine::pipeline::{COMPONENTS, load_shape_model};
use orfeas_engine::weights::source::DirSource;

const GB: f64 = 1e9;
const MIB: f64 = (1 << 20) as f64;

/// Run `command`, polling its peak resident memory (VmHWM) until it exits.
fn run_measured(command: &mut Command) -> Result<(Duration, u64, String)> {
    let started = Instant::now();
    let child = command
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    let pid = child.id();
    let status_path = format!("/proc/{pid}/status");
    let mut peak = 0u64;
    let output = std::thread::scope(|scope| {
        let waiter = scope.spawn(move || child.wait_with_output());
        while !waiter.is_finished() {
            if let Ok(text) = std::fs::read_to_string(&status_path)
                && let Some(line) = text.lines().find(|l| l.starts_with("VmHWM:"))
                && let Some(kib) = line
                    .split_whitespace()
                    .nth(1)
                    .and_then(|v| v.parse::<u64>().ok())
            {
                peak = peak.max(kib * 1024);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        waiter.join().expect("the waiter")
    })?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    if !output.status.success() {
        bail!("{:?} failed: {text}", command);
    }
    Ok((started.elapsed(), peak, text))
}

fn dir_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok())
                .map(|e| {
                    let path = e.path();
                    if path.is_dir() {
                        dir_bytes(&path)
                    } else {
                        e.metadata().map_or(0, |m| m.len())
                    }
                })
                .sum()
        })
        .unwrap_or(0)
}

fn main() -> Result<()> {
    let mut variants = vec![Variant::V21, Variant::V20, Variant::MiniTurbo];
    let mut format = Format::Ckpt;
    let mut root: Option<PathBuf> = None;
    let mut load = true;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--variants" => {
                let list = args.next().context("--variants needs a list")?;
                variants = list
                    .split(',')
                    .map(|v| Variant::from_str(v, true).map_err(anyhow::Error::msg))
                    .collect::<Result<_>>()?;
            }
            "--format" => {
                let value = args.next().context("--format needs a value")?;
                format = Format::from_str(&value, true).map_err(anyhow::Error::msg)?;
            }
            "--dir" => root = Some(args.next().context("--dir needs a folder")?.into()),
            "--no-load" => load = false,
            other => bail!("unknown argument {other}"),
        }
    }
    let work = tempfile::Builder::new()
        .prefix("orfeas-bench-checkpoints")
        .tempdir_in(root.unwrap_or_else(std::env::temp_dir))?;
    let orfeas = std::env::current_exe()?.with_file_name("orfeas");
    println!(
        "| variant | checkpoint | write s | convert s | convert GB/s | convert peak RSS | sets | load f16 (CPU backend) s | weights on the device |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    for variant in variants {
        let source = work.path().join(format!("{}-src", variant.name()));
        let started = Instant::now();
        let (checkpoint, entries) =
            orfeas::synthetic::write(variant, false, format, &source, 1, |_, _| {})?;
        let written = started.elapsed();
        let file_bytes = std::fs::metadata(&checkpoint)?.len();
        let out = work.path().join(variant.name());
        let (took, peak, text) = run_measured(
            Command::new(&orfeas)
                .arg("convert")
                .arg(&checkpoint)
                .arg("--config")
                .arg(source.join("config.yaml"))
                .arg("-o")
                .arg(&out),
        )?;
        std::fs::remove_dir_all(&source)?;
        let (_, used) = orfeas::synthetic::sizes(&entries);
        let sets = dir_bytes(&out);
        let load_cell = if load {
            let started = Instant::now();
            let device = orfeas_engine::device::cpu();
            let sources = COMPONENTS.map(|c| DirSource::new(out.join(c)));
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let model = runtime
                .block_on(load_shape_model(
                    [&sources[0], &sources[1], &sources[2]],
                    &device,
                    DType::F16,
                    |_, _| {},
                ))
                .map_err(anyhow::Error::msg)?;
            let seconds = started.elapsed().as_secs_f64();
            drop(model);
            format!("{seconds:.1}")
        } else {
            "not run".into()
        };
        eprintln!("{}", text.trim());
        println!(
            "| {} | {:.2} GB ({format:?}) | {:.1} | {:.1} | {:.2} | {:.0} MiB | {:.2} GB | {load_cell} | {:.2} GB in f16 |",
            variant.name(),
            file_bytes as f64 / GB,
            written.as_secs_f64(),
            took.as_secs_f64(),
            file_bytes as f64 / GB / took.as_secs_f64(),
            peak as f64 / MIB,
            sets as f64 / GB,
            used as f64 / GB,
        );
        std::fs::remove_dir_all(&out)?;
    }
    Ok(())
}
