//! How far apart two surfaces are: the error a face budget costs (a decimated mesh against the
//! mesh it came from), for the tests and `bench-mesh`. Each surface is sampled at its vertices
//! and face centroids; each sample's distance to the other surface's nearest triangle is found
//! through a uniform grid of triangle bounds, both ways.

use super::Mesh;

/// Distances between two surfaces, in the meshes' units.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SurfaceDistance {
    /// Mean over the samples of both surfaces.
    pub mean: f64,
    /// The largest (the symmetric Hausdorff distance over the samples).
    pub max: f64,
}

/// The symmetric distance between the surfaces of `a` and `b` (`None` if either is empty).
pub fn surface_distance(a: &Mesh, b: &Mesh) -> Option<SurfaceDistance> {
    if a.triangles.is_empty() || b.triangles.is_empty() {
        return None;
    }
    let (lo_a, hi_a) = a.bounds()?;
    let (lo_b, hi_b) = b.bounds()?;
    // One box for both, so every sample lies inside the grid it is looked up in.
    let lo: [f64; 3] = std::array::from_fn(|d| f64::from(lo_a[d].min(lo_b[d])));
    let hi: [f64; 3] = std::array::from_fn(|d| f64::from(hi_a[d].max(hi_b[d])));
    let (to_b, to_a) = (Grid::new(b, lo, hi), Grid::new(a, lo, hi));
    let (mut sum, mut max, mut count) = (0.0, 0.0f64, 0usize);
    for (from, grid) in [(a, &to_b), (b, &to_a)] {
        for point in samples(from) {
            let d = grid.nearest(point);
            sum += d;
            max = max.max(d);
            count += 1;
        }
    }
    Some(SurfaceDistance {
        mean: sum / count as f64,
        max,
    })
}

/// The vertices of `mesh` and the centroids of its faces.
fn samples(mesh: &Mesh) -> impl Iterator<Item = [f64; 3]> + '_ {
    let vertex = |i: u32| mesh.positions[i as usize].map(f64::from);
    let centroids = mesh.triangles.iter().map(move |t| {
        let [a, b, c] = t.map(vertex);
        std::array::from_fn(|d| (a[d] + b[d] + c[d]) / 3.0)
    });
    mesh.positions
        .iter()
        .map(|p| p.map(f64::from))
        .chain(centroids)
}

/// A mesh's triangles bucketed by the cells their bounds touch.
struct Grid {
    triangles: Vec<[[f64; 3]; 3]>,
    cells: Vec<Vec<u32>>,
    lo: [f64; 3],
    cell: f64,
    dims: [usize; 3],
}

impl Grid {
    fn new(mesh: &Mesh, lo: [f64; 3], hi: [f64; 3]) -> Self {
        let triangles: Vec<[[f64; 3]; 3]> = mesh
            .triangles
            .iter()
            .map(|t| t.map(|i| mesh.positions[i as usize].map(f64::from)))
            .collect();
        // A surface crosses about per_side² of the per_side³ cells: 2·∛n a side leaves a few
        // triangles in each cell it crosses, and the grid about 8 cells per triangle.
        let extent = (0..3).map(|d| hi[d] - lo[d]).fold(0.0, f64::max).max(1e-9);
        let per_side = (2.0 * (triangles.len() as f64).cbrt()).clamp(1.0, 128.0);
        let cell = extent / per_side;
        let dims: [usize; 3] = std::array::from_fn(|d| ((hi[d] - lo[d]) / cell) as usize + 1);
        let mut grid = Self {
            triangles,
            cells: vec![Vec::new(); dims[0] * dims[1] * dims[2]],
            lo,
            cell,
            dims,
        };
        for (index, triangle) in grid.triangles.iter().enumerate() {
            let lo_cell = grid.cell_of(std::array::from_fn(|d| {
                triangle.iter().map(|p| p[d]).fold(f64::INFINITY, f64::min)
            }));
            let hi_cell = grid.cell_of(std::array::from_fn(|d| {
                triangle
                    .iter()
                    .map(|p| p[d])
                    .fold(f64::NEG_INFINITY, f64::max)
            }));
            for x in lo_cell[0]..=hi_cell[0] {
                for y in lo_cell[1]..=hi_cell[1] {
                    for z in lo_cell[2]..=hi_cell[2] {
                        let at = (x * dims[1] + y) * dims[2] + z;
                        grid.cells[at].push(index as u32);
                    }
                }
            }
        }
        grid
    }

    fn cell_of(&self, p: [f64; 3]) -> [usize; 3] {
        std::array::from_fn(|d| {
            (((p[d] - self.lo[d]) / self.cell).max(0.0) as usize).min(self.dims[d] - 1)
        })
    }

    /// Distance from `p` to the nearest triangle: rings of cells around `p`'s, outwards,
    /// until no cell further out can hold anything nearer.
    fn nearest(&self, p: [f64; 3]) -> f64 {
        let centre = self.cell_of(p);
        let mut best = f64::INFINITY;
        let widest = self.dims.into_iter().max().unwrap_or(1);
        for ring in 0..=widest {
            // Every cell of ring `ring + 1` is at least `ring` cells away from `p`.
            if best <= ring.saturating_sub(1) as f64 * self.cell {
                break;
            }
            let lo: [isize; 3] = std::array::from_fn(|d| centre[d] as isize - ring as isize);
            let hi: [isize; 3] = std::array::from_fn(|d| centre[d] as isize + ring as isize);
            for x in lo[0].max(0)..=hi[0].min(self.dims[0] as isize - 1) {
                for y in lo[1].max(0)..=hi[1].min(self.dims[1] as isize - 1) {
                    for z in lo[2].max(0)..=hi[2].min(self.dims[2] as isize - 1) {
                        let on_ring = [x, y, z]
                            .iter()
                            .zip(lo.iter().zip(&hi))
                            .any(|(v, (l, h))| v == l || v == h);
                        if !on_ring {
                            continue;
                        }
                        let at =
                            (x as usize * self.dims[1] + y as usize) * self.dims[2] + z as usize;
                        for &t in &self.cells[at] {
                            best = best.min(point_triangle(p, &self.triangles[t as usize]));
                        }
                    }
                }
            }
        }
        best
    }
}

fn sub(a: [f64; 3], b: [f64; 3]) -> [f64; 3] {
    [a[0] - b[0], a[1] - b[1], a[2] - b[2]]
}

fn dot(a: [f64; 3], b: [f64; 3]) -> f64 {
    a[0] * b[0] + a[1] * b[1] + a[2] * b[2]
}

/// Distance from `p` to the triangle `[a, b, c]` (the closest point by its Voronoi region, as
/// in Ericson's *Real-Time Collision Detection*, 5.1.5).
fn point_triangle(p: [f64; 3], [a, b, c]: &[[f64; 3]; 3]) -> f64 {
    let (ab, ac, ap) = (sub(*b, *a), sub(*c, *a), sub(p, *a));
    let at = |u: f64, v: f64| -> [f64; 3] { std::array::from_fn(|d| a[d] + u * ab[d] + v * ac[d]) };
    let (d1, d2) = (dot(ab, ap), dot(ac, ap));
    let closest = if d1 <= 0.0 && d2 <= 0.0 {
        *a
    } else {
        let bp = sub(p, *b);
        let (d3, d4) = (dot(ab, bp), dot(ac, bp));
        let cp = sub(p, *c);
        let (d5, d6) = (dot(ab, cp), dot(ac, cp));
        let (va, vb, vc) = (d3 * d6 - d5 * d4, d5 * d2 - d1 * d6, d1 * d4 - d3 * d2);
        if d3 >= 0.0 && d4 <= d3 {
            *b
        } else if d6 >= 0.0 && d5 <= d6 {
            *c
        } else if vc <= 0.0 && d1 >= 0.0 && d3 <= 0.0 {
            at(d1 / (d1 - d3), 0.0)
        } else if vb <= 0.0 && d2 >= 0.0 && d6 <= 0.0 {
            at(0.0, d2 / (d2 - d6))
        } else if va <= 0.0 && (d4 - d3) >= 0.0 && (d5 - d6) >= 0.0 {
            let w = (d4 - d3) / ((d4 - d3) + (d5 - d6));
            std::array::from_fn(|d| b[d] + w * (c[d] - b[d]))
        } else {
            let denominator = va + vb + vc;
            if denominator.abs() < f64::MIN_POSITIVE {
                // A degenerate triangle: its nearest vertex.
                return [a, b, c]
                    .map(|q| dot(sub(p, *q), sub(p, *q)))
                    .into_iter()
                    .fold(f64::INFINITY, f64::min)
                    .sqrt();
            }
            at(vb / denominator, vc / denominator)
        }
    };
    let d = sub(p, closest);
    dot(d, d).sqrt()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn point_to_triangle_by_region() {
        let t = [[0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]];
        for (p, expected) in [
            ([0.25, 0.25, 2.0], 2.0),         // above the face
            ([-1.0, -1.0, 0.0], 2f64.sqrt()), // by vertex a
            ([2.0, 0.0, 0.0], 1.0),           // by vertex b
            ([0.5, -3.0, 0.0], 3.0),          // by edge ab
            ([1.0, 1.0, 0.0], 0.5f64.sqrt()), // by edge bc
            ([-0.5, 0.5, 0.0], 0.5),          // by edge ca
        ] {
            let d = point_triangle(p, &t);
            assert!((d - expected).abs() < 1e-12, "{p:?}: {d} vs {expected}");
        }
    }

    #[test]
    fn a_mesh_is_at_no_distance_from_itself_and_a_shifted_copy_at_the_shift() {
        let square = Mesh {
            positions: vec![
                [0.0, 0.0, 0.0],
                [1.0, 0.0, 0.0],
                [1.0, 1.0, 0.0],
                [0.0, 1.0, 0.0],
            ],
            triangles: vec![[0, 1, 2], [0, 2, 3]],
        };
        let same = surface_distance(&square, &square).unwrap();
        assert!(same.mean < 1e-12 && same.max < 1e-12, "{same:?}");
        let mut lifted = square.clone();
        for p in &mut lifted.positions {
            p[2] = 0.25;
        }
        let apart = surface_distance(&square, &lifted).unwrap();
        assert!((apart.mean - 0.25).abs() < 1e-9 && (apart.max - 0.25).abs() < 1e-9);
        assert_eq!(surface_distance(&square, &Mesh::default()), None);
    }
}
