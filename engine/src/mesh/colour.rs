//! Vertex colours from the cut-out photos: each view's photo is projected onto the surface it
//! sees, and a neutral colour is blended in where no view sees it.
//!
//! The shape model generates in a canonical frame: the front photo looks at the object from
//! +z, with +x to its right and +y up (the glTF convention the official meshes are shown in,
//! and the official texturing code's camera at azimuth 0 after its axis change). The other
//! views of a 2mv model follow the official texturing cameras' azimuths in the views' official
//! order: left from +x, back from −z, right from −x. Each view is an orthographic projection
//! whose silhouette is fitted onto the photo's opaque box (the photo and the shape agree in
//! outline, not in scale); a vertex takes a view's colour where that view sees it (in front in
//! a depth buffer, and facing the camera), weighted by how squarely it faces it.

use image::RgbaImage;

use super::Mesh;
use super::export::vertex_normals;
use crate::models::dinov2::View;

/// The side of the depth buffer each view is rasterised at (its longer side).
const DEPTH_SIDE: usize = 512;

/// Surface facing a camera less squarely than this (the cosine of its angle to the view
/// axis; about 73°) fades toward the neutral colour: a photo says little about it.
const GRAZING: f32 = 0.3;

/// Pixels with less opacity than this are background.
const OPAQUE: f32 = 0.5;

/// A view's camera: the direction toward it, and the image's right and up.
struct Camera {
    toward: [f32; 3],
    right: [f32; 3],
    up: [f32; 3],
}

impl Camera {
    fn of(view: View) -> Self {
        let up = [0.0, 1.0, 0.0];
        let (toward, right) = match view {
            View::Front => ([0.0, 0.0, 1.0], [1.0, 0.0, 0.0]),
            View::Left => ([1.0, 0.0, 0.0], [0.0, 0.0, -1.0]),
            View::Back => ([0.0, 0.0, -1.0], [-1.0, 0.0, 0.0]),
            View::Right => ([-1.0, 0.0, 0.0], [0.0, 0.0, 1.0]),
        };
        Self { toward, right, up }
    }

    /// (right, up, depth toward the camera) of a point.
    fn project(&self, p: [f32; 3]) -> [f32; 3] {
        [dot(p, self.right), dot(p, self.up), dot(p, self.toward)]
    }
}

fn dot(a: [f32; 3], b: [f32; 3]) -> f32 {
    a[0] * b[0] + a[1] * b[1] + a[2] * b[2]
}

/// The opaque pixels' box `(x0, y0, x1, y1)` (inclusive), `None` for a photo with none.
fn opaque_box(photo: &RgbaImage) -> Option<(u32, u32, u32, u32)> {
    let mut out: Option<(u32, u32, u32, u32)> = None;
    for (x, y, p) in photo.enumerate_pixels() {
        if f32::from(p[3]) / 255.0 >= OPAQUE {
            out = Some(match out {
                None => (x, y, x, y),
                Some((a, b, c, d)) => (a.min(x), b.min(y), c.max(x), d.max(y)),
            });
        }
    }
    out
}

/// One view's projection onto its photo: projected (right, up) → pixel (x, y).
struct Fit {
    camera: Camera,
    /// pixel = offset + scale × (right, −up)
    offset: [f32; 2],
    scale: [f32; 2],
}

impl Fit {
    /// The mesh's silhouette box in this view fitted onto the photo's opaque box.
    fn new(mesh: &Mesh, view: View, photo: &RgbaImage) -> Option<Self> {
        let camera = Camera::of(view);
        let (x0, y0, x1, y1) = opaque_box(photo)?;
        let mut lo = [f32::INFINITY; 2];
        let mut hi = [f32::NEG_INFINITY; 2];
        for &p in &mesh.positions {
            let [u, v, _] = camera.project(p);
            lo = [lo[0].min(u), lo[1].min(-v)];
            hi = [hi[0].max(u), hi[1].max(-v)];
        }
        let span = [hi[0] - lo[0], hi[1] - lo[1]];
        if !(span[0] > 0.0 && span[1] > 0.0) {
            return None;
        }
        // Pixel centres: the box's outer pixels' centres are its extremes.
        let scale = [(x1 - x0) as f32 / span[0], (y1 - y0) as f32 / span[1]];
        let offset = [
            x0 as f32 + 0.5 - lo[0] * scale[0],
            y0 as f32 + 0.5 - lo[1] * scale[1],
        ];
        Some(Self {
            camera,
            offset,
            scale,
        })
    }

    /// Pixel (x, y) and depth of a point.
    fn pixel(&self, p: [f32; 3]) -> [f32; 3] {
        let [u, v, depth] = self.camera.project(p);
        [
            self.offset[0] + self.scale[0] * u,
            self.offset[1] - self.scale[1] * v,
            depth,
        ]
    }
}

/// A depth buffer over the photo, at most [`DEPTH_SIDE`] on its longer side: the nearest
/// surface (largest depth toward the camera) at each of its cells.
struct DepthBuffer {
    width: usize,
    height: usize,
    /// Photo pixels per cell.
    cell: f32,
    depth: Vec<f32>,
}

impl DepthBuffer {
    fn new(mesh: &Mesh, fit: &Fit, photo: &RgbaImage) -> Self {
        let (w, h) = photo.dimensions();
        let cell = (w.max(h) as f32 / DEPTH_SIDE as f32).max(1.0);
        let width = (w as f32 / cell).ceil() as usize;
        let height = (h as f32 / cell).ceil() as usize;
        let mut buffer = Self {
            width,
            height,
            cell,
            depth: vec![f32::NEG_INFINITY; width * height],
        };
        let at: Vec<[f32; 3]> = mesh
            .positions
            .iter()
            .map(|&p| {
                let [x, y, d] = fit.pixel(p);
                [x / cell, y / cell, d]
            })
            .collect();
        for t in &mesh.triangles {
            let [a, b, c] = t.map(|i| at[i as usize]);
            buffer.fill(a, b, c);
        }
        buffer
    }

    /// Rasterise one triangle, keeping the nearest depth per cell.
    fn fill(&mut self, a: [f32; 3], b: [f32; 3], c: [f32; 3]) {
        let width = self.width;
        rasterise([a, b, c], (width, self.height), |x, y, _, d| {
            let slot = &mut self.depth[y * width + x];
            *slot = slot.max(d);
        });
    }

    /// The nearest surface's depth at photo pixel (x, y) (none beyond the buffer).
    fn nearest(&self, x: f32, y: f32) -> f32 {
        let (i, j) = ((x / self.cell).floor(), (y / self.cell).floor());
        if i < 0.0 || j < 0.0 || i as usize >= self.width || j as usize >= self.height {
            return f32::NEG_INFINITY;
        }
        self.depth[j as usize * self.width + i as usize]
    }
}

/// Visit the cells of a `width` × `height` grid whose centres lie inside triangle `corners`
/// (x, y, depth; either winding), with the centre's barycentric weights and depth.
fn rasterise(
    [a, b, c]: [[f32; 3]; 3],
    (width, height): (usize, usize),
    mut cell: impl FnMut(usize, usize, [f32; 3], f32),
) {
    let area = (b[0] - a[0]) * (c[1] - a[1]) - (c[0] - a[0]) * (b[1] - a[1]);
    if area.abs() < 1e-12 {
        return;
    }
    let x0 = a[0].min(b[0]).min(c[0]).floor().max(0.0) as usize;
    let y0 = a[1].min(b[1]).min(c[1]).floor().max(0.0) as usize;
    let x1 = (a[0].max(b[0]).max(c[0]).ceil() as usize).min(width);
    let y1 = (a[1].max(b[1]).max(c[1]).ceil() as usize).min(height);
    for y in y0..y1 {
        for x in x0..x1 {
            let (px, py) = (x as f32 + 0.5, y as f32 + 0.5);
            let wa = ((b[0] - px) * (c[1] - py) - (c[0] - px) * (b[1] - py)) / area;
            let wb = ((c[0] - px) * (a[1] - py) - (a[0] - px) * (c[1] - py)) / area;
            let wc = 1.0 - wa - wb;
            if wa < 0.0 || wb < 0.0 || wc < 0.0 {
                continue;
            }
            cell(x, y, [wa, wb, wc], wa * a[2] + wb * b[2] + wc * c[2]);
        }
    }
}

/// The photo's colour at pixel position (x, y), bilinear over opaque pixels, with its
/// opacity.
fn sample(photo: &RgbaImage, x: f32, y: f32) -> ([f32; 3], f32) {
    let (w, h) = photo.dimensions();
    let fx = (x - 0.5).clamp(0.0, (w - 1) as f32);
    let fy = (y - 0.5).clamp(0.0, (h - 1) as f32);
    let (x0, y0) = (fx.floor() as u32, fy.floor() as u32);
    let (x1, y1) = ((x0 + 1).min(w - 1), (y0 + 1).min(h - 1));
    let (tx, ty) = (fx - x0 as f32, fy - y0 as f32);
    let mut colour = [0.0f32; 3];
    let mut alpha = 0.0f32;
    for (px, py, weight) in [
        (x0, y0, (1.0 - tx) * (1.0 - ty)),
        (x1, y0, tx * (1.0 - ty)),
        (x0, y1, (1.0 - tx) * ty),
        (x1, y1, tx * ty),
    ] {
        let p = photo.get_pixel(px, py);
        // Weighted by opacity, so the background's colour does not bleed in at the edge.
        let a = weight * f32::from(p[3]) / 255.0;
        for d in 0..3 {
            colour[d] += a * f32::from(p[d]);
        }
        alpha += a;
    }
    if alpha > 0.0 {
        colour = colour.map(|c| c / alpha);
    }
    (colour, alpha)
}

/// The neutral colour for surface no view sees: the photos' mean object colour, halfway to
/// mid-grey (the object's own tone, without inventing detail).
fn neutral(photos: &[(View, &RgbaImage)]) -> [f32; 3] {
    let mut sum = [0.0f64; 3];
    let mut count = 0.0f64;
    for (_, photo) in photos {
        for p in photo.pixels() {
            if f32::from(p[3]) / 255.0 >= OPAQUE {
                for d in 0..3 {
                    sum[d] += f64::from(p[d]);
                }
                count += 1.0;
            }
        }
    }
    if count == 0.0 {
        return [160.0; 3];
    }
    sum.map(|s| ((s / count + 160.0) / 2.0) as f32)
}

/// One colour per vertex of `mesh` from the cut-out `photos` (any of the four views; the
/// front's first is not required). See the module's notes for the frame.
pub fn colour_vertices(mesh: &Mesh, photos: &[(View, &RgbaImage)]) -> Vec<[u8; 3]> {
    let normals = vertex_normals(mesh);
    let neutral = neutral(photos);
    let mut sum = vec![[0.0f32; 3]; mesh.positions.len()];
    let mut weight = vec![0.0f32; mesh.positions.len()];
    // How surely some view sees each vertex: full once it faces a camera at all squarely,
    // fading to none at grazing angles.
    let mut seen = vec![0.0f32; mesh.positions.len()];
    let (lo, hi) = mesh.bounds().unwrap_or(([0.0; 3], [1.0; 3]));
    let extent = (0..3).map(|d| hi[d] - lo[d]).fold(0.0f32, f32::max);
    for &(view, photo) in photos {
        let Some(fit) = Fit::new(mesh, view, photo) else {
            continue;
        };
        let depth = DepthBuffer::new(mesh, &fit, photo);
        // A vertex within this of the nearest surface (in depth units) is on it: a percent of
        // the mesh's size, and two buffer cells' width (a slanted surface's depth changes
        // across the cell a vertex falls in).
        let cell = depth.cell / fit.scale[0].min(fit.scale[1]).max(1e-6);
        let tolerance = 0.01 * extent.max(1e-6) + 2.0 * cell;
        for (i, &p) in mesh.positions.iter().enumerate() {
            // The depth buffer decides what the camera sees; the normal only how squarely
            // (either winding: a surface seen edge-on says little whichever way it faces).
            let facing = dot(normals[i], fit.camera.toward).abs();
            if facing <= 0.0 {
                continue;
            }
            let [x, y, d] = fit.pixel(p);
            if d < depth.nearest(x, y) - tolerance {
                continue; // behind another part of the surface
            }
            let (colour, alpha) = sample(photo, x, y);
            if alpha < OPAQUE {
                continue;
            }
            // Between views, the one the surface faces most squarely dominates.
            let w = facing * facing * alpha;
            for c in 0..3 {
                sum[i][c] += w * colour[c];
            }
            weight[i] += w;
            let t = (facing / GRAZING).min(1.0);
            seen[i] = seen[i].max(t * t * (3.0 - 2.0 * t) * alpha);
        }
    }
    (0..mesh.positions.len())
        .map(|i| {
            let s = seen[i];
            std::array::from_fn(|c| {
                let photo = if weight[i] > 0.0 {
                    sum[i][c] / weight[i]
                } else {
                    neutral[c]
                };
                (s * photo + (1.0 - s) * neutral[c]).round() as u8
            })
        })
        .collect()
}

/// The mean colour error (0–255, over the three channels) of `mesh` coloured with `colours`,
/// rendered from `view` onto `photo` (fitted as [`colour_vertices`] fits it), against the
/// photo over the pixels both cover; `None` when they share none.
pub fn view_error(mesh: &Mesh, colours: &[[u8; 3]], view: View, photo: &RgbaImage) -> Option<f64> {
    let fit = Fit::new(mesh, view, photo)?;
    let (w, h) = photo.dimensions();
    let (w, h) = (w as usize, h as usize);
    let mut depth = vec![f32::NEG_INFINITY; w * h];
    let mut colour = vec![[0.0f32; 3]; w * h];
    let at: Vec<[f32; 3]> = mesh.positions.iter().map(|&p| fit.pixel(p)).collect();
    for t in &mesh.triangles {
        let corners = t.map(|i| at[i as usize]);
        let [ca, cb, cc] = t.map(|i| colours[i as usize].map(f32::from));
        rasterise(corners, (w, h), |x, y, [wa, wb, wc], d| {
            let slot = y * w + x;
            if d > depth[slot] {
                depth[slot] = d;
                colour[slot] = std::array::from_fn(|k| wa * ca[k] + wb * cb[k] + wc * cc[k]);
            }
        });
    }
    let mut error = 0.0f64;
    let mut count = 0usize;
    for (slot, p) in photo.pixels().enumerate() {
        if depth[slot] == f32::NEG_INFINITY || f32::from(p[3]) / 255.0 < OPAQUE {
            continue;
        }
        for k in 0..3 {
            error += f64::from((colour[slot][k] - f32::from(p[k])).abs());
        }
        count += 3;
    }
    (count > 0).then(|| error / count as f64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mesh::{Field, marching_cubes};

    /// A sphere of radius 0.6 from marching cubes, in [-1, 1]³.
    fn sphere() -> Mesh {
        let n = 41;
        let at = |i: usize| -1.0 + 2.0 * i as f32 / (n - 1) as f32;
        let values: Vec<f32> = (0..n * n * n)
            .map(|i| {
                let [x, y, z] = [at(i / (n * n)), at(i / n % n), at(i % n)];
                0.6 - (x * x + y * y + z * z).sqrt()
            })
            .collect();
        let mut mesh = marching_cubes(Field {
            values: &values,
            dims: [n; 3],
        });
        for p in &mut mesh.positions {
            *p = p.map(|c| at(0) + c * 2.0 / (n - 1) as f32);
        }
        mesh
    }

    /// A disc on a transparent square, red growing to the right and green growing upward.
    fn disc_photo(side: u32) -> RgbaImage {
        RgbaImage::from_fn(side, side, |x, y| {
            let (u, v) = (
                (x as f32 + 0.5) / side as f32 * 2.0 - 1.0,
                1.0 - (y as f32 + 0.5) / side as f32 * 2.0,
            );
            if u * u + v * v <= 0.8 * 0.8 {
                let r = (127.5 + 127.0 * u / 0.8) as u8;
                let g = (127.5 + 127.0 * v / 0.8) as u8;
                image::Rgba([r, g, 40, 255])
            } else {
                image::Rgba([255, 255, 255, 0])
            }
        })
    }

    #[test]
    fn the_front_photo_lands_on_the_front_and_the_back_is_neutral() {
        let mesh = sphere();
        let photo = disc_photo(128);
        let colours = colour_vertices(&mesh, &[(View::Front, &photo)]);
        assert_eq!(colours.len(), mesh.positions.len());
        let neutral = neutral(&[(View::Front, &photo)]).map(|c| c.round() as u8);
        let (lo, hi) = mesh.bounds().unwrap();
        for (p, c) in mesh.positions.iter().zip(&colours) {
            let facing_front = p[2] / 0.6 > 0.9;
            let facing_back = p[2] / 0.6 < -0.2;
            if facing_front {
                // The photo's gradient, read at the vertex's place in the fitted silhouette.
                let u = (p[0] - lo[0]) / (hi[0] - lo[0]) * 2.0 - 1.0;
                let v = (p[1] - lo[1]) / (hi[1] - lo[1]) * 2.0 - 1.0;
                let expected_red = 127.5 + 127.0 * u;
                let expected_green = 127.5 + 127.0 * v;
                assert!(
                    (f32::from(c[0]) - expected_red).abs() < 12.0
                        && (f32::from(c[1]) - expected_green).abs() < 12.0,
                    "{p:?}: {c:?}, expected ({expected_red}, {expected_green})"
                );
            }
            if facing_back {
                assert_eq!(*c, neutral, "{p:?} is seen by no view");
            }
        }
        let error = view_error(&mesh, &colours, View::Front, &photo).unwrap();
        assert!(error < 6.0, "mean colour error from the front: {error}");
        // Mirrored left to right, the photo no longer fits: the error shows it.
        let flipped = image::imageops::flip_horizontal(&photo);
        let wrong = view_error(&mesh, &colours, View::Front, &flipped).unwrap();
        eprintln!(
            "sphere from the front: mean colour error {error:.2} / 255 (mirrored: {wrong:.2})"
        );
        assert!(wrong > 4.0 * error, "{wrong} vs {error}");
    }

    #[test]
    fn a_back_view_colours_the_back() {
        let mesh = sphere();
        let front = RgbaImage::from_fn(64, 64, |x, y| {
            let (u, v) = (x as f32 / 32.0 - 1.0, y as f32 / 32.0 - 1.0);
            let a = if u * u + v * v < 0.9 { 255 } else { 0 };
            image::Rgba([200, 30, 30, a])
        });
        let back = RgbaImage::from_fn(64, 64, |x, y| {
            let p = front.get_pixel(x, y);
            image::Rgba([30, 30, 200, p[3]])
        });
        let colours = colour_vertices(&mesh, &[(View::Front, &front), (View::Back, &back)]);
        for (p, c) in mesh.positions.iter().zip(&colours) {
            if p[2] / 0.6 > 0.9 {
                assert!(c[0] > 150 && c[2] < 80, "front {p:?}: {c:?}");
            }
            if p[2] / 0.6 < -0.9 {
                assert!(c[2] > 150 && c[0] < 80, "back {p:?}: {c:?}");
            }
        }
    }
}
