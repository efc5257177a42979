//! Quadric-error edge collapse (Garland & Heckbert, 1997) down to a target face count: each
//! vertex carries the sum of the squared distances to the planes of its faces; the edge whose
//! merged vertex would move least off those planes collapses first, to the position that
//! minimises it. Collapses that would fold a face over, pinch the surface (the link condition)
//! or tear an open border are refused, so a closed, consistently wound mesh stays so. A refused
//! collapse is tried again once a collapse next to it changes its neighbourhood (it may be
//! allowed then), and ties are broken by vertex ids, so the same mesh always decimates alike.
//!
//! Hand-written: the maintained simplifier (meshoptimizer, through the `meshopt` crate) is C++
//! and does not build for wasm32-unknown-unknown, where the browser app needs this too.

use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap};

use super::Mesh;
use super::cleanup::compact;

/// A symmetric 4×4 quadric, upper triangle: a², ab, ac, ad, b², bc, bd, c², cd, d².
#[derive(Debug, Clone, Copy, Default)]
struct Quadric([f64; 10]);

impl Quadric {
    /// `weight × (n·p + d)²` for the plane `n·p + d = 0` (`n` unit length).
    fn plane(n: [f64; 3], d: f64, weight: f64) -> Self {
        let [a, b, c] = n;
        Self(
            [
                a * a,
                a * b,
                a * c,
                a * d,
                b * b,
                b * c,
                b * d,
                c * c,
                c * d,
                d * d,
            ]
            .map(|x| x * weight),
        )
    }

    fn add(self, other: Self) -> Self {
        Self(std::array::from_fn(|i| self.0[i] + other.0[i]))
    }

    fn error(&self, [x, y, z]: [f64; 3]) -> f64 {
        let q = &self.0;
        q[0] * x * x
            + 2.0 * q[1] * x * y
            + 2.0 * q[2] * x * z
            + 2.0 * q[3] * x
            + q[4] * y * y
            + 2.0 * q[5] * y * z
            + 2.0 * q[6] * y
            + q[7] * z * z
            + 2.0 * q[8] * z
            + q[9]
    }

    /// The point of least error, when the quadric pins one down (solves the 3×3 system).
    fn optimum(&self) -> Option<[f64; 3]> {
        let q = &self.0;
        let m = [[q[0], q[1], q[2]], [q[1], q[4], q[5]], [q[2], q[5], q[7]]];
        let rhs = [-q[3], -q[6], -q[8]];
        let det = |m: &[[f64; 3]; 3]| {
            m[0][0] * (m[1][1] * m[2][2] - m[1][2] * m[2][1])
                - m[0][1] * (m[1][0] * m[2][2] - m[1][2] * m[2][0])
                + m[0][2] * (m[1][0] * m[2][1] - m[1][1] * m[2][0])
        };
        let d = det(&m);
        let scale = q[0].abs() + q[4].abs() + q[7].abs();
        if d.abs() <= 1e-9 * scale.powi(3).max(f64::MIN_POSITIVE) {
            return None;
        }
        // Cramer's rule.
        Some(std::array::from_fn(|col| {
            let mut mc = m;
            for row in 0..3 {
                mc[row][col] = rhs[row];
            }
            det(&mc) / d
        }))
    }
}

fn sub(a: [f64; 3], b: [f64; 3]) -> [f64; 3] {
    [a[0] - b[0], a[1] - b[1], a[2] - b[2]]
}

fn cross(u: [f64; 3], v: [f64; 3]) -> [f64; 3] {
    [
        u[1] * v[2] - u[2] * v[1],
        u[2] * v[0] - u[0] * v[2],
        u[0] * v[1] - u[1] * v[0],
    ]
}

fn dot(u: [f64; 3], v: [f64; 3]) -> f64 {
    u[0] * v[0] + u[1] * v[1] + u[2] * v[2]
}

fn normalize(v: [f64; 3]) -> Option<[f64; 3]> {
    let len = dot(v, v).sqrt();
    (len > 0.0).then(|| v.map(|x| x / len))
}

/// A candidate collapse of `from` into `into` at `target`, valid while neither vertex changed.
struct Candidate {
    cost: f64,
    into: u32,
    from: u32,
    stamps: (u32, u32),
    target: [f64; 3],
}

impl PartialEq for Candidate {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for Candidate {}
impl PartialOrd for Candidate {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Candidate {
    /// Reversed, so that the heap pops the cheapest collapse first; equal costs go by ids.
    fn cmp(&self, other: &Self) -> Ordering {
        other
            .cost
            .total_cmp(&self.cost)
            .then_with(|| (other.into, other.from).cmp(&(self.into, self.from)))
    }
}

struct State {
    positions: Vec<[f64; 3]>,
    triangles: Vec<[u32; 3]>,
    alive: Vec<bool>,
    faces_of: Vec<Vec<u32>>,
    quadrics: Vec<Quadric>,
    stamps: Vec<u32>,
    removed: Vec<bool>,
    on_border: Vec<bool>,
    /// Edges whose collapse was refused and has not been tried again, each once (min, max) …
    refused: BTreeSet<(u32, u32)>,
    /// … and listed under both ends, so that a change at either finds them.
    refused_at: Vec<Vec<u32>>,
}

impl State {
    /// Whether `a` and `b` (both still there) share a face.
    fn adjacent(&self, a: u32, b: u32) -> bool {
        a != b
            && !self.removed[a as usize]
            && !self.removed[b as usize]
            && self.faces_of[a as usize]
                .iter()
                .any(|&f| self.triangles[f as usize].contains(&b))
    }

    fn neighbours(&self, v: u32) -> Vec<u32> {
        let mut out: Vec<u32> = self.faces_of[v as usize]
            .iter()
            .flat_map(|&f| self.triangles[f as usize])
            .filter(|&w| w != v)
            .collect();
        out.sort_unstable();
        out.dedup();
        out
    }

    fn candidate(&self, a: u32, b: u32) -> Candidate {
        let q = self.quadrics[a as usize].add(self.quadrics[b as usize]);
        let (pa, pb) = (self.positions[a as usize], self.positions[b as usize]);
        let mid = [
            (pa[0] + pb[0]) / 2.0,
            (pa[1] + pb[1]) / 2.0,
            (pa[2] + pb[2]) / 2.0,
        ];
        let target = q
            .optimum()
            .filter(|p| p.iter().all(|x| x.is_finite()))
            .unwrap_or_else(|| {
                [pa, pb, mid]
                    .into_iter()
                    .min_by(|x, y| q.error(*x).total_cmp(&q.error(*y)))
                    .expect("three choices")
            });
        // A border vertex stays where it is when it merges with an interior one.
        let (into, from, target) = match (self.on_border[a as usize], self.on_border[b as usize]) {
            (true, false) => (a, b, pa),
            (false, true) => (b, a, pb),
            _ => (a, b, target),
        };
        Candidate {
            cost: q.error(target).max(0.0),
            into,
            from,
            stamps: (self.stamps[into as usize], self.stamps[from as usize]),
            target,
        }
    }

    /// Whether collapsing `from` into `into` at `target` keeps the surface a manifold with no
    /// folded faces.
    fn allowed(&self, into: u32, from: u32, target: [f64; 3]) -> bool {
        let shared: Vec<u32> = self.faces_of[from as usize]
            .iter()
            .copied()
            .filter(|&f| self.triangles[f as usize].contains(&into))
            .collect();
        if shared.is_empty() {
            return false;
        }
        // An interior edge between two border vertices would pinch the border.
        if shared.len() == 2 && self.on_border[into as usize] && self.on_border[from as usize] {
            return false;
        }
        // Link condition: the vertices both ends see are exactly the shared faces' apexes.
        let apexes: Vec<u32> = shared
            .iter()
            .flat_map(|&f| self.triangles[f as usize])
            .filter(|&w| w != into && w != from)
            .collect();
        let a = self.neighbours(into);
        let common = self
            .neighbours(from)
            .into_iter()
            .filter(|w| a.binary_search(w).is_ok())
            .count();
        if common != apexes.len() {
            return false;
        }
        // No face around either end may flip or collapse to a sliver.
        for (moving, other) in [(from, into), (into, from)] {
            for &f in &self.faces_of[moving as usize] {
                let t = self.triangles[f as usize];
                if t.contains(&other) {
                    continue;
                }
                let corners = t.map(|v| self.positions[v as usize]);
                let moved = t.map(|v| {
                    if v == moving {
                        target
                    } else {
                        self.positions[v as usize]
                    }
                });
                let before = cross(sub(corners[1], corners[0]), sub(corners[2], corners[0]));
                let after = cross(sub(moved[1], moved[0]), sub(moved[2], moved[0]));
                let (Some(nb), Some(na)) = (normalize(before), normalize(after)) else {
                    return false;
                };
                if dot(nb, na) < 0.2 {
                    return false;
                }
            }
        }
        true
    }

    fn collapse(&mut self, into: u32, from: u32, target: [f64; 3]) -> usize {
        let mut killed = 0;
        for f in std::mem::take(&mut self.faces_of[from as usize]) {
            let t = &mut self.triangles[f as usize];
            if t.contains(&into) {
                self.alive[f as usize] = false;
                killed += 1;
                for &w in t.iter() {
                    if w != from {
                        self.faces_of[w as usize].retain(|&g| g != f);
                    }
                }
            } else {
                for v in t.iter_mut() {
                    if *v == from {
                        *v = into;
                    }
                }
                self.faces_of[into as usize].push(f);
            }
        }
        self.positions[into as usize] = target;
        self.quadrics[into as usize] =
            self.quadrics[into as usize].add(self.quadrics[from as usize]);
        self.removed[from as usize] = true;
        self.stamps[into as usize] += 1;
        killed
    }
}

/// Collapse edges until at most `target_faces` triangles remain (or no allowed collapse is
/// left). Vertices keep their ids' order; unused ones are dropped.
pub fn decimate(mesh: &Mesh, target_faces: usize) -> Mesh {
    let n = mesh.positions.len();
    let mut state = State {
        positions: mesh.positions.iter().map(|p| p.map(f64::from)).collect(),
        triangles: mesh.triangles.clone(),
        alive: vec![true; mesh.triangles.len()],
        faces_of: vec![Vec::new(); n],
        quadrics: vec![Quadric::default(); n],
        stamps: vec![0; n],
        removed: vec![false; n],
        on_border: vec![false; n],
        refused: BTreeSet::new(),
        refused_at: vec![Vec::new(); n],
    };
    // Ordered, so that the first candidates (and so every tie) come in the same order each run.
    let mut edge_faces: BTreeMap<(u32, u32), Vec<u32>> = BTreeMap::new();
    for (f, t) in mesh.triangles.iter().enumerate() {
        for &v in t {
            state.faces_of[v as usize].push(f as u32);
        }
        for (a, b) in [(t[0], t[1]), (t[1], t[2]), (t[2], t[0])] {
            edge_faces
                .entry((a.min(b), a.max(b)))
                .or_default()
                .push(f as u32);
        }
        let p = t.map(|v| state.positions[v as usize]);
        let normal = cross(sub(p[1], p[0]), sub(p[2], p[0]));
        if let Some(unit) = normalize(normal) {
            // Area-weighted, so that large faces hold their plane hardest.
            let area = dot(normal, normal).sqrt() / 2.0;
            let plane = Quadric::plane(unit, -dot(unit, p[0]), area);
            for &v in t {
                state.quadrics[v as usize] = state.quadrics[v as usize].add(plane);
            }
        }
    }
    // Border edges: a steep plane through the edge, perpendicular to its face, keeps the
    // outline where it is.
    for (&(a, b), faces) in &edge_faces {
        if faces.len() != 1 {
            continue;
        }
        state.on_border[a as usize] = true;
        state.on_border[b as usize] = true;
        let t = mesh.triangles[faces[0] as usize];
        let p = t.map(|v| state.positions[v as usize]);
        let face_normal = cross(sub(p[1], p[0]), sub(p[2], p[0]));
        let (pa, pb) = (state.positions[a as usize], state.positions[b as usize]);
        let edge = sub(pb, pa);
        if let Some(unit) = normalize(cross(edge, face_normal)) {
            let plane = Quadric::plane(unit, -dot(unit, pa), 1000.0 * dot(edge, edge));
            for v in [a, b] {
                state.quadrics[v as usize] = state.quadrics[v as usize].add(plane);
            }
        }
    }
    let mut heap: BinaryHeap<Candidate> = edge_faces
        .keys()
        .map(|&(a, b)| state.candidate(a, b))
        .collect();
    let mut faces = mesh.triangles.len();
    while faces > target_faces {
        let Some(c) = heap.pop() else { break };
        if state.removed[c.into as usize]
            || state.removed[c.from as usize]
            || c.stamps != (state.stamps[c.into as usize], state.stamps[c.from as usize])
        {
            continue;
        }
        if !state.allowed(c.into, c.from, c.target) {
            let edge = (c.into.min(c.from), c.into.max(c.from));
            if state.refused.insert(edge) {
                state.refused_at[c.into as usize].push(c.from);
                state.refused_at[c.from as usize].push(c.into);
            }
            continue;
        }
        faces -= state.collapse(c.into, c.from, c.target);
        let ring = state.neighbours(c.into);
        for &w in &ring {
            heap.push(state.candidate(c.into, w));
        }
        // The collapse changed the links and faces around the ring: collapses refused there may
        // be allowed now (left out, the cheapest ones can be lost for good while dearer ones go
        // ahead: a cube's edge vertex stayed while two corners merged).
        for v in std::iter::once(c.into).chain(ring).chain([c.from]) {
            for w in std::mem::take(&mut state.refused_at[v as usize]) {
                let (a, b) = (v.min(w), v.max(w));
                // The other end's list still names the edge; the set says it is taken.
                if state.refused.remove(&(a, b)) && state.adjacent(a, b) {
                    heap.push(state.candidate(a, b));
                }
            }
        }
    }
    let mut out = Mesh {
        positions: state
            .positions
            .iter()
            .map(|p| p.map(|x| x as f32))
            .collect(),
        triangles: state
            .triangles
            .iter()
            .zip(&state.alive)
            .filter(|(_, alive)| **alive)
            .map(|(t, _)| *t)
            .collect(),
    };
    compact(&mut out);
    out
}
