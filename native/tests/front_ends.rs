//! The three front-ends run one job: `orfeas generate`, `orfeas serve` and the engine's
//! `ImageToMesh` called directly give the same mesh file, byte for byte, for the same image,
//! options and seed, and the same answer for an opaque picture with no background removal
//! (the whole picture is the object, and each says so).

use std::path::Path;

use burn::tensor::DType;
use orfeas_engine::mesh::export::Format;
use orfeas_engine::pipeline::{
    COMPONENTS, GenerateOptions, ImageToMesh, Note, Request, load_shape_model,
};
use orfeas_engine::weights::source::DirSource;
use serde_json::json;

mod common;
use common::{
    Server, b64, converted_fixture_model, finished_job, fixtures, orfeas, text, wait_ready,
};

const STEPS: usize = 2;
const OCTREE: usize = 32;
const SEED: u64 = 1234;

/// The job in this process, as the app's worker runs it (no ISNet loaded).
fn engine_glb(model: &Path, picture: image::RgbaImage) -> (Vec<u8>, Vec<Note>) {
    let device = orfeas_engine::device::cpu();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    runtime.block_on(async {
        let sources = COMPONENTS.map(|c| DirSource::new(model.join(c)));
        let shape = load_shape_model(
            [&sources[0], &sources[1], &sources[2]],
            &device,
            DType::F32,
            |_, _| {},
        )
        .await
        .unwrap();
        let options = GenerateOptions {
            steps: Some(STEPS),
            resolution: OCTREE,
            seed: SEED,
            ..GenerateOptions::default()
        };
        let job = ImageToMesh::new(&shape, None, &device);
        let generated = job
            .run(&Request::new(picture, options), |_| {}, || false)
            .await
            .unwrap();
        (Format::Glb.encode(&generated.mesh, None), generated.notes)
    })
}

#[test]
fn the_cli_the_server_and_the_engine_make_the_same_mesh() {
    let dir = tempfile::tempdir().unwrap();
    let models = dir.path().join("models");
    let model = converted_fixture_model(&models.join("hunyuan"));
    // Opaque: with no background-removal model anywhere, each front-end uses it whole.
    let image = fixtures().join("isnet_input_0.png");
    let bytes = std::fs::read(&image).unwrap();
    let picture = image::load_from_memory(&bytes).unwrap().to_rgba8();
    assert!(
        picture.pixels().all(|p| p[3] == 255),
        "the picture is opaque"
    );

    let (engine, notes) = engine_glb(&model, picture);
    assert_eq!(notes, [Note::WholePicture]);

    let output = dir.path().join("cli.glb");
    let (steps, octree, seed) = (STEPS.to_string(), OCTREE.to_string(), SEED.to_string());
    let run = orfeas(&[
        "generate",
        image.to_str().unwrap(),
        "--model",
        model.to_str().unwrap(),
        "-o",
        output.to_str().unwrap(),
        "--steps",
        &steps,
        "--octree-resolution",
        &octree,
        "--seed",
        &seed,
        "--isnet",
        dir.path().join("no-isnet").to_str().unwrap(),
        "--backend",
        "cpu",
        "--dtype",
        "f32",
    ]);
    let said = text(&run);
    assert!(run.status.success(), "{said}");
    assert!(
        said.contains("note: no background removal: the whole picture is taken as the object"),
        "{said}"
    );
    let cli = std::fs::read(&output).unwrap();

    let server = Server::start(&models, &["--backend", "cpu", "--dtype", "f32"]);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (served, status) = runtime.block_on(async {
        let client = reqwest::Client::new();
        wait_ready(&client, &server).await;
        let body = json!({
            "image": b64(&bytes),
            "steps": STEPS, "octree_resolution": OCTREE, "seed": SEED,
        });
        let (status, _) = finished_job(&client, &server, &body).await;
        assert_eq!(status["status"], "done", "{status}");
        let result = client
            .get(server.url(status["result_url"].as_str().unwrap()))
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        (result.to_vec(), status)
    });
    assert_eq!(
        status["notes"],
        json!([Note::WholePicture.to_string()]),
        "{status}"
    );

    let faces = |glb: &[u8]| {
        let gltf = gltf::Gltf::from_slice(glb).expect("a GLB");
        let primitive = gltf.meshes().next().unwrap().primitives().next().unwrap();
        primitive.indices().unwrap().count() / 3
    };
    assert!(faces(&engine) > 0);
    eprintln!(
        "engine {} bytes ({} faces), cli {} bytes, server {} bytes",
        engine.len(),
        faces(&engine),
        cli.len(),
        served.len()
    );
    assert!(cli == engine, "the CLI's GLB differs from the engine's");
    assert!(
        served == engine,
        "the server's GLB differs from the engine's"
    );
}
