//! The instant preview, before any model is ready: inflate the cut-out's silhouette into a
//! rounded 2.5D solid. The mask's distance transform gives a height field (a round pillow:
//! height √(d·(2D − d)) for distance d from the outline and maximum distance D), which becomes a
//! closed two-sided field `height(x, y) − |z|` (negative outside the silhouette), meshed by
//! marching cubes; the image's colours go onto the vertices.

use super::{Field, Mesh, marching_cubes};

/// A mesh with one RGB colour per vertex.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ColoredMesh {
    pub mesh: Mesh,
    pub colors: Vec<[u8; 3]>,
}

/// Which pixels are the object: alpha where the image has a real one (some pixels below
/// 255), else a colour distance from the border's average colour (a plain backdrop).
pub fn silhouette(rgba: &[u8], width: usize, height: usize) -> Vec<bool> {
    let pixel = |x: usize, y: usize| &rgba[(y * width + x) * 4..(y * width + x) * 4 + 4];
    let has_alpha = rgba.chunks_exact(4).any(|p| p[3] < 255);
    if has_alpha {
        return rgba.chunks_exact(4).map(|p| p[3] >= 128).collect();
    }
    // The backdrop: the average colour of the border pixels.
    let border = (0..width)
        .flat_map(|x| [(x, 0), (x, height - 1)])
        .chain((0..height).flat_map(|y| [(0, y), (width - 1, y)]));
    let mut sum = [0f64; 3];
    let mut n = 0f64;
    for (x, y) in border {
        for (total, &value) in sum.iter_mut().zip(&pixel(x, y)[..3]) {
            *total += f64::from(value);
        }
        n += 1.0;
    }
    let backdrop = sum.map(|s| s / n);
    rgba.chunks_exact(4)
        .map(|p| {
            let d2: f64 = (0..3)
                .map(|c| (f64::from(p[c]) - backdrop[c]).powi(2))
                .sum();
            d2.sqrt() > 40.0
        })
        .collect()
}

/// Squared Euclidean distance to the nearest `false` cell (Felzenszwalb–Huttenlocher: exact,
/// two passes of 1-D lower envelopes).
fn distance_squared(mask: &[bool], width: usize, height: usize) -> Vec<f32> {
    const FAR: f32 = 1e12;
    let mut grid: Vec<f32> = mask.iter().map(|&m| if m { FAR } else { 0.0 }).collect();
    let mut line = Vec::new();
    for x in 0..width {
        line.clear();
        line.extend((0..height).map(|y| grid[y * width + x]));
        let out = envelope(&line);
        for y in 0..height {
            grid[y * width + x] = out[y];
        }
    }
    for y in 0..height {
        let out = envelope(&grid[y * width..(y + 1) * width]);
        grid[y * width..(y + 1) * width].copy_from_slice(&out);
    }
    grid
}

/// 1-D squared distance transform of sampled function `f`.
fn envelope(f: &[f32]) -> Vec<f32> {
    let n = f.len();
    let mut d = vec![0f32; n];
    let mut v = vec![0usize; n];
    let mut z = vec![0f32; n + 1];
    let mut k = 0;
    z[0] = f32::NEG_INFINITY;
    z[1] = f32::INFINITY;
    for q in 1..n {
        loop {
            let p = v[k];
            let s = ((f[q] + (q * q) as f32) - (f[p] + (p * p) as f32)) / (2.0 * (q - p) as f32);
            if s <= z[k] && k > 0 {
                k -= 1;
                continue;
            }
            if s <= z[k] {
                // k == 0: q replaces the only parabola
                v[0] = q;
                z[1] = f32::INFINITY;
                break;
            }
            k += 1;
            v[k] = q;
            z[k] = s;
            z[k + 1] = f32::INFINITY;
            break;
        }
    }
    k = 0;
    for (q, out) in d.iter_mut().enumerate() {
        while z[k + 1] < q as f32 {
            k += 1;
        }
        let p = v[k];
        *out = (q as f32 - p as f32).powi(2) + f[p];
    }
    d
}

/// Build the preview from an RGBA image, on a grid `resolution` cells across its longer side.
/// The mesh spans [-1, 1] on the longer side, y up, z towards the viewer.
pub fn inflate(rgba: &[u8], width: usize, height: usize, resolution: usize) -> ColoredMesh {
    assert_eq!(rgba.len(), width * height * 4, "RGBA size");
    let mask = silhouette(rgba, width, height);
    let scale = width.max(height) as f32 / resolution as f32;
    // A one-cell empty margin so that the solid closes inside the grid.
    let gw = (width as f32 / scale).ceil() as usize + 2;
    let gh = (height as f32 / scale).ceil() as usize + 2;
    let sample = |gx: usize, gy: usize| -> Option<(usize, usize)> {
        let x = ((gx as f32 - 0.5) * scale).floor();
        let y = ((gy as f32 - 0.5) * scale).floor();
        (x >= 0.0 && y >= 0.0 && (x as usize) < width && (y as usize) < height)
            .then_some((x as usize, y as usize))
    };
    let grid_mask: Vec<bool> = (0..gh)
        .flat_map(|gy| (0..gw).map(move |gx| (gx, gy)))
        .map(|(gx, gy)| sample(gx, gy).is_some_and(|(x, y)| mask[y * width + x]))
        .collect();
    if !grid_mask.iter().any(|&m| m) {
        return ColoredMesh::default();
    }
    let inside = distance_squared(&grid_mask, gw, gh);
    let outside_mask: Vec<bool> = grid_mask.iter().map(|m| !m).collect();
    let outside = distance_squared(&outside_mask, gw, gh);
    let deepest = inside.iter().copied().fold(0.0f32, f32::max).sqrt();
    let height_at: Vec<f32> = (0..gw * gh)
        .map(|i| {
            if grid_mask[i] {
                let d = inside[i].sqrt();
                (d * (2.0 * deepest - d)).max(0.0).sqrt()
            } else {
                -outside[i].sqrt()
            }
        })
        .collect();
    let depth = deepest.ceil() as usize + 2;
    let gz = 2 * depth + 1;
    // Field layout (i, j, k) = (x, y, z) grid indices.
    let mut values = Vec::with_capacity(gw * gh * gz);
    for gx in 0..gw {
        for gy in 0..gh {
            let h = height_at[gy * gw + gx];
            for k in 0..gz {
                let z = k as f32 - depth as f32;
                values.push(h - z.abs());
            }
        }
    }
    let mut mesh = marching_cubes(Field {
        values: &values,
        dims: [gw, gh, gz],
    });
    let half = resolution as f32 / 2.0;
    // Rim vertices sit between subject and backdrop: colour them from the nearest grid cell
    // inside the silhouette, not from the backdrop (a dark rim otherwise).
    let nearest_inside = |gx: usize, gy: usize| -> (usize, usize) {
        let mut best = (gx, gy);
        let mut best_d = usize::MAX;
        for r in 0..=3usize {
            for ny in gy.saturating_sub(r)..=(gy + r).min(gh - 1) {
                for nx in gx.saturating_sub(r)..=(gx + r).min(gw - 1) {
                    let d = nx.abs_diff(gx).pow(2) + ny.abs_diff(gy).pow(2);
                    if grid_mask[ny * gw + nx] && d < best_d {
                        best = (nx, ny);
                        best_d = d;
                    }
                }
            }
            if best_d != usize::MAX {
                break;
            }
        }
        best
    };
    let colors = mesh
        .positions
        .iter()
        .map(|p| {
            let gx = (p[0].round() as usize).clamp(0, gw - 1);
            let gy = (p[1].round() as usize).clamp(0, gh - 1);
            let (gx, gy) = nearest_inside(gx, gy);
            let (x, y) = sample(gx, gy)
                .or_else(|| sample(gx.clamp(1, gw - 2), gy.clamp(1, gh - 2)))
                .unwrap_or((0, 0));
            let px = &rgba[(y * width + x) * 4..];
            [px[0], px[1], px[2]]
        })
        .collect();
    // Grid → world: centred, longer side [-1, 1], image y down → world y up. Mirroring y
    // reverses the winding, so the triangles are flipped back.
    let (cx, cy) = (gw as f32 / 2.0, gh as f32 / 2.0);
    for p in &mut mesh.positions {
        *p = [
            (p[0] - cx) / half,
            (cy - p[1]) / half,
            (p[2] - depth as f32) / half,
        ];
    }
    for t in &mut mesh.triangles {
        t.swap(1, 2);
    }
    ColoredMesh { mesh, colors }
}
