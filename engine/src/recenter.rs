//! The shape model's input, as the official `ImageProcessorV2(size 512, border 0.15)` makes
//! it from an RGBA cut-out: crop to the alpha's bounding box (end exclusive, as the reference
//! slices), scale it to 85 % of a square canvas with area averaging, composite on white
//! (non-premultiplied alpha), resize to 512² with a cubic filter, map to [-1, 1].
//!
//! The resampling filters are float versions of OpenCV's INTER_AREA and INTER_CUBIC, so values
//! can differ from the reference's fixed-point ones by a few levels of 255 at edges; the
//! bit-exact port belongs with background removal (issue 4).

use image::RgbaImage;
use thiserror::Error;

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

/// `ImageProcessorV2` on `rgba` (an image without transparency counts as all object).
pub fn shape_input(rgba: &RgbaImage, size: usize) -> Result<ShapeInput, RecenterError> {
    let (rgb, mask, side) = recenter(rgba, BORDER_RATIO)?;
    let rgb = resize_cubic(&rgb, side, side, 3, size, size);
    let mask = resize_nearest(&mask, side, size);
    let mut image = vec![0f32; 3 * size * size];
    for (p, px) in rgb.chunks_exact(3).enumerate() {
        for c in 0..3 {
            image[c * size * size + p] = px[c] as f32 / 255.0 * 2.0 - 1.0;
        }
    }
    Ok(ShapeInput { size, image, mask })
}

/// The reference's `recenter`: RGB composited on white and the mask, both `side × side`.
pub fn recenter(
    rgba: &RgbaImage,
    border_ratio: f64,
) -> Result<(Vec<u8>, Vec<u8>, usize), RecenterError> {
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
    let scaled = resize_area(&crop, cw, ch, 4, w2, h2);
    let (top, left) = ((side - h2) / 2, (side - w2) / 2);
    let mut rgb = vec![255u8; side * side * 3];
    let mut mask = vec![0u8; side * side];
    for y in 0..h2 {
        for x in 0..w2 {
            let px = &scaled[(y * w2 + x) * 4..][..4];
            let a = px[3] as f32 / 255.0;
            let at = (top + y) * side + left + x;
            for c in 0..3 {
                rgb[at * 3 + c] = (px[c] as f32 * a + 255.0 * (1.0 - a)) as u8;
            }
            mask[at] = px[3];
        }
    }
    Ok((rgb, mask, side))
}

/// Area averaging (each output pixel the coverage-weighted mean of the input it spans).
fn resize_area(src: &[u8], w: usize, h: usize, ch: usize, ow: usize, oh: usize) -> Vec<u8> {
    let cover = |n: usize, on: usize| -> Vec<Vec<(usize, f32)>> {
        let scale = n as f64 / on as f64;
        (0..on)
            .map(|o| {
                let (a, b) = (o as f64 * scale, (o + 1) as f64 * scale);
                let mut weights = Vec::new();
                let mut i = a.floor() as usize;
                while (i as f64) < b && i < n {
                    let overlap = (b.min(i as f64 + 1.0) - a.max(i as f64)) / scale;
                    if overlap > 0.0 {
                        weights.push((i, overlap as f32));
                    }
                    i += 1;
                }
                weights
            })
            .collect()
    };
    separable(src, w, h, ch, &cover(w, ow), &cover(h, oh))
}

/// OpenCV's bicubic (a = −0.75, pixel centres aligned, edges replicated).
fn resize_cubic(src: &[u8], w: usize, h: usize, ch: usize, ow: usize, oh: usize) -> Vec<u8> {
    let kernel = |x: f64| {
        let (a, x) = (-0.75, x.abs());
        if x < 1.0 {
            ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0
        } else if x < 2.0 {
            ((a * x - 5.0 * a) * x + 8.0 * a) * x - 4.0 * a
        } else {
            0.0
        }
    };
    let taps = |n: usize, on: usize| -> Vec<Vec<(usize, f32)>> {
        let scale = n as f64 / on as f64;
        (0..on)
            .map(|o| {
                let centre = (o as f64 + 0.5) * scale - 0.5;
                let base = centre.floor();
                (-1..=2)
                    .map(|k| {
                        let i = (base as i64 + k).clamp(0, n as i64 - 1) as usize;
                        (i, kernel(centre - (base + k as f64)) as f32)
                    })
                    .collect()
            })
            .collect()
    };
    separable(src, w, h, ch, &taps(w, ow), &taps(h, oh))
}

/// Apply per-axis weights (columns then rows), rounding to u8.
fn separable(
    src: &[u8],
    w: usize,
    h: usize,
    ch: usize,
    cols: &[Vec<(usize, f32)>],
    rows: &[Vec<(usize, f32)>],
) -> Vec<u8> {
    let ow = cols.len();
    let mut horizontal = vec![0f32; h * ow * ch];
    for y in 0..h {
        for (x, taps) in cols.iter().enumerate() {
            for c in 0..ch {
                horizontal[(y * ow + x) * ch + c] = taps
                    .iter()
                    .map(|&(i, wt)| wt * src[(y * w + i) * ch + c] as f32)
                    .sum();
            }
        }
    }
    let mut out = vec![0u8; rows.len() * ow * ch];
    for (y, taps) in rows.iter().enumerate() {
        for x in 0..ow {
            for c in 0..ch {
                let v: f32 = taps
                    .iter()
                    .map(|&(i, wt)| wt * horizontal[(i * ow + x) * ch + c])
                    .sum();
                out[(y * ow + x) * ch + c] = v.round().clamp(0.0, 255.0) as u8;
            }
        }
    }
    out
}

/// OpenCV's nearest neighbour: source index `floor(o · n / on)`.
fn resize_nearest(src: &[u8], n: usize, on: usize) -> Vec<u8> {
    let index = |o: usize| ((o as f64 * n as f64 / on as f64) as usize).min(n - 1);
    let mut out = vec![0u8; on * on];
    for y in 0..on {
        for x in 0..on {
            out[y * on + x] = src[index(y) * n + index(x)];
        }
    }
    out
}
