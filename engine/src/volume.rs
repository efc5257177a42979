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

/// The official `FlashVDMVolumeDecoding` (`enable_flashvdm()`): coarse-to-fine levels, each
/// group of queries attending only to the latents its sampled queries score highest (see
/// [`Group`]). Its defaults are the official ones.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FlashVdm {
    /// Levels halve the resolution while it stays at least this (official 63).
    pub min_resolution: usize,
    /// The first level is decoded as `mini_grids`³ blocks, each one group (official 4).
    pub mini_grids: usize,
    /// The later levels' points are grouped into `buckets`³ boxes of their bounding box
    /// (official 6).
    pub buckets: usize,
    /// Queries per call (the official `num_chunks`): whole groups, at least one.
    pub chunk: usize,
}

impl Default for FlashVdm {
    fn default() -> Self {
        Self {
            min_resolution: 63,
            mini_grids: 4,
            buckets: 6,
            chunk: 8000,
        }
    }
}

/// Queries that share one key/value selection: `len` consecutive points of a call, every
/// `stride`-th of them (from the first) sampled to score the latents (the official subsampling:
/// 100 in the first level's blocks, 50 in the later levels' buckets).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Group {
    pub len: usize,
    pub stride: usize,
}

/// What [`decode_flashvdm`] made.
pub struct FlashVdmField {
    /// The last level's grid (NaN where nothing was asked) and its cells whose eight corners
    /// were all asked.
    pub field: SparseField,
    /// The levels' resolutions (the last is the grid's).
    pub resolutions: Vec<usize>,
    pub queries: usize,
}

impl FlashVdm {
    /// The levels' resolutions for an octree resolution: halved while at least
    /// `min_resolution`, the first snapped to one less than a multiple of `mini_grids` (so its
    /// points split into equal blocks), the others doubling it (R = 384: [95, 190, 380]).
    pub fn resolutions(&self, octree_resolution: usize) -> Vec<usize> {
        let mut levels = Vec::new();
        let mut r = octree_resolution;
        if r < self.min_resolution {
            levels.push(r);
        }
        while r >= self.min_resolution {
            levels.push(r);
            r /= 2;
        }
        levels.reverse();
        let m = self.mini_grids.max(1);
        // Python's round: halves to even.
        let first = ((levels[0] as f64 / m as f64).round_ties_even() as usize * m).max(m) - 1;
        (0..levels.len()).map(|i| first << i).collect()
    }
}

/// Decode the field FlashVDM's way: the first level densely, block by block; each later level
/// at the points near the previous level's surface, bucket by bucket. `query(points, groups)`
/// answers the field at `points`, laid out as `groups` in order.
pub async fn decode_flashvdm(
    octree_resolution: usize,
    settings: FlashVdm,
    mut query: impl AsyncFnMut(&[[f32; 3]], &[Group]) -> Vec<f32>,
) -> FlashVdmField {
    let resolutions = settings.resolutions(octree_resolution);
    let mut queries = 0;

    // The first level: blocks of the dense grid (linspace points), block-major, x-major
    // inside each.
    let first = Grid::official(resolutions[0]);
    let n = first.points_per_axis();
    let m = settings.mini_grids.max(1);
    let side = n / m;
    let block_points = side * side * side;
    let per_call = (settings.chunk / block_points).max(1);
    let mut values = vec![f32::NAN; n * n * n];
    let blocks: Vec<[usize; 3]> = (0..m * m * m)
        .map(|b| [b / (m * m), b / m % m, b % m])
        .collect();
    for calls in blocks.chunks(per_call) {
        let mut at = Vec::with_capacity(calls.len() * block_points);
        for &[a, b, c] in calls {
            for i in 0..side {
                for j in 0..side {
                    for k in 0..side {
                        at.push([a * side + i, b * side + j, c * side + k]);
                    }
                }
            }
        }
        let points: Vec<[f32; 3]> = at.iter().map(|&p| first.point(p)).collect();
        let groups = vec![
            Group {
                len: block_points,
                stride: 100,
            };
            calls.len()
        ];
        let out = query(&points, &groups).await;
        assert_eq!(
            out.len(),
            points.len(),
            "the field answered a different count"
        );
        queries += points.len();
        for (p, v) in at.iter().zip(out) {
            values[first.index(*p)] = v;
        }
    }

    let mut dims = n;
    for (level, &resolution) in resolutions.iter().enumerate().skip(1) {
        let last = level + 1 == resolutions.len();
        // The previous level's cells near its surface, grown once (not before the last).
        let mut near = near_surface(&values, dims);
        if !last {
            near = dilate(&near, dims);
        }
        let fine = resolution + 1;
        let mut marked = vec![false; fine * fine * fine];
        for i in 0..dims {
            for j in 0..dims {
                for k in 0..dims {
                    if near[(i * dims + j) * dims + k] {
                        marked[((2 * i) * fine + 2 * j) * fine + 2 * k] = true;
                    }
                }
            }
        }
        for _ in 0..if last { 2 } else { 1 } {
            marked = dilate(&marked, fine);
        }
        // The official points of a later level: index × step + min in f32, not linspace.
        let step = (2.0 * 1.01 / resolution as f64) as f32;
        let min = -1.01f64 as f32;
        let at: Vec<usize> = (0..marked.len()).filter(|&i| marked[i]).collect();
        let point = |index: usize| {
            let [i, j, k] = [index / (fine * fine), index / fine % fine, index % fine];
            [i, j, k].map(|c| c as f32 * step + min)
        };
        let points: Vec<[f32; 3]> = at.iter().map(|&i| point(i)).collect();
        let order = buckets(&points, settings.buckets);
        values = vec![f32::NAN; fine * fine * fine];
        dims = fine;
        // Whole buckets per call, up to `chunk` queries (a bigger bucket alone).
        let mut start = 0;
        while start < order.len() {
            let mut end = start;
            let mut groups = Vec::new();
            while end < order.len() {
                let bucket = order[end].0;
                let len = order[end..]
                    .iter()
                    .take_while(|(b, _)| *b == bucket)
                    .count();
                let taken = end - start;
                if taken > 0 && taken + len >= settings.chunk {
                    break;
                }
                groups.push(Group { len, stride: 50 });
                end += len;
            }
            let call: Vec<[f32; 3]> = order[start..end].iter().map(|&(_, p)| points[p]).collect();
            let out = query(&call, &groups).await;
            assert_eq!(
                out.len(),
                call.len(),
                "the field answered a different count"
            );
            queries += call.len();
            for (&(_, p), v) in order[start..end].iter().zip(out) {
                values[at[p]] = v;
            }
            start = end;
        }
    }

    let cells = finite_cells(&values, dims);
    FlashVdmField {
        field: SparseField {
            dims: [dims; 3],
            values,
            cells,
        },
        resolutions,
        queries,
    }
}

/// Points on a grid whose sign differs from a neighbour's (the official
/// `extract_near_surface_volume_fn` at level 0: a neighbour beyond the grid or not asked
/// counts as the point itself) or whose value is within 0.95 of zero. Points not asked are
/// never near.
fn near_surface(values: &[f32], n: usize) -> Vec<bool> {
    let at = |i: usize, j: usize, k: usize| values[(i * n + j) * n + k];
    let sign = |v: f32| {
        if v > 0.0 {
            1
        } else if v < 0.0 {
            -1
        } else {
            0
        }
    };
    let mut near = vec![false; values.len()];
    for i in 0..n {
        for j in 0..n {
            for k in 0..n {
                let v = at(i, j, k);
                if v.is_nan() {
                    continue;
                }
                let neighbours = [
                    (i.wrapping_sub(1), j, k),
                    (i + 1, j, k),
                    (i, j.wrapping_sub(1), k),
                    (i, j + 1, k),
                    (i, j, k.wrapping_sub(1)),
                    (i, j, k + 1),
                ];
                let crossing = neighbours.iter().any(|&(a, b, c)| {
                    a < n && b < n && c < n && {
                        let w = at(a, b, c);
                        !w.is_nan() && sign(w) != sign(v)
                    }
                });
                near[(i * n + j) * n + k] = crossing || v.abs() < 0.95;
            }
        }
    }
    near
}

/// Grow marked points by one in each of the 26 directions (the official 3×3×3 ones
/// convolution, zero-padded, then `> 0`).
fn dilate(marked: &[bool], n: usize) -> Vec<bool> {
    let mut out = vec![false; marked.len()];
    for i in 0..n {
        for j in 0..n {
            for k in 0..n {
                if !marked[(i * n + j) * n + k] {
                    continue;
                }
                for a in i.saturating_sub(1)..(i + 2).min(n) {
                    for b in j.saturating_sub(1)..(j + 2).min(n) {
                        for c in k.saturating_sub(1)..(k + 2).min(n) {
                            out[(a * n + b) * n + c] = true;
                        }
                    }
                }
            }
        }
    }
    out
}

/// Each point's bucket (`buckets`³ boxes over the points' bounding box, x-major), with the
/// points sorted by bucket, keeping their order within one (a stable sort).
fn buckets(points: &[[f32; 3]], buckets: usize) -> Vec<(usize, usize)> {
    let mut lo = [f32::INFINITY; 3];
    let mut hi = [f32::NEG_INFINITY; 3];
    for p in points {
        for d in 0..3 {
            lo[d] = lo[d].min(p[d]);
            hi[d] = hi[d].max(p[d]);
        }
    }
    let scale = buckets as f32 - 0.001;
    let mut order: Vec<(usize, usize)> = points
        .iter()
        .enumerate()
        .map(|(index, p)| {
            let cell = |d: usize| {
                let span = hi[d] - lo[d];
                if span > 0.0 {
                    ((p[d] - lo[d]) / span * scale).floor() as usize
                } else {
                    0
                }
            };
            ((cell(0) * buckets + cell(1)) * buckets + cell(2), index)
        })
        .collect();
    order.sort_by_key(|&(bucket, _)| bucket);
    order
}

/// The cells of an `n`³ grid whose eight corners all have values.
fn finite_cells(values: &[f32], n: usize) -> Vec<[usize; 3]> {
    let known = |i: usize, j: usize, k: usize| !values[(i * n + j) * n + k].is_nan();
    let mut cells = Vec::new();
    for i in 0..n.saturating_sub(1) {
        for j in 0..n - 1 {
            for k in 0..n - 1 {
                let all = (0..8).all(|c| known(i + (c & 1), j + (c >> 1 & 1), k + (c >> 2 & 1)));
                if all {
                    cells.push([i, j, k]);
                }
            }
        }
    }
    cells
}
