//! From a field to a triangle mesh: `marching_cubes` extracts the zero level set of a field
//! that is positive inside; [`Mesh`] holds the result with the measures tests and clean-up use.

pub mod cleanup;
pub mod colour;
pub mod decimate;
pub mod distance;
pub mod export;
pub mod marching_cubes;
pub mod preview;

pub use marching_cubes::{Field, SparseField, marching_cubes, marching_cubes_sparse};

/// An indexed triangle mesh; triangles wind counter-clockwise seen from outside.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Mesh {
    pub positions: Vec<[f32; 3]>,
    pub triangles: Vec<[u32; 3]>,
}

impl Mesh {
    /// Signed enclosed volume (divergence theorem); positive for outward winding.
    pub fn signed_volume(&self) -> f64 {
        self.triangles
            .iter()
            .map(|t| {
                let [a, b, c] = t.map(|i| self.positions[i as usize].map(f64::from));
                (a[0] * (b[1] * c[2] - b[2] * c[1]) - a[1] * (b[0] * c[2] - b[2] * c[0])
                    + a[2] * (b[0] * c[1] - b[1] * c[0]))
                    / 6.0
            })
            .sum()
    }

    /// Axis-aligned bounds `(min, max)`, or `None` for an empty mesh.
    pub fn bounds(&self) -> Option<([f32; 3], [f32; 3])> {
        let first = *self.positions.first()?;
        Some(
            self.positions
                .iter()
                .fold((first, first), |(mut lo, mut hi), p| {
                    for d in 0..3 {
                        lo[d] = lo[d].min(p[d]);
                        hi[d] = hi[d].max(p[d]);
                    }
                    (lo, hi)
                }),
        )
    }

    /// Edges used by exactly one triangle (none for a closed surface).
    pub fn boundary_edges(&self) -> usize {
        let mut count = std::collections::HashMap::new();
        for t in &self.triangles {
            for (a, b) in [(t[0], t[1]), (t[1], t[2]), (t[2], t[0])] {
                *count.entry((a.min(b), a.max(b))).or_insert(0u32) += 1;
            }
        }
        count.values().filter(|&&n| n == 1).count()
    }

    /// Whether every interior edge is traversed once in each direction (consistent winding).
    pub fn consistently_oriented(&self) -> bool {
        let mut directed = std::collections::HashSet::new();
        for t in &self.triangles {
            for (a, b) in [(t[0], t[1]), (t[1], t[2]), (t[2], t[0])] {
                if !directed.insert((a, b)) {
                    return false;
                }
            }
        }
        true
    }
}
