//! Does letterboxing (aspect kept, grey padding) give a better ISNet mask than the reference's
//! stretch to 1024²? Measured on the fixture images, whose ground truth is known: the drawn
//! shapes are flat colours, the backgrounds carry noise. A pixel whose 3 × 3 neighbourhood is
//! one colour is object; a pixel farther than `BAND` from any such pixel is background; the
//! anti-aliased band between them is not scored. Runs on the CPU backend.
//!
//! `cargo run -p orfeas --bin bench-letterbox -- [--isnet <shard set>] [--size 1024]
//!  [--save <dir>]` (`--save` writes each matte as a PNG)
//!
//! `--sizes 512,256,224` instead compares smaller inputs with the reference's 1024² (what the
//! web app does by itself on a software adapter): per image and size, the IoU of the mask with
//! the full-size mask and with the drawn shapes, and the time of one pass, side by side.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use burn::tensor::DType;
use image::RgbaImage;
use orfeas::remove_bg::{default_isnet_dir, load_isnet};
use orfeas_engine::background::{Options, matte_of};
use orfeas_engine::models::isnet::INPUT_SIZE;

/// Pixels this close to the object (Chebyshev distance) are its anti-aliased edge: unscored.
const BAND: usize = 2;

/// `Some(true)` object, `Some(false)` background, `None` unscored.
fn ground_truth(rgba: &RgbaImage) -> Vec<Option<bool>> {
    let (w, h) = (rgba.width() as usize, rgba.height() as usize);
    let px = |x: usize, y: usize| rgba.get_pixel(x as u32, y as u32).0;
    let mut flat = vec![false; w * h];
    for y in 1..h - 1 {
        for x in 1..w - 1 {
            let centre = px(x, y);
            flat[y * w + x] =
                (y - 1..=y + 1).all(|yy| (x - 1..=x + 1).all(|xx| px(xx, yy) == centre));
        }
    }
    (0..w * h)
        .map(|i| {
            let (x, y) = (i % w, i / w);
            if flat[i] {
                return Some(true);
            }
            let near = (y.saturating_sub(BAND)..(y + BAND + 1).min(h)).any(|yy| {
                (x.saturating_sub(BAND)..(x + BAND + 1).min(w)).any(|xx| flat[yy * w + xx])
            });
            (!near).then_some(false)
        })
        .collect()
}

/// (IoU of the alpha ≥ 128 mask with the object, wrongly classified scored pixels, mean
/// |alpha − truth| in levels over scored pixels).
fn score(matte: &[u8], truth: &[Option<bool>]) -> (f64, usize, f64) {
    let (mut both, mut either, mut wrong, mut error, mut scored) =
        (0usize, 0usize, 0usize, 0f64, 0usize);
    for (&a, t) in matte.iter().zip(truth) {
        let Some(object) = *t else { continue };
        let ours = a >= 128;
        both += (ours && object) as usize;
        either += (ours || object) as usize;
        wrong += (ours != object) as usize;
        error += (a as f64 - if object { 255.0 } else { 0.0 }).abs();
        scored += 1;
    }
    (
        both as f64 / either.max(1) as f64,
        wrong,
        error / scored.max(1) as f64,
    )
}

fn main() -> Result<()> {
    let mut isnet = default_isnet_dir();
    let mut size = INPUT_SIZE;
    let mut save: Option<PathBuf> = None;
    let mut sizes: Option<Vec<usize>> = None;
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let mut value = || args.next().context("a flag without a value");
        match flag.as_str() {
            "--isnet" => isnet = PathBuf::from(value()?),
            "--size" => size = value()?.parse()?,
            "--save" => save = Some(PathBuf::from(value()?)),
            "--sizes" => {
                sizes = Some(
                    value()?
                        .split(',')
                        .map(|s| s.trim().parse())
                        .collect::<Result<_, _>>()?,
                )
            }
            other => bail!("unknown flag {other}"),
        }
    }
    let fixtures =
        std::env::var("ORFEAS_FIXTURES").unwrap_or_else(|_| "../shared/fixtures/public".into());
    let device = orfeas_engine::device::cpu();
    let model = load_isnet(&isnet, &device, DType::F32)?;
    let runtime = tokio::runtime::Builder::new_current_thread().build()?;
    if let Some(sizes) = sizes {
        return compare_sizes(&model, &device, &runtime, &fixtures, &sizes);
    }
    println!(
        "ISNet at {size}², CPU backend: stretch (the reference) vs letterbox, against the drawn shapes"
    );
    println!(
        "{:<22} {:>10} {:>10} {:>14} {:>10}",
        "image", "fit", "IoU", "wrong pixels", "mean |Δα|"
    );
    for i in 0..2 {
        let name = format!("isnet_input_{i}.png");
        let rgba =
            orfeas_engine::input::decode_image(&std::fs::read(format!("{fixtures}/{name}"))?)?;
        let truth = ground_truth(&rgba);
        let scored = truth.iter().filter(|t| t.is_some()).count();
        let mut results = Vec::new();
        for letterbox in [false, true] {
            let options = Options { size, letterbox };
            let matte = runtime.block_on(matte_of(&model, &rgba, &device, &options))?;
            let (iou, wrong, error) = score(&matte, &truth);
            let fit = if letterbox { "letterbox" } else { "stretch" };
            if let Some(dir) = &save {
                std::fs::create_dir_all(dir)?;
                image::GrayImage::from_raw(rgba.width(), rgba.height(), matte.clone())
                    .context("matte size")?
                    .save(dir.join(format!("matte_{i}_{fit}_{size}.png")))?;
            }
            println!("{name:<22} {fit:>10} {iou:>10.5} {wrong:>14} {error:>10.2}");
            results.push((iou, wrong));
        }
        let (stretch, letterbox) = (results[0], results[1]);
        println!(
            "{:<22} letterbox − stretch: IoU {:+.5}, wrong pixels {:+} (of {scored} scored, {}×{})",
            "",
            letterbox.0 - stretch.0,
            letterbox.1 as i64 - stretch.1 as i64,
            rgba.width(),
            rgba.height(),
        );
    }
    Ok(())
}

/// Smaller inputs against the reference's 1024², on the fixture images (see the module doc).
fn compare_sizes(
    model: &orfeas_engine::models::isnet::IsNet,
    device: &burn::tensor::Device,
    runtime: &tokio::runtime::Runtime,
    fixtures: &str,
    sizes: &[usize],
) -> Result<()> {
    println!("ISNet, CPU backend, stretched: smaller inputs against {INPUT_SIZE}²");
    println!(
        "{:<22} {:>6} {:>16} {:>14} {:>9} {:>8}",
        "image", "size", "IoU vs 1024²", "IoU vs shapes", "seconds", "ratio"
    );
    for i in 0..2 {
        let name = format!("isnet_input_{i}.png");
        let rgba =
            orfeas_engine::input::decode_image(&std::fs::read(format!("{fixtures}/{name}"))?)?;
        let truth = ground_truth(&rgba);
        let run = |size: usize| -> Result<(Vec<u8>, f64)> {
            let options = Options {
                size,
                letterbox: false,
            };
            let started = std::time::Instant::now();
            let matte = runtime.block_on(matte_of(model, &rgba, device, &options))?;
            Ok((matte, started.elapsed().as_secs_f64()))
        };
        let (full, full_s) = run(INPUT_SIZE)?;
        // The full size's mask, every pixel scored, as the "truth" a smaller size is held to.
        let reference: Vec<Option<bool>> = full.iter().map(|&a| Some(a >= 128)).collect();
        for &size in std::iter::once(&INPUT_SIZE).chain(sizes) {
            let (matte, seconds) = if size == INPUT_SIZE {
                (full.clone(), full_s)
            } else {
                run(size)?
            };
            let (full_iou, _, _) = score(&matte, &reference);
            let (truth_iou, _, _) = score(&matte, &truth);
            println!(
                "{name:<22} {size:>6} {full_iou:>16.5} {truth_iou:>14.5} {seconds:>9.2} ratio={:.3}",
                seconds / full_s
            );
        }
    }
    Ok(())
}
