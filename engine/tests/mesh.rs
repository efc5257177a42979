//! Surface extraction against the official pipeline's output (`mesh.io.safetensors`: the
//! scikit-image marching cubes, the official scaling and face flip), compared as geometry.
//! The fixture folder comes from `ORFEAS_FIXTURES` (default `../shared/fixtures/public`).

use std::path::PathBuf;

use orfeas_engine::mesh::marching_cubes::scale_to_bounds;
use orfeas_engine::mesh::{Field, Mesh, marching_cubes};
use safetensors::SafeTensors;

fn fixtures() -> PathBuf {
    std::env::var_os("ORFEAS_FIXTURES")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/fixtures/public")
        })
}

struct Reference {
    field: Vec<f32>,
    dims: [usize; 3],
    mesh: Mesh,
}

fn reference(prefix: &str) -> Reference {
    let path = fixtures().join("mesh.io.safetensors");
    let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let tensors = SafeTensors::deserialize(&bytes).unwrap();
    let f32s = |name: &str| -> (Vec<f32>, Vec<usize>) {
        let view = tensors.tensor(&format!("{prefix}.{name}")).unwrap();
        let values = view
            .data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
            .collect();
        (values, view.shape().to_vec())
    };
    let (field, shape) = f32s("field");
    let (verts, _) = f32s("verts");
    let faces = tensors.tensor(&format!("{prefix}.faces")).unwrap();
    let triangles = faces
        .data()
        .chunks_exact(12)
        .map(|b| {
            std::array::from_fn(|c| {
                i32::from_le_bytes(b[c * 4..c * 4 + 4].try_into().unwrap()) as u32
            })
        })
        .collect();
    Reference {
        field,
        dims: [shape[0], shape[1], shape[2]],
        mesh: Mesh {
            positions: verts.chunks_exact(3).map(|v| [v[0], v[1], v[2]]).collect(),
            triangles,
        },
    }
}

/// The largest distance from a vertex of `a` to the nearest vertex of `b`.
fn one_sided(a: &Mesh, b: &Mesh) -> f32 {
    a.positions
        .iter()
        .map(|p| {
            b.positions
                .iter()
                .map(|q| (0..3).map(|d| (p[d] - q[d]).powi(2)).sum::<f32>())
                .fold(f32::INFINITY, f32::min)
                .sqrt()
        })
        .fold(0.0, f32::max)
}

fn extract(reference: &Reference) -> Mesh {
    let mut mesh = marching_cubes(Field {
        values: &reference.field,
        dims: reference.dims,
    });
    scale_to_bounds(&mut mesh, reference.dims, [-1.01; 3], [1.01; 3]);
    mesh
}

/// Same vertices (one per crossed grid edge, at the same interpolated points), same vertex and
/// face counts, consistent winding. Triangulations may differ inside a cell, so faces are not
/// compared one by one.
fn assert_same_geometry(name: &str, ours: &Mesh, theirs: &Mesh) {
    let chamfer = one_sided(ours, theirs).max(one_sided(theirs, ours));
    let (v_ours, v_theirs) = (ours.signed_volume(), theirs.signed_volume());
    eprintln!(
        "{name}: {} / {} vertices, {} / {} faces, Chamfer (max) {chamfer:.2e}, volume {v_ours:.6} / {v_theirs:.6}",
        ours.positions.len(),
        theirs.positions.len(),
        ours.triangles.len(),
        theirs.triangles.len()
    );
    assert!(chamfer < 1e-5, "{name}: vertices differ by {chamfer}");
    assert_eq!(
        ours.positions.len(),
        theirs.positions.len(),
        "{name}: vertex count"
    );
    assert_eq!(
        ours.triangles.len(),
        theirs.triangles.len(),
        "{name}: face count"
    );
    assert!(ours.consistently_oriented(), "{name}: winding");
    // Enclosed volume is defined for closed surfaces only (field_a leaves the grid).
    if ours.boundary_edges() == 0 && theirs.boundary_edges() == 0 {
        assert!(
            ((v_ours - v_theirs) / v_theirs).abs() < 0.005,
            "{name}: volume {v_ours} vs {v_theirs}"
        );
    }
}

#[test]
fn parity_mesh_sphere() {
    let reference = reference("sphere");
    let ours = extract(&reference);
    assert_same_geometry("sphere", &ours, &reference.mesh);
    assert_eq!(
        ours.boundary_edges(),
        0,
        "a closed field gives a watertight mesh"
    );
    assert!(ours.signed_volume() > 0.0, "outward winding");
}

#[test]
fn parity_mesh_field_a() {
    let reference = reference("field_a");
    let ours = extract(&reference);
    assert_same_geometry("field_a", &ours, &reference.mesh);
    assert_eq!(
        ours.boundary_edges(),
        reference.mesh.boundary_edges(),
        "the same open rim where the surface leaves the grid"
    );
}
