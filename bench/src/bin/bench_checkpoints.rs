//! Full-size checkpoints in every official layout (`orfeas synthesize`, random F16 weights),
//! through `orfeas convert` and onto a device: per variant the bytes a user downloads, the time
//! to write, convert (with the converter's peak RSS, polled from /proc) and load, and the
//! weights on the device. Real layouts at real sizes, so what the tests check at reduced size
//! is shown to hold at full size.
//!
//! With `--quant q8,q4` each variant is also converted straight from its checkpoint at those
//! precisions (`orfeas convert --quant`) and loaded the same way, side by side with the f16
//! sets: `ratio=` lines for the download (sets on disk), the weights on the device and the load
//! time against f16's.
//!
//! `--backend wgpu` loads onto the GPU instead (in f16 where it has `shader-f16`) and also
//! reads what its memory pool holds once the model is built: `ratio=` held ÷ the sets' bytes
//! (the weights stay as stored there, quantized ones packed).
//!
//! `cargo run -p orfeas --bin bench-checkpoints -- [--variants 2.1,2.0,2mini-turbo]
//! [--format ckpt|safetensors] [--dir DIR] [--no-load] [--quant q8,q4] [--backend cpu|wgpu]`

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use burn::tensor::DType;
use clap::ValueEnum;
use orfeas::synthetic::{Format, Variant};
use orfeas_engine::pipeline::{COMPONENTS, ShapeModel, load_shape_parts};
use orfeas_engine::weights::source::DirSource;
use orfeas_engine::weights::{Precision, WeightSet};

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
    let mut quant: Vec<Precision> = Vec::new();
    let mut backend = "cpu".to_string();
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
            "--quant" => {
                let list = args.next().context("--quant needs a list (q8,q4)")?;
                quant = list
                    .split(',')
                    .map(|p| p.parse::<Precision>().map_err(anyhow::Error::msg))
                    .collect::<Result<_>>()?;
            }
            "--backend" => backend = args.next().context("--backend needs cpu or wgpu")?,
            other => bail!("unknown argument {other}"),
        }
    }
    let work = tempfile::Builder::new()
        .prefix("orfeas-bench-checkpoints")
        .tempdir_in(root.unwrap_or_else(std::env::temp_dir))?;
    let orfeas = std::env::current_exe()?.with_file_name("orfeas");
    let device = orfeas_engine::device::by_name(&backend).map_err(anyhow::Error::msg)?;
    let device = load.then_some(&device);
    println!(
        "| variant | checkpoint | write s | convert s | convert GB/s | convert peak RSS | sets | load ({backend}) s | weights on the device |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    for variant in variants {
        let source = work.path().join(format!("{}-src", variant.name()));
        let started = Instant::now();
        let (checkpoint, entries) =
            orfeas::synthetic::write(variant, false, format, &source, 1, |_, _| {})?;
        let written = started.elapsed();
        let file_bytes = std::fs::metadata(&checkpoint)?.len();
        let (_, used) = orfeas::synthetic::sizes(&entries);
        let mut f16: Option<Converted> = None;
        for precision in std::iter::once(Precision::F16).chain(quant.iter().copied()) {
            let out = work.path().join(format!("{}-{precision}", variant.name()));
            let converted =
                convert_and_load(&orfeas, &checkpoint, &source, &out, precision, device)?;
            std::fs::remove_dir_all(&out)?;
            let load_cell = converted
                .load
                .map_or("not run".into(), |(seconds, _)| format!("{seconds:.1}"));
            let device_cell = match converted.load {
                Some((_, bytes)) => match converted.held {
                    Some(held) => format!(
                        "{:.2} GB (the pool holds {:.2} GB)",
                        bytes as f64 / GB,
                        held as f64 / GB
                    ),
                    None => format!("{:.2} GB", bytes as f64 / GB),
                },
                None if precision == Precision::F16 => format!("{:.2} GB in f16", used as f64 / GB),
                None => "not run".into(),
            };
            println!(
                "| {} {precision} | {:.2} GB ({format:?}) | {:.1} | {:.1} | {:.2} | {:.0} MiB | {:.2} GB | {load_cell} | {device_cell} |",
                variant.name(),
                file_bytes as f64 / GB,
                written.as_secs_f64(),
                converted.took.as_secs_f64(),
                file_bytes as f64 / GB / converted.took.as_secs_f64(),
                converted.peak as f64 / MIB,
                converted.sets as f64 / GB,
            );
            if let Some(held) = converted.held {
                println!(
                    "ratio={:.3} held after loading ÷ sets {} {precision} ({:.3} ÷ {:.3} GB)",
                    held as f64 / converted.sets as f64,
                    variant.name(),
                    held as f64 / GB,
                    converted.sets as f64 / GB
                );
            }
            match &f16 {
                None => f16 = Some(converted),
                Some(base) => {
                    let name = format!("{} {precision}÷f16", variant.name());
                    println!(
                        "ratio={:.3} download {name} ({:.2} ÷ {:.2} GB)",
                        converted.sets as f64 / base.sets as f64,
                        converted.sets as f64 / GB,
                        base.sets as f64 / GB
                    );
                    if let (Some((q_s, q_b)), Some((f_s, f_b))) = (converted.load, base.load) {
                        println!(
                            "ratio={:.3} device weights {name} ({:.2} ÷ {:.2} GB)",
                            q_b as f64 / f_b as f64,
                            q_b as f64 / GB,
                            f_b as f64 / GB
                        );
                        println!(
                            "ratio={:.3} load time {name} ({q_s:.1} ÷ {f_s:.1} s)",
                            q_s / f_s
                        );
                    }
                }
            }
        }
        std::fs::remove_dir_all(&source)?;
    }
    Ok(())
}

/// One precision's sets converted from the checkpoint, and (when asked) loaded.
struct Converted {
    took: Duration,
    peak: u64,
    sets: u64,
    /// Seconds to load onto the device, and the weights' device bytes.
    load: Option<(f64, u64)>,
    /// What the device's memory pool holds once the model is built (GPU only).
    held: Option<u64>,
}

fn convert_and_load(
    orfeas: &Path,
    checkpoint: &Path,
    source: &Path,
    out: &Path,
    precision: Precision,
    load: Option<&burn::tensor::Device>,
) -> Result<Converted> {
    let (took, peak, text) = run_measured(
        Command::new(orfeas)
            .arg("convert")
            .arg(checkpoint)
            .arg("--config")
            .arg(source.join("config.yaml"))
            .arg("--quant")
            .arg(precision.name())
            .arg("-o")
            .arg(out),
    )?;
    eprintln!("{}", text.trim());
    let sets = dir_bytes(out);
    let mut held = None;
    let load = if let Some(device) = load {
        // The sets' device bytes are counted before the networks take them.
        let dtype = if device.supports_dtype(DType::F16) {
            DType::F16
        } else {
            DType::F32
        };
        let started = Instant::now();
        let sources = COMPONENTS.map(|c| DirSource::new(out.join(c)));
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let (config, sets) = runtime
            .block_on(load_shape_parts(
                [&sources[0], &sources[1], &sources[2]],
                device,
                dtype,
                |_, _| {},
            ))
            .map_err(anyhow::Error::msg)?;
        let bytes = sets.iter().map(WeightSet::device_bytes).sum();
        let [conditioner, denoiser, vae] = sets;
        let model = ShapeModel::new(&config, conditioner, denoiser, vae, device)
            .map_err(anyhow::Error::msg)?;
        let seconds = started.elapsed().as_secs_f64();
        if !orfeas_engine::device::is_cpu(device) {
            device.memory_cleanup();
            held = device.memory_pool_usage().map(|u| u.bytes_in_use);
        }
        drop(model);
        device.memory_cleanup();
        Some((seconds, bytes))
    } else {
        None
    };
    Ok(Converted {
        took,
        peak,
        sets,
        load,
        held,
    })
}
