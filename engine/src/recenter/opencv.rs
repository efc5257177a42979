//! OpenCV 4.10's `cv2.resize` on 8-bit images, reproduced to the bit: the reference
//! pre-processor runs it, and the shape model sees its exact output.
//!
//! What makes it exact (from `imgproc/src/resize.cpp`, x86-64 wheels, 128-bit SIMD baseline):
//! - `INTER_AREA` only averages areas when shrinking (in `f32`, rounded half to even; integer
//!   factors have their own kernel). When enlarging it is a fixed-point bilinear filter:
//!   coefficients `round(w · 2048)`, `i32` rows, and the SIMD kernel's vertical rounding.
//! - `INTER_NEAREST` picks `floor(dst · (1 / scale))` with the scale in `f64`.
//! - `INTER_CUBIC` on RGB does not run OpenCV's own code at all: the wheels hand it to Intel
//!   IPP (2021.11, AVX2), whose kernel works in floating point. [`resize_cubic`] models it in
//!   `f32` (weights from `f64`, columns first). Against the wheel that leaves 1–3 values per
//!   512² image one level off (the fixtures, and 600²/700² → 512² shrinks); OpenCV's
//!   fixed-point kernel would leave ~14 000.

/// Fixed-point scale of the interpolation coefficients (`INTER_RESIZE_COEF_SCALE`).
const COEF_SCALE: f32 = 2048.0;

/// An 8-bit image with interleaved channels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Image8 {
    pub width: usize,
    pub height: usize,
    pub channels: usize,
    pub data: Vec<u8>,
}

impl Image8 {
    pub fn new(width: usize, height: usize, channels: usize, data: Vec<u8>) -> Self {
        assert_eq!(data.len(), width * height * channels, "image buffer size");
        Self {
            width,
            height,
            channels,
            data,
        }
    }

    fn row(&self, y: usize) -> &[u8] {
        let stride = self.width * self.channels;
        &self.data[y * stride..][..stride]
    }
}

/// `cv2.resize(src, (width, height), interpolation=INTER_AREA)`.
pub fn resize_area(src: &Image8, width: usize, height: usize) -> Image8 {
    let scale_x = src.width as f64 / width as f64;
    let scale_y = src.height as f64 / height as f64;
    if scale_x >= 1.0 && scale_y >= 1.0 {
        let (ix, iy) = (scale_x.round(), scale_y.round());
        if (scale_x - ix).abs() < f64::EPSILON && (scale_y - iy).abs() < f64::EPSILON {
            return area_fast(src, width, height, ix as usize, iy as usize);
        }
        return area_shrink(src, width, height, scale_x, scale_y);
    }
    // Enlarging: OpenCV's "area" bilinear.
    let axis = |n: usize, dn: usize, scale: f64| -> Vec<Taps<2>> {
        let inv_scale = dn as f64 / n as f64;
        (0..dn)
            .map(|d| {
                let mut s = (d as f64 * scale).floor() as i64;
                let mut f = ((d + 1) as f64 - (s + 1) as f64 * inv_scale) as f32;
                f = if f <= 0.0 { 0.0 } else { f - f.floor() };
                if s >= n as i64 - 1 {
                    (s, f) = (n as i64 - 1, 0.0);
                }
                Taps {
                    first: s,
                    weights: fixed([1.0 - f, f]),
                }
            })
            .collect()
    };
    let cols = axis(src.width, width, scale_x);
    let rows = axis(src.height, height, scale_y);
    resample_linear(src, &cols, &rows)
}

/// `cv2.resize(src, (width, height), interpolation=INTER_CUBIC)` (a = −0.75) on an RGB
/// image, which the reference's OpenCV hands to IPP: modelled in `f32`, see the module notes.
pub fn resize_cubic(src: &Image8, width: usize, height: usize) -> Image8 {
    if (width, height) == (src.width, src.height) {
        return src.clone();
    }
    let axis = |n: usize, dn: usize| -> Vec<Taps<4, f32>> {
        let scale = n as f64 / dn as f64;
        (0..dn)
            .map(|d| {
                let f = ((d as f64 + 0.5) * scale - 0.5) as f32;
                let s = f.floor();
                Taps {
                    first: s as i64 - 1,
                    weights: cubic_weights((f - s) as f64).map(|w| w as f32),
                }
            })
            .collect()
    };
    resample_float(src, &axis(src.width, width), &axis(src.height, height))
}

/// `cv2.resize(src, (width, height), interpolation=INTER_NEAREST)`.
pub fn resize_nearest(src: &Image8, width: usize, height: usize) -> Image8 {
    let index = |d: usize, n: usize, dn: usize| {
        let step = 1.0 / (dn as f64 / n as f64);
        ((d as f64 * step).floor() as usize).min(n - 1)
    };
    let ch = src.channels;
    let mut data = Vec::with_capacity(width * height * ch);
    for y in 0..height {
        let row = src.row(index(y, src.height, height));
        for x in 0..width {
            let sx = index(x, src.width, width);
            data.extend_from_slice(&row[sx * ch..][..ch]);
        }
    }
    Image8::new(width, height, ch, data)
}

/// Keys' cubic weights of the four taps around a sample `x` past the second (in `f64`; then
/// rounded to `f32`, which is what matches IPP best).
fn cubic_weights(x: f64) -> [f64; 4] {
    const A: f64 = -0.75;
    let w0 = ((A * (x + 1.0) - 5.0 * A) * (x + 1.0) + 8.0 * A) * (x + 1.0) - 4.0 * A;
    let w1 = ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0;
    let w2 = ((A + 2.0) * (1.0 - x) - (A + 3.0)) * (1.0 - x) * (1.0 - x) + 1.0;
    [w0, w1, w2, 1.0 - w0 - w1 - w2]
}

/// `saturate_cast<short>(w · 2048)`: round half to even.
fn fixed<const K: usize>(weights: [f32; K]) -> [i32; K] {
    weights.map(|w| (w * COEF_SCALE).round_ties_even() as i32)
}

/// The source taps of one output pixel along one axis: indices `first..first + K`, clamped
/// to the image (edge pixels repeat).
struct Taps<const K: usize, W = i32> {
    first: i64,
    weights: [W; K],
}

impl<const K: usize, W> Taps<K, W> {
    fn index(&self, k: usize, n: usize) -> usize {
        (self.first + k as i64).clamp(0, n as i64 - 1) as usize
    }
}

/// Fixed-point bilinear: a horizontal pass into `i32` rows, then the vertical pass.
fn resample_linear(src: &Image8, cols: &[Taps<2>], rows: &[Taps<2>]) -> Image8 {
    let ch = src.channels;
    let width = cols.len() * ch;
    let horizontal: Vec<Vec<i32>> = (0..src.height)
        .map(|y| {
            let row = src.row(y);
            let mut out = Vec::with_capacity(width);
            for taps in cols {
                for c in 0..ch {
                    out.push(
                        (0..2)
                            .map(|k| {
                                row[taps.index(k, src.width) * ch + c] as i32 * taps.weights[k]
                            })
                            .sum(),
                    );
                }
            }
            out
        })
        .collect();
    let mut data = vec![0u8; rows.len() * width];
    for (taps, out) in rows.iter().zip(data.chunks_exact_mut(width)) {
        let lines = std::array::from_fn(|k| horizontal[taps.index(k, src.height)].as_slice());
        vertical_linear(&lines, &taps.weights, out);
    }
    Image8::new(cols.len(), rows.len(), ch, data)
}

/// Separable filtering in `f32`, columns first, each sum in tap order, rounded half to even.
fn resample_float(src: &Image8, cols: &[Taps<4, f32>], rows: &[Taps<4, f32>]) -> Image8 {
    let ch = src.channels;
    let width = cols.len() * ch;
    let horizontal: Vec<Vec<f32>> = (0..src.height)
        .map(|y| {
            let row = src.row(y);
            let mut out = Vec::with_capacity(width);
            for taps in cols {
                for c in 0..ch {
                    let mut sum = 0f32;
                    for k in 0..4 {
                        sum += row[taps.index(k, src.width) * ch + c] as f32 * taps.weights[k];
                    }
                    out.push(sum);
                }
            }
            out
        })
        .collect();
    let mut data = Vec::with_capacity(rows.len() * width);
    for taps in rows {
        let lines: [&[f32]; 4] =
            std::array::from_fn(|k| &horizontal[taps.index(k, src.height)][..]);
        for x in 0..width {
            let mut sum = 0f32;
            for (line, weight) in lines.iter().zip(taps.weights) {
                sum += line[x] * weight;
            }
            data.push(sum.round_ties_even().clamp(0.0, 255.0) as u8);
        }
    }
    Image8::new(cols.len(), rows.len(), ch, data)
}

/// `VResizeLinear` for `u8`, as its SIMD kernel computes every column (checked against
/// OpenCV, tails included): `((S0 >> 4) · b0 >> 16) + ((S1 >> 4) · b1 >> 16)`, then `+2 >> 2`.
fn vertical_linear(lines: &[&[i32]; 2], beta: &[i32; 2], out: &mut [u8]) {
    let mul_hi = |s: i32, b: i32| ((s >> 4).clamp(-32768, 32767) * b) >> 16;
    for (x, o) in out.iter_mut().enumerate() {
        let sum =
            (mul_hi(lines[0][x], beta[0]) + mul_hi(lines[1][x], beta[1])).clamp(-32768, 32767);
        *o = ((sum + 2) >> 2).clamp(0, 255) as u8;
    }
}

/// One source pixel's share of one output pixel (`DecimateAlpha`).
struct Share {
    dst: usize,
    src: usize,
    weight: f32,
}

/// `computeResizeAreaTab`: each output cell spans `scale` source pixels, partial ones weighted
/// by their coverage.
fn area_table(n: usize, dn: usize, scale: f64) -> Vec<Share> {
    let mut table = Vec::new();
    for d in 0..dn {
        let start = d as f64 * scale;
        let end = start + scale;
        let cell = scale.min(n as f64 - start);
        let last = (end.floor() as usize).min(n - 1);
        let first = (start.ceil() as usize).min(last);
        if first as f64 - start > 1e-3 {
            table.push(Share {
                dst: d,
                src: first - 1,
                weight: ((first as f64 - start) / cell) as f32,
            });
        }
        for s in first..last {
            table.push(Share {
                dst: d,
                src: s,
                weight: (1.0 / cell) as f32,
            });
        }
        if end - last as f64 > 1e-3 {
            table.push(Share {
                dst: d,
                src: last,
                weight: ((end - last as f64).min(1.0).min(cell) / cell) as f32,
            });
        }
    }
    table
}

/// `resizeArea_`: `f32` sums in the table's order, each output row rounded half to even.
fn area_shrink(src: &Image8, width: usize, height: usize, scale_x: f64, scale_y: f64) -> Image8 {
    let ch = src.channels;
    let cols = area_table(src.width, width, scale_x);
    let rows = area_table(src.height, height, scale_y);
    let dwidth = width * ch;
    let mut data = vec![0u8; height * dwidth];
    let mut sum = vec![0f32; dwidth];
    let mut buf = vec![0f32; dwidth];
    let mut current = rows.first().map_or(0, |r| r.dst);
    let flush = |sum: &[f32], data: &mut [u8], y: usize| {
        for (o, s) in data[y * dwidth..][..dwidth].iter_mut().zip(sum) {
            *o = s.round_ties_even().clamp(0.0, 255.0) as u8;
        }
    };
    for share in &rows {
        let line = src.row(share.src);
        buf.fill(0.0);
        for col in &cols {
            for c in 0..ch {
                buf[col.dst * ch + c] += line[col.src * ch + c] as f32 * col.weight;
            }
        }
        if share.dst != current {
            flush(&sum, &mut data, current);
            for (s, b) in sum.iter_mut().zip(&buf) {
                *s = share.weight * b;
            }
            current = share.dst;
        } else {
            for (s, b) in sum.iter_mut().zip(&buf) {
                *s += share.weight * b;
            }
        }
    }
    flush(&sum, &mut data, current);
    Image8::new(width, height, ch, data)
}

/// `resizeAreaFast_` (integer factors): the mean of each block, rounded half to even, except
/// for 2 × 2 blocks, whose SIMD kernel computes `(sum + 2) >> 2`.
fn area_fast(src: &Image8, width: usize, height: usize, fx: usize, fy: usize) -> Image8 {
    let ch = src.channels;
    let scale = 1.0f32 / (fx * fy) as f32;
    let mut data = Vec::with_capacity(width * height * ch);
    for y in 0..height {
        for x in 0..width {
            for c in 0..ch {
                let mut sum = 0i32;
                for sy in y * fy..(y + 1) * fy {
                    let line = src.row(sy);
                    for sx in x * fx..(x + 1) * fx {
                        sum += line[sx * ch + c] as i32;
                    }
                }
                let mean = if (fx, fy) == (2, 2) {
                    (sum + 2) >> 2
                } else {
                    (sum as f32 * scale).round_ties_even() as i32
                };
                data.push(mean.clamp(0, 255) as u8);
            }
        }
    }
    Image8::new(width, height, ch, data)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gradient(width: usize, height: usize, channels: usize) -> Image8 {
        let data = (0..width * height * channels)
            .map(|i| ((i * 37 + i / 7) % 256) as u8)
            .collect();
        Image8::new(width, height, channels, data)
    }

    #[test]
    fn same_size_resizes_are_the_identity() {
        let image = gradient(23, 17, 3);
        assert_eq!(resize_cubic(&image, 23, 17), image);
        assert_eq!(resize_area(&image, 23, 17), image);
        assert_eq!(resize_nearest(&image, 23, 17), image);
    }

    #[test]
    fn a_flat_image_stays_flat() {
        let flat = Image8::new(31, 9, 4, vec![200; 31 * 9 * 4]);
        for out in [
            resize_cubic(&flat, 64, 40),
            resize_area(&flat, 64, 40),
            resize_area(&flat, 13, 4),
            resize_area(&flat, 31, 3),
        ] {
            assert!(out.data.iter().all(|&v| v == 200), "{out:?}");
        }
    }

    #[test]
    fn area_shrinking_averages_blocks() {
        let image = Image8::new(4, 2, 1, vec![0, 10, 20, 30, 40, 50, 60, 70]);
        // 2 × 2 blocks: their means.
        assert_eq!(resize_area(&image, 2, 1).data, vec![25, 45]);
        // A half rounds up there ((0 + 0 + 1 + 1 + 2) >> 2 = 1), unlike other factors.
        let halves = Image8::new(2, 2, 1, vec![0, 0, 1, 1]);
        assert_eq!(resize_area(&halves, 1, 1).data, vec![1]);
        // Factor 4/3: weights 3/4 and 1/4 of the second column.
        let shrunk = resize_area(&Image8::new(4, 1, 1, vec![0, 40, 80, 120]), 3, 1);
        assert_eq!(shrunk.data, vec![10, 60, 110]);
    }

    #[test]
    fn cubic_weights_sum_to_one() {
        for i in 0..=16 {
            let w = cubic_weights(i as f64 / 16.0);
            assert!((w.iter().sum::<f64>() - 1.0).abs() < 1e-12);
        }
        assert_eq!(cubic_weights(0.0), [0.0, 1.0, 0.0, 0.0]);
    }
}
