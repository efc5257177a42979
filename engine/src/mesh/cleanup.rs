//! Clean-up as the reference offers it: drop degenerate faces, drop small fragments (floaters),
//! and drop vertices nothing uses any more.

use super::Mesh;

/// Remove triangles that repeat a vertex or whose area is at most `min_area`, then unused
/// vertices. Returns how many triangles went.
pub fn remove_degenerate(mesh: &mut Mesh, min_area: f32) -> usize {
    let before = mesh.triangles.len();
    let positions = &mesh.positions;
    mesh.triangles.retain(|t| {
        if t[0] == t[1] || t[1] == t[2] || t[0] == t[2] {
            return false;
        }
        let [a, b, c] = t.map(|i| positions[i as usize]);
        let u = [b[0] - a[0], b[1] - a[1], b[2] - a[2]];
        let v = [c[0] - a[0], c[1] - a[1], c[2] - a[2]];
        let cross = [
            u[1] * v[2] - u[2] * v[1],
            u[2] * v[0] - u[0] * v[2],
            u[0] * v[1] - u[1] * v[0],
        ];
        0.5 * (cross[0] * cross[0] + cross[1] * cross[1] + cross[2] * cross[2]).sqrt() > min_area
    });
    compact(mesh);
    before - mesh.triangles.len()
}

/// Keep only connected pieces holding at least `min_fraction` of all triangles (pieces are
/// joined through shared vertices). Returns how many pieces went.
pub fn remove_small_components(mesh: &mut Mesh, min_fraction: f32) -> usize {
    let mut parent: Vec<u32> = (0..mesh.positions.len() as u32).collect();
    fn find(parent: &mut [u32], mut i: u32) -> u32 {
        while parent[i as usize] != i {
            parent[i as usize] = parent[parent[i as usize] as usize];
            i = parent[i as usize];
        }
        i
    }
    for t in &mesh.triangles {
        let root = find(&mut parent, t[0]);
        for &other in &t[1..] {
            let r = find(&mut parent, other);
            parent[r as usize] = root;
        }
    }
    let mut faces_in = std::collections::HashMap::<u32, usize>::new();
    let roots: Vec<u32> = mesh
        .triangles
        .iter()
        .map(|t| find(&mut parent, t[0]))
        .collect();
    for &root in &roots {
        *faces_in.entry(root).or_default() += 1;
    }
    let threshold = (min_fraction * mesh.triangles.len() as f32).ceil() as usize;
    let dropped = faces_in.values().filter(|&&n| n < threshold).count();
    let mut keep = roots.iter().map(|root| faces_in[root] >= threshold);
    mesh.triangles.retain(|_| keep.next().unwrap_or(false));
    compact(mesh);
    dropped
}

/// How close two vertices must be to weld, as a share of the mesh's longest side: far below
/// a marching-cubes cell (1/1024 of the side at the largest octree), far above float noise.
pub const WELD_TOLERANCE: f32 = 4e-6;

/// Merge vertices within `WELD_TOLERANCE` of the longest side of each other (the first one
/// seen stays). Marching cubes makes one vertex per crossed grid edge, so where the surface
/// passes through or next to a grid point several vertices (nearly) coincide, and the
/// zero-area triangles between them would leave slits in the surface when dropped (as the
/// reference's trimesh merge, to 1e-8, leaves some). Welded, those triangles repeat a vertex
/// and go without opening the surface. Returns how many vertices merged.
pub fn weld_close(mesh: &mut Mesh) -> usize {
    let Some((lo, hi)) = mesh.bounds() else {
        return 0;
    };
    let side = (0..3).map(|d| hi[d] - lo[d]).fold(0.0f32, f32::max);
    let tolerance = f64::from(side * WELD_TOLERANCE).max(f64::MIN_POSITIVE);
    let cell = |p: &[f32; 3]| p.map(|x| (f64::from(x) / tolerance).floor() as i64);
    // Vertices kept so far, by the cell of side `tolerance` they lie in: a vertex within the
    // tolerance of one lies in one of the 27 cells around its own.
    let mut kept_in: std::collections::HashMap<[i64; 3], Vec<u32>> =
        std::collections::HashMap::new();
    let mut remap = Vec::with_capacity(mesh.positions.len());
    let mut merged = 0;
    for (i, p) in mesh.positions.iter().enumerate() {
        let home = cell(p);
        let mut found = None;
        'search: for dx in -1..=1 {
            for dy in -1..=1 {
                for dz in -1..=1 {
                    let near = [home[0] + dx, home[1] + dy, home[2] + dz];
                    for &k in kept_in.get(&near).map_or(&[][..], Vec::as_slice) {
                        let q = mesh.positions[k as usize];
                        let d2: f64 = (0..3).map(|d| f64::from(p[d] - q[d]).powi(2)).sum();
                        if d2 <= tolerance * tolerance {
                            found = Some(k);
                            break 'search;
                        }
                    }
                }
            }
        }
        remap.push(match found {
            Some(k) => {
                merged += 1;
                k
            }
            None => {
                kept_in.entry(home).or_default().push(i as u32);
                i as u32
            }
        });
    }
    if merged > 0 {
        for t in &mut mesh.triangles {
            *t = t.map(|i| remap[i as usize]);
        }
        compact(mesh);
    }
    merged
}

/// Drop vertices no triangle uses; the rest keep their order.
pub fn compact(mesh: &mut Mesh) {
    let mut used = vec![false; mesh.positions.len()];
    for t in &mesh.triangles {
        for &i in t {
            used[i as usize] = true;
        }
    }
    let mut new_index = vec![u32::MAX; mesh.positions.len()];
    let mut next = 0u32;
    for (i, &is_used) in used.iter().enumerate() {
        if is_used {
            new_index[i] = next;
            next += 1;
        }
    }
    let mut at = 0;
    mesh.positions.retain(|_| {
        at += 1;
        used[at - 1]
    });
    for t in &mut mesh.triangles {
        *t = t.map(|i| new_index[i as usize]);
    }
}

/// The reference's face budget after generation.
pub const MAX_FACES: usize = 40_000;

/// The official post-processing of a generated mesh: (nearly) coincident vertices weld (as
/// trimesh's merge does, a little wider), floaters (components under 1 % of the faces) and
/// degenerate faces go, unused vertices with them, then decimation to `max_faces` (0 keeps
/// every face).
pub fn official(mut mesh: Mesh, max_faces: usize) -> Mesh {
    weld_close(&mut mesh);
    remove_small_components(&mut mesh, 0.01);
    remove_degenerate(&mut mesh, 1e-12);
    compact(&mut mesh);
    if max_faces > 0 && mesh.triangles.len() > max_faces {
        mesh = super::decimate::decimate(&mesh, max_faces);
    }
    mesh
}
