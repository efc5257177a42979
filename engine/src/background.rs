//! Background removal around ISNet, with the pre- and post-processing of the reference runtime
//! (@imgly/background-removal 1.4.5): the image is stretched to 1024² with its bilinear filter
//! (no half-pixel offset, rounded half up), normalised `(v − 128) / 256`; the probabilities
//! become an 8-bit matte (truncated), stretched back to the image's size with the same filter,
//! and used as the cut-out's alpha.

use burn::tensor::{Device, Tensor, TensorData};
use image::RgbaImage;

use crate::models::isnet::{INPUT_SIZE, IsNet, normalise};

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

/// The model's input planes (R, G, B; u8) for an image: stretched to 1024², aspect ignored.
pub fn input_planes(rgba: &RgbaImage) -> Vec<u8> {
    let (w, h) = (rgba.width() as usize, rgba.height() as usize);
    let resized = resize_bilinear(rgba.as_raw(), w, h, 4, INPUT_SIZE, INPUT_SIZE);
    let n = INPUT_SIZE * INPUT_SIZE;
    let mut planes = vec![0u8; 3 * n];
    for (p, px) in resized.chunks_exact(4).enumerate() {
        for c in 0..3 {
            planes[c * n + p] = px[c];
        }
    }
    planes
}

/// The matte at the image's size from the model's 1024² probabilities.
pub fn matte(probabilities: &[f32], width: usize, height: usize) -> Vec<u8> {
    let alpha: Vec<u8> = probabilities
        .iter()
        .map(|p| (p * 255.0).clamp(0.0, 255.0) as u8)
        .collect();
    resize_bilinear(&alpha, INPUT_SIZE, INPUT_SIZE, 1, width, height)
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

/// Run ISNet on `rgba` and return the cut-out (the model's probabilities read back async,
/// so this works in the browser too).
pub async fn remove_background(model: &IsNet, rgba: &RgbaImage, device: &Device) -> RgbaImage {
    let planes = normalise(&input_planes(rgba));
    let x = Tensor::<4>::from_data(
        TensorData::new(planes, [1, 3, INPUT_SIZE, INPUT_SIZE]),
        device,
    );
    let probabilities = model
        .forward(x)
        .into_data_async()
        .await
        .expect("read the matte back")
        .convert::<f32>()
        .try_into_vec::<f32>()
        .expect("f32 probabilities");
    let matte = matte(
        &probabilities,
        rgba.width() as usize,
        rgba.height() as usize,
    );
    cutout(rgba, &matte)
}
