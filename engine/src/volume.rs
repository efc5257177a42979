//! Volume decoding: where the shape model's field is evaluated before marching cubes. The
//! official grid is `R + 1` points per axis spaced as `np.linspace(-bounds, bounds, R + 1)`,
//! flattened x-major. [`decode_dense`] queries every point (as the official
//! `VanillaVolumeDecoder`, for parity); [`decode_coarse_to_fine`] queries every `stride`-th
//! point first, keeps the coarse cells where the field changes sign or comes within `band` of
//! zero, grows them by one coarse cell, and queries only the fine points inside them. The coarse
//! points are fine points, so every refined cell has exactly the dense field's values and marching
//! cubes gives the dense mesh there.

use crate::mesh::marching_cubes::SparseField;

/// The query grid: `resolution + 1` points per axis on `[-bounds, bounds]`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Grid {
    pub resolution: usize,
    /// Half the box's side, in f64 as numpy computes it (1.01 as an f32 is 1.00999999).
    pub bounds: f64,
}

impl Grid {
    /// The official grid for an octree resolution (`bounds = 1.01`).
    pub fn official(resolution: usize) -> Self {
        Self {
            resolution,
            bounds: 1.01,
        }
    }

    pub fn points_per_axis(&self) -> usize {
        self.resolution + 1
    }

    pub fn dims(&self) -> [usize; 3] {
        [self.points_per_axis(); 3]
    }

    /// numpy's linspace: `start + i * step` in f64, the last point exactly `stop`.
    pub fn coordinate(&self, i: usize) -> f32 {
        let (start, stop) = (-self.bounds, self.bounds);
        if i == self.resolution {
            return stop as f32;
        }
        (start + i as f64 * (stop - start) / self.resolution as f64) as f32
    }

    pub fn point(&self, [i, j, k]: [usize; 3]) -> [f32; 3] {
        [self.coordinate(i), self.coordinate(j), self.coordinate(k)]
    }

    pub fn index(&self, [i, j, k]: [usize; 3]) -> usize {
        let n = self.points_per_axis();
        (i * n + j) * n + k
    }
}

/// Query every grid point, `chunk` points per call; values in the dense x-major order.
pub async fn decode_dense(
    grid: Grid,
    chunk: usize,
    mut query: impl AsyncFnMut(&[[f32; 3]]) -> Vec<f32>,
) -> Vec<f32> {
    let n = grid.points_per_axis();
    let total = n * n * n;
    let mut values = Vec::with_capacity(total);
    let mut points = Vec::with_capacity(chunk.min(total));
    for index in 0..total {
        points.push(grid.point([index / (n * n), index / n % n, index % n]));
        if points.len() == chunk.max(1) || index + 1 == total {
            let out = query(&points).await;
            assert_eq!(
                out.len(),
                points.len(),
                "the field answered a different count"
            );
            values.extend(out);
            points.clear();
        }
    }
    values
}

/// How coarse-to-fine decoding chooses where to refine.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Refinement {
    /// Fine cells per coarse cell along each axis.
    pub stride: usize,
    /// Coarse cells whose corners come within this of zero are refined even without a sign
    /// change (thin parts can cross and re-cross inside one coarse cell).
    pub band: f32,
}

impl Default for Refinement {
    fn default() -> Self {
        Self {
            stride: 4,
            band: 0.0,
        }
    }
}

pub struct CoarseToFine {
    pub field: SparseField,
    /// Field queries made (coarse and fine), to compare with the dense grid's `(R + 1)³`.
    pub queries: usize,
    /// Coarse cells refined, of all coarse cells.
    pub refined_cells: usize,
    pub coarse_cells: usize,
}

/// Query a coarse grid, then only the fine points of the cells near the surface.
pub async fn decode_coarse_to_fine(
    grid: Grid,
    refinement: Refinement,
    chunk: usize,
    mut query: impl AsyncFnMut(&[[f32; 3]]) -> Vec<f32>,
) -> CoarseToFine {
    let n = grid.points_per_axis();
    let stride = refinement.stride.max(1);
    // Coarse indices along an axis: every stride-th point and always the last one.
    let mut axis: Vec<usize> = (0..n).step_by(stride).collect();
    if *axis.last().expect("at least one point") != n - 1 {
        axis.push(n - 1);
    }
    let m = axis.len();
    // Dense storage, NaN where nothing was asked (a flat array beats a map by far here; the
    // official decoder holds the same full grid).
    let mut values = vec![f32::NAN; n * n * n];
    let mut queries = 0;
    let mut pending: Vec<[usize; 3]> = Vec::new();
    let mut flush = async |pending: &mut Vec<[usize; 3]>, values: &mut Vec<f32>| {
        for batch in pending.chunks(chunk.max(1)) {
            let points: Vec<[f32; 3]> = batch.iter().map(|&p| grid.point(p)).collect();
            let out = query(&points).await;
            assert_eq!(
                out.len(),
                points.len(),
                "the field answered a different count"
            );
            for (p, v) in batch.iter().zip(out) {
                values[grid.index(*p)] = v;
            }
        }
        let count = pending.len();
        pending.clear();
        count
    };
    for &i in &axis {
        for &j in &axis {
            for &k in &axis {
                pending.push([i, j, k]);
            }
        }
    }
    queries += flush(&mut pending, &mut values).await;

    // Coarse cells to refine, grown by one cell in every direction.
    let coarse = |ci: usize, cj: usize, ck: usize, values: &[f32]| -> bool {
        let mut inside = 0;
        let mut near = false;
        for c in 0..8 {
            let p = [
                axis[ci + (c & 1)],
                axis[cj + (c >> 1 & 1)],
                axis[ck + (c >> 2 & 1)],
            ];
            let v = values[grid.index(p)];
            inside += usize::from(v > 0.0);
            near |= v.abs() < refinement.band;
        }
        near || (inside != 0 && inside != 8)
    };
    let cells = m - 1;
    let mut marked = vec![false; cells * cells * cells];
    let at = |i: usize, j: usize, k: usize| (i * cells + j) * cells + k;
    for ci in 0..cells {
        for cj in 0..cells {
            for ck in 0..cells {
                if coarse(ci, cj, ck, &values) {
                    for di in ci.saturating_sub(1)..(ci + 2).min(cells) {
                        for dj in cj.saturating_sub(1)..(cj + 2).min(cells) {
                            for dk in ck.saturating_sub(1)..(ck + 2).min(cells) {
                                marked[at(di, dj, dk)] = true;
                            }
                        }
                    }
                }
            }
        }
    }

    // Every fine cell of the marked coarse cells, and the fine points not yet known.
    let mut fine_cells = Vec::new();
    let mut refined_cells = 0;
    for ci in 0..cells {
        for cj in 0..cells {
            for ck in 0..cells {
                if !marked[at(ci, cj, ck)] {
                    continue;
                }
                refined_cells += 1;
                for i in axis[ci]..=axis[ci + 1] {
                    for j in axis[cj]..=axis[cj + 1] {
                        for k in axis[ck]..=axis[ck + 1] {
                            let at = grid.index([i, j, k]);
                            // Infinity marks "queued": neighbours share their face points.
                            if values[at].is_nan() {
                                values[at] = f32::INFINITY;
                                pending.push([i, j, k]);
                            }
                            if i < axis[ci + 1] && j < axis[cj + 1] && k < axis[ck + 1] {
                                fine_cells.push([i, j, k]);
                            }
                        }
                    }
                }
            }
        }
    }
    queries += flush(&mut pending, &mut values).await;
    CoarseToFine {
        field: SparseField {
            dims: grid.dims(),
            values,
            cells: fine_cells,
        },
        queries,
        refined_cells,
        coarse_cells: cells * cells * cells,
    }
}
