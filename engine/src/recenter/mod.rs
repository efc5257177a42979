//! The shape model's input, as the official `ImageProcessorV2(size 512, border 0.15)` makes
//! it from an RGBA cut-out: crop to the alpha's bounding box (end exclusive, as the reference
//! slices), scale it to 85 % of a square canvas with area averaging, composite on white
//! (non-premultiplied alpha), resize to 512² with a cubic filter, map to [-1, 1].
//!
//! The resampling is OpenCV's own arithmetic ([`opencv`]) and the composite follows numpy's
//! `f32` promotion, so the output is bit-identical to the reference's.

pub mod opencv;

use image::RgbaImage;
use thiserror::Error;

use opencv::{Image8, resize_area, resize_cubic, resize_nearest};

pub const SIZE: usize = 512;
pub const BORDER_RATIO: f64 = 0.15;

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum RecenterError {
    #[error("the image has no visible object (its alpha is zero, or one pixel thin)")]
    NoObject,
}

/// The pre-processed image: `[3, size, size]` RGB in [-1, 1], channel-major, and the mask.
pub struct ShapeInput {
    pub size: usize,
    pub image: Vec<f32>,
    pub mask: Vec<u8>,
}

/// `ImageProcessorV2` on `rgba` (an image without transparency counts as all object), with
/// the official border.
pub fn shape_input(rgba: &RgbaImage, size: usize) -> Result<ShapeInput, RecenterError> {
    shape_input_with(rgba, size, BORDER_RATIO)
}

/// `ImageProcessorV2(size, border_ratio)` on `rgba`.
pub fn shape_input_with(
    rgba: &RgbaImage,
    size: usize,
    border_ratio: f64,
) -> Result<ShapeInput, RecenterError> {
    let (rgb, mask) = recenter(rgba, border_ratio)?;
    let rgb = resize_cubic(&rgb, size, size).data;
    let mask = resize_nearest(&mask, size, size).data;
    let mut image = vec![0f32; 3 * size * size];
    for (p, px) in rgb.chunks_exact(3).enumerate() {
        for c in 0..3 {
            image[c * size * size + p] = px[c] as f32 / 255.0 * 2.0 - 1.0;
        }
    }
    Ok(ShapeInput { size, image, mask })
}

/// The reference's `recenter`: RGB composited on white and the mask, both `side × side`
/// with `side` the image's longer side.
pub fn recenter(rgba: &RgbaImage, border_ratio: f64) -> Result<(Image8, Image8), RecenterError> {
    let (w, h) = (rgba.width() as usize, rgba.height() as usize);
    let side = w.max(h);
    let (mut y0, mut y1, mut x0, mut x1) = (usize::MAX, 0, usize::MAX, 0);
    for (x, y, px) in rgba.enumerate_pixels() {
        if px[3] != 0 {
            let (x, y) = (x as usize, y as usize);
            y0 = y0.min(y);
            y1 = y1.max(y);
            x0 = x0.min(x);
            x1 = x1.max(x);
        }
    }
    // The reference crops [min, max): the last row and column are dropped.
    if y0 == usize::MAX || y1 <= y0 || x1 <= x0 {
        return Err(RecenterError::NoObject);
    }
    let (ch, cw) = (y1 - y0, x1 - x0);
    let desired = (side as f64 * (1.0 - border_ratio)) as usize;
    let scale = desired as f64 / ch.max(cw) as f64;
    let (h2, w2) = (
        ((ch as f64 * scale) as usize).max(1),
        ((cw as f64 * scale) as usize).max(1),
    );
    let mut crop = Vec::with_capacity(ch * cw * 4);
    for y in y0..y1 {
        for x in x0..x1 {
            crop.extend_from_slice(&rgba.get_pixel(x as u32, y as u32).0);
        }
    }
    let scaled = resize_area(&Image8::new(cw, ch, 4, crop), w2, h2);
    let (top, left) = ((side - h2) / 2, (side - w2) / 2);
    let mut rgb = vec![255u8; side * side * 3];
    let mut mask = vec![0u8; side * side];
    for (i, px) in scaled.data.chunks_exact(4).enumerate() {
        let (y, x) = (i / w2, i % w2);
        // numpy: `u8 * f32` promotes to f32; `astype(uint8)` truncates.
        let a = px[3] as f32 / 255.0;
        let at = (top + y) * side + left + x;
        for c in 0..3 {
            rgb[at * 3 + c] = (px[c] as f32 * a + 255.0 * (1.0 - a)) as u8;
        }
        mask[at] = (a * 255.0) as u8;
    }
    Ok((
        Image8::new(side, side, 3, rgb),
        Image8::new(side, side, 1, mask),
    ))
}
