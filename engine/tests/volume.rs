//! Volume decoding on analytic fields: the official grid, and coarse-to-fine decoding giving
//! the dense mesh with a fraction of the queries.

use futures::executor::block_on;
use orfeas_engine::mesh::{Field, Mesh, marching_cubes, marching_cubes_sparse};
use orfeas_engine::volume::{Grid, Refinement, decode_coarse_to_fine, decode_dense};

/// Positive inside: two balls of different size (a small one tests that thin parts survive).
fn two_balls(p: &[f32; 3]) -> f32 {
    let ball = |c: [f32; 3], r: f32| {
        r - ((p[0] - c[0]).powi(2) + (p[1] - c[1]).powi(2) + (p[2] - c[2]).powi(2)).sqrt()
    };
    ball([-0.3, 0.0, 0.1], 0.5).max(ball([0.55, 0.2, -0.2], 0.12))
}

fn sorted_positions(mesh: &Mesh) -> Vec<[u32; 3]> {
    let mut p: Vec<[u32; 3]> = mesh.positions.iter().map(|v| v.map(f32::to_bits)).collect();
    p.sort_unstable();
    p
}

fn sorted_triangles(mesh: &Mesh) -> Vec<[[u32; 3]; 3]> {
    // Triangles as position triples, rotated to start at the smallest (winding kept).
    let mut t: Vec<[[u32; 3]; 3]> = mesh
        .triangles
        .iter()
        .map(|t| {
            let v = t.map(|i| mesh.positions[i as usize].map(f32::to_bits));
            let first = (0..3).min_by_key(|&r| v[r]).unwrap();
            [v[first], v[(first + 1) % 3], v[(first + 2) % 3]]
        })
        .collect();
    t.sort_unstable();
    t
}

#[test]
fn the_grid_is_numpy_linspace_flattened_x_major() {
    let grid = Grid::official(256);
    assert_eq!(grid.points_per_axis(), 257);
    assert_eq!(grid.coordinate(0), -1.01);
    assert_eq!(grid.coordinate(256), 1.01);
    assert_eq!(grid.coordinate(128), 0.0);
    // numpy: np.linspace(-1.01, 1.01, 257)[1] as float32
    assert_eq!(grid.coordinate(1), (-1.01f64 + 2.02 / 256.0) as f32);
    assert_eq!(grid.index([1, 2, 3]), 257 * 257 + 2 * 257 + 3);
    let values = block_on(decode_dense(
        Grid::official(4),
        7,
        async |points: &[[f32; 3]]| {
            points
                .iter()
                .map(|p| p[0] * 100.0 + p[1] * 10.0 + p[2])
                .collect()
        },
    ));
    assert_eq!(values.len(), 125);
    let g = Grid::official(4);
    let p = g.point([3, 1, 4]);
    assert_eq!(
        values[g.index([3, 1, 4])],
        p[0] * 100.0 + p[1] * 10.0 + p[2]
    );
}

#[test]
fn coarse_to_fine_gives_the_dense_mesh_with_fewer_queries() {
    for (resolution, stride) in [(64, 4), (96, 8), (50, 4)] {
        let grid = Grid::official(resolution);
        let chunk = 5000;
        let field = async |points: &[[f32; 3]]| points.iter().map(two_balls).collect::<Vec<f32>>();
        let dense = block_on(decode_dense(grid, chunk, field));
        let dense_mesh = marching_cubes(Field {
            values: &dense,
            dims: grid.dims(),
        });
        let sparse = block_on(decode_coarse_to_fine(
            grid,
            Refinement { stride, band: 0.0 },
            chunk,
            async |points: &[[f32; 3]]| points.iter().map(two_balls).collect::<Vec<f32>>(),
        ));
        // Every queried value is the dense field's value.
        let mut known = 0;
        for (index, &value) in sparse.field.values.iter().enumerate() {
            if !value.is_nan() {
                assert_eq!(value, dense[index]);
                known += 1;
            }
        }
        assert_eq!(known, sparse.queries, "each point asked once");
        let sparse_mesh = marching_cubes_sparse(&sparse.field);
        assert_eq!(
            sparse_mesh.positions.len(),
            dense_mesh.positions.len(),
            "R={resolution}"
        );
        assert_eq!(
            sparse_mesh.triangles.len(),
            dense_mesh.triangles.len(),
            "R={resolution}"
        );
        assert_eq!(
            sorted_positions(&sparse_mesh),
            sorted_positions(&dense_mesh)
        );
        assert_eq!(
            sorted_triangles(&sparse_mesh),
            sorted_triangles(&dense_mesh)
        );
        assert_eq!(sparse_mesh.boundary_edges(), 0);
        assert!(sparse_mesh.consistently_oriented());
        let dense_queries = grid.points_per_axis().pow(3);
        assert!(
            sparse.queries * 2 < dense_queries,
            "R={resolution}: {} queries vs {dense_queries} dense",
            sparse.queries
        );
        assert!(sparse.refined_cells < sparse.coarse_cells);
    }
}

#[test]
fn a_band_refines_where_a_thin_part_hides_between_coarse_points() {
    // A ball smaller than a coarse cell, centred between coarse points: no coarse corner sees
    // it inside, so sign changes alone miss it; a band of the cell's size catches it.
    let grid = Grid::official(64);
    let centre = [
        grid.coordinate(34),
        grid.coordinate(34),
        grid.coordinate(34),
    ];
    let tiny = move |p: &[f32; 3]| {
        0.03 - ((p[0] - centre[0]).powi(2)
            + (p[1] - centre[1]).powi(2)
            + (p[2] - centre[2]).powi(2))
        .sqrt()
    };
    let decode = |band| {
        let sparse = block_on(decode_coarse_to_fine(
            grid,
            Refinement { stride: 8, band },
            4096,
            async |points: &[[f32; 3]]| points.iter().map(tiny).collect::<Vec<f32>>(),
        ));
        marching_cubes_sparse(&sparse.field)
    };
    assert!(decode(0.0).triangles.is_empty(), "missed without a band");
    let caught = decode(0.3);
    assert!(!caught.triangles.is_empty());
    assert_eq!(caught.boundary_edges(), 0);
}
