//! ISNet benchmark: one 1024² background-removal pass on our CPU backend (flex), on wgpu, and
//! on onnxruntime (the reference runtime, through Python; benchmark only) in one run, printed
//! as ratios. Input: fixture image 0, preprocessed as the reference does.
//!
//! `cargo run -p orfeas --bin bench-isnet -- --python <python with onnxruntime>
//!  [--dist <npm dist>] [--isnet <shard set>] [--reps 2] [--wgpu-size 1024] [--wgpu-warm-up] [--no-wgpu]`

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use burn::tensor::{DType, Device, Tensor, TensorData};
use orfeas::remove_bg::{default_isnet_dir, load_isnet};
use orfeas_engine::background::{input_planes, resize_bilinear};
use orfeas_engine::models::isnet::{INPUT_SIZE, normalise};

fn best(reps: usize, mut f: impl FnMut()) -> f64 {
    (0..reps.max(1))
        .map(|_| {
            let started = Instant::now();
            f();
            started.elapsed().as_secs_f64()
        })
        .fold(f64::INFINITY, f64::min)
}

fn ours(
    dir: &std::path::Path,
    device: &Device,
    planes: &[u8],
    side: usize,
    reps: usize,
    warm_up: bool,
) -> Result<(f64, Vec<f32>)> {
    let isnet = load_isnet(dir, device, DType::F32)?;
    let input = if side == INPUT_SIZE {
        planes.to_vec()
    } else {
        planes
            .chunks_exact(INPUT_SIZE * INPUT_SIZE)
            .flat_map(|p| resize_bilinear(p, INPUT_SIZE, INPUT_SIZE, 1, side, side))
            .collect()
    };
    let mut matte = Vec::new();
    let mut run = || {
        let x = Tensor::<4>::from_data(
            TensorData::new(normalise(&input), [1, 3, side, side]),
            device,
        );
        // Reading the values waits for the device (a native read is lazy otherwise).
        matte = isnet
            .forward(x)
            .into_data()
            .convert::<f32>()
            .try_to_vec::<f32>()
            .expect("f32 probabilities");
    };
    if warm_up {
        run(); // kernel compilation and autotuning
    }
    let secs = best(reps, &mut run);
    Ok((secs, matte))
}

/// Largest difference and the IoU of the 0.5 masks: the full-size agreement of two backends
/// (CI checks wgpu against the CPU backend at a reduced size only; lavapipe takes minutes here).
fn agreement(a: &[f32], b: &[f32]) -> (f32, f32) {
    let max = a
        .iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max);
    let (both, either) = a
        .iter()
        .zip(b)
        .fold((0usize, 0usize), |(both, either), (x, y)| {
            let (x, y) = (*x > 0.5, *y > 0.5);
            (both + (x && y) as usize, either + (x || y) as usize)
        });
    (max, both as f32 / either.max(1) as f32)
}

fn main() -> Result<()> {
    let mut python = None;
    let mut dist = std::env::var_os("ORFEAS_ISNET_DIST").map(PathBuf::from);
    let mut isnet = default_isnet_dir();
    let (mut reps, mut wgpu_size, mut wgpu, mut wgpu_warm_up) = (2usize, INPUT_SIZE, true, false);
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let mut value = || args.next().context("a flag without a value");
        match flag.as_str() {
            "--python" => python = Some(value()?),
            "--dist" => dist = Some(PathBuf::from(value()?)),
            "--isnet" => isnet = PathBuf::from(value()?),
            "--reps" => reps = value()?.parse()?,
            "--wgpu-size" => wgpu_size = value()?.parse()?,
            "--no-wgpu" => wgpu = false,
            // lavapipe needs minutes per 1024² pass: one cold pass unless asked.
            "--wgpu-warm-up" => wgpu_warm_up = true,
            other => bail!("unknown flag {other}"),
        }
    }
    let fixtures =
        std::env::var("ORFEAS_FIXTURES").unwrap_or_else(|_| "../shared/fixtures/public".into());
    let png = std::fs::read(format!("{fixtures}/isnet_input_0.png")).context("fixture image 0")?;
    let planes = input_planes(&orfeas_engine::input::decode_image(&png)?);

    let (flex, flex_matte) = ours(
        &isnet,
        &orfeas_engine::device::cpu(),
        &planes,
        INPUT_SIZE,
        reps,
        true,
    )?;
    println!("ISNet {INPUT_SIZE}², best of {reps} after a warm-up");
    println!("  flex (CPU backend)  {flex:8.2} s");
    let reference = match (python, dist) {
        (Some(python), Some(dist)) => {
            let onnx = orfeas::isnet::reassemble(&dist)?;
            let dir = tempfile::tempdir()?;
            let model = dir.path().join("isnet_medium.onnx");
            std::fs::write(&model, onnx)?;
            let raw = dir.path().join("input.u8");
            std::fs::write(&raw, &planes)?;
            let script = format!(
                r#"
import time, numpy as np, onnxruntime as ort
x = ((np.fromfile(r"{raw}", dtype=np.uint8).astype(np.float32) - 128) / 256).reshape(1, 3, {n}, {n})
s = ort.InferenceSession(r"{model}", providers=["CPUExecutionProvider"])
name = s.get_inputs()[0].name
s.run(None, {{name: x}})
best = min((lambda t: (s.run(None, {{name: x}}), time.perf_counter() - t)[1])(time.perf_counter()) for _ in range({reps}))
print(best)
"#,
                raw = raw.display(),
                model = model.display(),
                n = INPUT_SIZE,
                reps = reps.max(1),
            );
            let out = std::process::Command::new(&python)
                .arg("-c")
                .arg(script)
                .output()?;
            if !out.status.success() {
                bail!("onnxruntime: {}", String::from_utf8_lossy(&out.stderr));
            }
            let secs: f64 = String::from_utf8_lossy(&out.stdout).trim().parse()?;
            println!("  onnxruntime CPU     {secs:8.2} s");
            println!("  flex / onnxruntime  {:8.2}× the time", flex / secs);
            Some(secs)
        }
        _ => {
            println!("  onnxruntime: skipped (give --python and --dist or ORFEAS_ISNET_DIST)");
            None
        }
    };
    if wgpu {
        match orfeas_engine::device::gpu() {
            Some(gpu) => {
                let (secs, matte) = ours(&isnet, &gpu, &planes, wgpu_size, 1, wgpu_warm_up)?;
                let how = if wgpu_warm_up {
                    "after a warm-up"
                } else {
                    "first pass, kernel compilation included"
                };
                println!("  wgpu at {wgpu_size}²       {secs:8.2} s ({how})");
                if wgpu_size == INPUT_SIZE {
                    let (max, iou) = agreement(&matte, &flex_matte);
                    println!(
                        "  wgpu vs flex        max abs {max:.2e}, IoU of the 0.5 masks {iou:.5}"
                    );
                    println!("  wgpu / flex         {:8.2}× the time", secs / flex);
                    if let Some(r) = reference {
                        println!("  wgpu / onnxruntime  {:8.2}× the time", secs / r);
                    }
                }
            }
            None => println!("  wgpu: no adapter"),
        }
    }
    Ok(())
}
