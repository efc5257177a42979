//! Background removal around ISNet, with the pre- and post-processing of the reference runtime
//! (@imgly/background-removal 1.4.5): the image is stretched to 1024² with its bilinear filter
//! (no half-pixel offset, rounded half up), normalised `(v − 128) / 256`; the probabilities
//! become an 8-bit matte (truncated), stretched back to the image's size with the same filter,
//! and used as the cut-out's alpha.
//!
//! [`Options`] can shrink the network's input (slow GPUs; the network is fully convolutional)
//! or letterbox the image (aspect kept, padded with mid-grey, which normalises to zero)
//! instead of stretching it.

use burn::tensor::{DType, Device, Tensor, TensorData};
use image::RgbaImage;
use thiserror::Error;

use crate::device::ReadbackError;
use crate::models::isnet::{INPUT_SIZE, IsNet, StagedError, normalise};

/// The reference's `tensorResizeBilinear` on interleaved `channels`-channel u8 pixels.
pub fn resize_bilinear(
    src: &[u8],
    width: usize,
    height: usize,
    channels: usize,
    out_width: usize,
    out_height: usize,
) -> Vec<u8> {
    let (sx_scale, sy_scale) = (
        width as f64 / out_width as f64,
        height as f64 / out_height as f64,
    );
    let mut out = vec![0u8; out_width * out_height * channels];
    for y in 0..out_height {
        let sy = y as f64 * sy_scale;
        let (y1, y2) = (sy.floor() as usize, (sy.ceil() as usize).min(height - 1));
        let dy = sy - y1 as f64;
        for x in 0..out_width {
            let sx = x as f64 * sx_scale;
            let (x1, x2) = (sx.floor() as usize, (sx.ceil() as usize).min(width - 1));
            let dx = sx - x1 as f64;
            for c in 0..channels {
                let p = |yy: usize, xx: usize| src[(yy * width + xx) * channels + c] as f64;
                let v = (1.0 - dx) * (1.0 - dy) * p(y1, x1)
                    + dx * (1.0 - dy) * p(y1, x2)
                    + (1.0 - dx) * dy * p(y2, x1)
                    + dx * dy * p(y2, x2);
                out[(y * out_width + x) * channels + c] = (v + 0.5).floor().clamp(0.0, 255.0) as u8;
            }
        }
    }
    out
}

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum BackgroundError {
    /// The GPU did not hand the matte back (e.g. the device was lost meanwhile).
    #[error(transparent)]
    Readback(#[from] ReadbackError),
    /// The caller's progress callback asked to stop.
    #[error("background removal stopped before it finished")]
    Stopped,
}

/// How the image is fed to the network.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Options {
    /// Side of the square input (the reference: 1024).
    pub size: usize,
    /// Keep the aspect ratio (pad) rather than stretch as the reference does.
    pub letterbox: bool,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            size: INPUT_SIZE,
            letterbox: false,
        }
    }
}

/// Where the image sits in the square input: `(x, y, width, height)`.
pub fn placement(width: usize, height: usize, options: &Options) -> (usize, usize, usize, usize) {
    let size = options.size;
    if !options.letterbox {
        return (0, 0, size, size);
    }
    let scale = size as f64 / width.max(height) as f64;
    let w = ((width as f64 * scale).round() as usize).clamp(1, size);
    let h = ((height as f64 * scale).round() as usize).clamp(1, size);
    ((size - w) / 2, (size - h) / 2, w, h)
}

/// The model's input planes (R, G, B; u8) for an image, at the reference's 1024² stretch.
pub fn input_planes(rgba: &RgbaImage) -> Vec<u8> {
    input_planes_with(rgba, &Options::default())
}

/// The model's input planes (R, G, B; u8, `size²` each) as `options` place the image.
pub fn input_planes_with(rgba: &RgbaImage, options: &Options) -> Vec<u8> {
    let (w, h) = (rgba.width() as usize, rgba.height() as usize);
    let (x0, y0, pw, ph) = placement(w, h, options);
    let resized = resize_bilinear(rgba.as_raw(), w, h, 4, pw, ph);
    let size = options.size;
    let n = size * size;
    let mut planes = vec![128u8; 3 * n];
    for (p, px) in resized.chunks_exact(4).enumerate() {
        let at = (y0 + p / pw) * size + x0 + p % pw;
        for c in 0..3 {
            planes[c * n + at] = px[c];
        }
    }
    planes
}

/// The matte at the image's size from the model's 1024² probabilities (the reference's).
pub fn matte(probabilities: &[f32], width: usize, height: usize) -> Vec<u8> {
    matte_with(probabilities, width, height, &Options::default())
}

/// The matte at the image's size from the model's `size²` probabilities.
pub fn matte_with(
    probabilities: &[f32],
    width: usize,
    height: usize,
    options: &Options,
) -> Vec<u8> {
    let size = options.size;
    let (x0, y0, pw, ph) = placement(width, height, options);
    let mut alpha = Vec::with_capacity(pw * ph);
    for y in y0..y0 + ph {
        alpha.extend(
            probabilities[y * size + x0..][..pw]
                .iter()
                .map(|p| (p * 255.0).clamp(0.0, 255.0) as u8),
        );
    }
    resize_bilinear(&alpha, pw, ph, 1, width, height)
}

/// Whether an image already carries a real cut-out (some pixel not opaque), in which case the
/// reference skips background removal.
pub fn has_alpha(rgba: &RgbaImage) -> bool {
    rgba.pixels().any(|p| p[3] < 255)
}

/// The image with `matte` as its alpha.
pub fn cutout(rgba: &RgbaImage, matte: &[u8]) -> RgbaImage {
    let mut out = rgba.clone();
    for (px, &a) in out.pixels_mut().zip(matte) {
        px[3] = a;
    }
    out
}

/// Run ISNet on `rgba` and return its matte (the model's probabilities are read back async,
/// so this works in the browser too).
pub async fn matte_of(
    model: &IsNet,
    rgba: &RgbaImage,
    device: &Device,
    options: &Options,
) -> Result<Vec<u8>, BackgroundError> {
    matte_reporting(model, rgba, device, options, None).await
}

/// [`matte_of`], calling `on_progress(fraction)` as each ISNet stage finishes on the device,
/// with the fraction of the network's work done so far ([`IsNet::stage_shares`]); its answer
/// false stops the pass there ([`BackgroundError::Stopped`]), e.g. a warm-up a picture
/// overtook, or a cut-out of a picture replaced meanwhile.
pub async fn matte_reporting(
    model: &IsNet,
    rgba: &RgbaImage,
    device: &Device,
    options: &Options,
    on_progress: Option<&mut dyn FnMut(f64) -> bool>,
) -> Result<Vec<u8>, BackgroundError> {
    let size = options.size;
    let planes = normalise(&input_planes_with(rgba, options));
    let x = Tensor::<4>::from_data(
        TensorData::new(planes, [1, 3, size, size]),
        (device, DType::F32),
    );
    let probabilities = match on_progress {
        Some(report) => {
            let shares = model.stage_shares(size);
            let mut on_stage = |done: usize| report(shares[..done].iter().sum());
            model.forward_staged(x, Some(&mut on_stage)).await
        }
        None => Ok(model.forward(x)),
    }
    .map_err(|e| match e {
        StagedError::Stopped => BackgroundError::Stopped,
        StagedError::Readback(e) => BackgroundError::Readback(e),
    })?
    .into_data_async()
    .await
    .map_err(|e| ReadbackError::of("the matte", e))?
    .convert::<f32>()
    .try_into_vec::<f32>()
    .map_err(|e| ReadbackError::of("the matte as f32", e))?;
    Ok(matte_with(
        &probabilities,
        rgba.width() as usize,
        rgba.height() as usize,
        options,
    ))
}

/// The cut-out of `rgba`: ISNet's matte as its alpha.
pub async fn remove_background(
    model: &IsNet,
    rgba: &RgbaImage,
    device: &Device,
    options: &Options,
) -> Result<RgbaImage, BackgroundError> {
    Ok(cutout(rgba, &matte_of(model, rgba, device, options).await?))
}

/// [`remove_background`] with progress (see [`matte_reporting`]).
pub async fn remove_background_reporting(
    model: &IsNet,
    rgba: &RgbaImage,
    device: &Device,
    options: &Options,
    on_progress: &mut dyn FnMut(f64) -> bool,
) -> Result<RgbaImage, BackgroundError> {
    let matte = matte_reporting(model, rgba, device, options, Some(on_progress)).await?;
    Ok(cutout(rgba, &matte))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn letterboxing_keeps_the_aspect_and_centres_the_image() {
        let options = Options {
            size: 100,
            letterbox: true,
        };
        assert_eq!(placement(640, 480, &options), (0, 12, 100, 75));
        assert_eq!(placement(400, 600, &options), (16, 0, 67, 100));
        let stretched = Options {
            size: 100,
            letterbox: false,
        };
        assert_eq!(placement(640, 480, &stretched), (0, 0, 100, 100));
    }

    #[test]
    fn letterboxed_planes_are_padded_grey_and_the_matte_comes_back_from_the_box() {
        let options = Options {
            size: 8,
            letterbox: true,
        };
        let image = RgbaImage::from_pixel(8, 4, image::Rgba([10, 20, 30, 255]));
        let planes = input_planes_with(&image, &options);
        // Rows 0–1 and 6–7 are padding, 2–5 the image.
        assert_eq!(planes[0], 128);
        assert_eq!(planes[2 * 8], 10);
        assert_eq!(planes[64 + 2 * 8], 20);
        assert_eq!(planes[7 * 8 + 7], 128);
        // Probabilities 1 inside the box and 0 on the padding give an opaque matte.
        let probabilities: Vec<f32> = (0..64)
            .map(|i| if (2..6).contains(&(i / 8)) { 1.0 } else { 0.0 })
            .collect();
        let matte = matte_with(&probabilities, 8, 4, &options);
        assert!(matte.iter().all(|&a| a == 255), "{matte:?}");
    }
}

#[cfg(test)]
mod progress_tests {
    use super::*;

    /// The staged forward is the forward, and reports every stage once, in order, with
    /// fractions that grow to exactly 1.
    #[test]
    fn progress_follows_the_stages_and_changes_nothing() {
        let device = crate::device::cpu();
        let model = IsNet::init(&device);
        let rgba = RgbaImage::from_fn(40, 30, |x, y| {
            image::Rgba([(x * 6) as u8, (y * 8) as u8, 90, 255])
        });
        let options = Options {
            size: 64,
            letterbox: false,
        };
        let plain =
            futures::executor::block_on(matte_of(&model, &rgba, &device, &options)).unwrap();
        let mut seen = Vec::new();
        let mut on_progress = |f: f64| {
            seen.push(f);
            true
        };
        let reported = futures::executor::block_on(matte_reporting(
            &model,
            &rgba,
            &device,
            &options,
            Some(&mut on_progress),
        ))
        .unwrap();
        assert_eq!(plain, reported);
        assert_eq!(seen.len(), crate::models::isnet::STAGES, "{seen:?}");
        assert!(seen.windows(2).all(|w| w[0] < w[1]), "{seen:?}");
        assert!((seen.last().unwrap() - 1.0).abs() < 1e-9, "{seen:?}");
        // The full-resolution first stage is a large share; the deepest (1/64 side) small.
        let shares = model.stage_shares(1024);
        assert!(shares[0] > 0.1 && shares[5] < 0.02, "{shares:?}");
    }

    /// A pass whose callback says stop ends there, with `Stopped`, and reports no further.
    #[test]
    fn a_pass_stops_where_its_caller_says() {
        let device = crate::device::cpu();
        let model = IsNet::init(&device);
        let rgba = RgbaImage::from_pixel(32, 32, image::Rgba([200, 10, 10, 255]));
        let options = Options {
            size: 64,
            letterbox: false,
        };
        let mut seen = 0;
        let mut on_progress = |_: f64| {
            seen += 1;
            seen < 2
        };
        let stopped = futures::executor::block_on(matte_reporting(
            &model,
            &rgba,
            &device,
            &options,
            Some(&mut on_progress),
        ));
        assert!(
            matches!(stopped, Err(BackgroundError::Stopped)),
            "{stopped:?}"
        );
        assert_eq!(seen, 2, "no stage is reported after the stop");
    }
}
