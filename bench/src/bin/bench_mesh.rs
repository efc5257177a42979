//! Mesh benchmark: marching-cubes throughput (voxels/s) on 128³ and 256³ fields against
//! scikit-image's `marching_cubes` (Lewiner) on the same field in the same run, and the
//! instant preview's build time for a 512² mask; coarse-to-fine volume decoding's field
//! queries against the dense grid's at octree resolutions 128/256/384 (same mesh); quadric
//! decimation to the `faces` presets (2 000, 10 000 and the reference's 40 000) with each one's
//! distance to the undecimated surface.
//!
//! `cargo run --release -p orfeas --bin bench-mesh -- [--python PATH] [--sizes 128,256]`
//! needs a Python with scikit-image for the baseline (e.g. a venv with
//! `pip install scikit-image==0.24.0`); without it only our figures are printed.

use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result};
use orfeas_engine::mesh::decimate::decimate;
use orfeas_engine::mesh::distance::surface_distance;
use orfeas_engine::mesh::{Field, marching_cubes, marching_cubes_sparse, preview};
use orfeas_engine::volume::{Grid, Refinement, decode_coarse_to_fine, decode_dense};

/// Run a future whose field never waits (an analytic function) to completion.
fn block_on<T>(future: impl std::future::Future<Output = T>) -> T {
    let mut future = std::pin::pin!(future);
    let mut context = std::task::Context::from_waker(std::task::Waker::noop());
    match future.as_mut().poll(&mut context) {
        std::task::Poll::Ready(value) => value,
        std::task::Poll::Pending => unreachable!("the analytic field never waits"),
    }
}

/// The rippled sphere as a function of a point in [-1.01, 1.01]³ (the official grid's box).
fn rippled(p: &[f32; 3]) -> f32 {
    let [x, y, z] = *p;
    let ripple = 0.05 * (7.0 * x).sin() * (5.0 * y).sin() * (6.0 * z).cos();
    0.7 + ripple - (x * x + y * y + z * z).sqrt()
}

/// A sphere with a rippled surface, positive inside, on an n³ grid.
fn field(n: usize) -> Vec<f32> {
    let mut values = Vec::with_capacity(n * n * n);
    let c = (n as f32 - 1.0) / 2.0;
    for i in 0..n {
        for j in 0..n {
            for k in 0..n {
                let (x, y, z) = ((i as f32 - c) / c, (j as f32 - c) / c, (k as f32 - c) / c);
                let ripple = 0.05 * (7.0 * x).sin() * (5.0 * y).sin() * (6.0 * z).cos();
                values.push(0.7 + ripple - (x * x + y * y + z * z).sqrt());
            }
        }
    }
    values
}

fn main() -> Result<()> {
    let mut python: Option<PathBuf> = std::env::var_os("ORFEAS_BENCH_PYTHON").map(PathBuf::from);
    let mut sizes = vec![128usize, 256];
    let args: Vec<String> = std::env::args().skip(1).collect();
    for pair in args.chunks(2) {
        let value = pair.get(1).context("a flag without a value")?;
        match pair[0].as_str() {
            "--python" => python = Some(PathBuf::from(value)),
            "--sizes" => sizes = value.split(',').map(str::parse).collect::<Result<_, _>>()?,
            other => anyhow::bail!("unknown flag {other}"),
        }
    }
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("skimage_mc.py");
    let dir = tempfile::tempdir()?;
    println!("marching cubes, best of 3 (voxels/s = cells per second):");
    for n in sizes {
        let values = field(n);
        let mut best = f64::INFINITY;
        let mut mesh = Default::default();
        for _ in 0..3 {
            let started = Instant::now();
            mesh = marching_cubes(Field {
                values: &values,
                dims: [n; 3],
            });
            best = best.min(started.elapsed().as_secs_f64());
        }
        let cells = ((n - 1) * (n - 1) * (n - 1)) as f64;
        let ours: &orfeas_engine::mesh::Mesh = &mesh;
        print!(
            "  {n}³: orfeas {:.3} s ({:.1} M voxels/s, {} verts, {} faces)",
            best,
            cells / best / 1e6,
            ours.positions.len(),
            ours.triangles.len()
        );
        match &python {
            Some(python) => {
                let path = dir.path().join(format!("field{n}.f32"));
                let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
                std::fs::write(&path, bytes)?;
                let output = Command::new(python)
                    .arg(&script)
                    .arg(&path)
                    .arg(n.to_string())
                    .arg("3")
                    .output()
                    .context("running the scikit-image baseline")?;
                anyhow::ensure!(
                    output.status.success(),
                    "baseline failed: {}",
                    String::from_utf8_lossy(&output.stderr)
                );
                let text = String::from_utf8(output.stdout)?;
                let mut parts = text.split_whitespace();
                let seconds: f64 = parts.next().context("seconds")?.parse()?;
                let verts = parts.next().unwrap_or("?");
                let faces = parts.next().unwrap_or("?");
                println!(
                    "; scikit-image {seconds:.3} s ({:.1} M voxels/s, {verts} verts, {faces} faces); \
                     speed ratio orfeas/scikit-image {:.2}",
                    cells / seconds / 1e6,
                    seconds / best
                );
            }
            None => println!("; scikit-image: not run (no --python)"),
        }
    }
    println!("volume decoding, rippled sphere on the official grid (queries = field evaluations):");
    let mut largest = None;
    for resolution in [128usize, 256, 384] {
        let grid = Grid::official(resolution);
        let chunk = 65_536;
        let started = Instant::now();
        let dense = block_on(decode_dense(grid, chunk, async |points: &[[f32; 3]]| {
            points.iter().map(rippled).collect::<Vec<f32>>()
        }));
        let dense_mesh = marching_cubes(Field {
            values: &dense,
            dims: grid.dims(),
        });
        let dense_s = started.elapsed().as_secs_f64();
        drop(dense);
        let started = Instant::now();
        let sparse = block_on(decode_coarse_to_fine(
            grid,
            Refinement::default(),
            chunk,
            async |points: &[[f32; 3]]| points.iter().map(rippled).collect::<Vec<f32>>(),
        ));
        let sparse_mesh = marching_cubes_sparse(&sparse.field);
        let sparse_s = started.elapsed().as_secs_f64();
        let dense_queries = grid.points_per_axis().pow(3);
        println!(
            "  R={resolution}: dense {dense_queries} queries, {:.2} s; coarse-to-fine (stride 4) {} queries ({:.3} of dense; {} of {} coarse cells refined), {:.2} s; meshes {} / {} faces ({})",
            dense_s,
            sparse.queries,
            sparse.queries as f64 / dense_queries as f64,
            sparse.refined_cells,
            sparse.coarse_cells,
            sparse_s,
            dense_mesh.triangles.len(),
            sparse_mesh.triangles.len(),
            if dense_mesh.triangles.len() == sparse_mesh.triangles.len()
                && dense_mesh.positions.len() == sparse_mesh.positions.len()
            {
                "same counts"
            } else {
                "DIFFERENT"
            }
        );
        largest = Some(dense_mesh);
    }
    if let Some(mesh) = largest {
        // The `faces` knob's presets below the full mesh: time, and what each costs in
        // distance to the undecimated surface (as a share of the bounding box's diagonal).
        let (lo, hi) = mesh.bounds().context("an empty mesh")?;
        let diagonal = (0..3).map(|d| (hi[d] - lo[d]).powi(2)).sum::<f32>().sqrt() as f64;
        for target in [2_000, 10_000, 40_000] {
            let started = Instant::now();
            let simple = decimate(&mesh, target);
            let seconds = started.elapsed().as_secs_f64();
            let error = surface_distance(&mesh, &simple).context("an empty mesh")?;
            println!(
                "decimation of the R=384 mesh, {} → {} faces (target {target}): {seconds:.2} s, volume {:.5} → {:.5}, closed {}; distance to it: mean {:.4} % of the diagonal, Hausdorff {:.4} %",
                mesh.triangles.len(),
                simple.triangles.len(),
                mesh.signed_volume(),
                simple.signed_volume(),
                simple.boundary_edges() == 0,
                100.0 * error.mean / diagonal,
                100.0 * error.max / diagonal,
            );
        }
    }
    // The instant preview of a 512² cut-out (an ellipse on transparent).
    let size = 512usize;
    let c = size as f32 / 2.0;
    let image: Vec<u8> = (0..size * size)
        .flat_map(|i| {
            let (x, y) = ((i % size) as f32, (i / size) as f32);
            if ((x - c).powi(2) / 1.5 + (y - c).powi(2)).sqrt() < 180.0 {
                [120, 150, 200, 255]
            } else {
                [0, 0, 0, 0]
            }
        })
        .collect();
    for resolution in [96, 128, 192] {
        let mut best = f64::INFINITY;
        let mut faces = 0;
        for _ in 0..3 {
            let started = Instant::now();
            let built = preview::inflate(&image, size, size, resolution);
            best = best.min(started.elapsed().as_secs_f64());
            faces = built.mesh.triangles.len();
        }
        println!(
            "preview of a 512² mask at {resolution} cells: {:.1} ms ({faces} faces)",
            best * 1000.0
        );
    }
    Ok(())
}
