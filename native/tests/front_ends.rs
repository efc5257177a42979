//! The three front-ends run one job: `orfeas generate`, `orfeas serve` and the engine's
//! `ImageToMesh` called directly give the same mesh file, byte for byte, for the same image,
//! options and seed, and the same answer for an opaque picture with no background removal
//! (the whole picture is the object, and each says so).

use std::path::Path;

use burn::tensor::DType;
use orfeas_engine::mesh::export::Format;
use orfeas_engine::pipeline::{
    COMPONENTS, GenerateOptions, ImageToMesh, Note, Request, ShapeModel, load_shape_model,
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
/// Under the fixture model's ~260 faces at these settings: each front end passes the detail on.
const FACES: usize = 150;

/// `future` on a runtime of this thread (the shard sources read files with tokio).
fn block_on<T>(future: impl std::future::Future<Output = T>) -> T {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(future)
}

/// The converted model at `model`, in f32 on `device`.
fn load_f32(model: &Path, device: &burn::tensor::Device) -> ShapeModel {
    let sources = COMPONENTS.map(|c| DirSource::new(model.join(c)));
    block_on(load_shape_model(
        [&sources[0], &sources[1], &sources[2]],
        device,
        DType::F32,
        |_, _| {},
    ))
    .unwrap()
}

/// The job in this process, as the app's worker runs it (no ISNet loaded).
fn engine_glb(model: &Path, picture: image::RgbaImage) -> (Vec<u8>, Vec<Note>) {
    let device = orfeas_engine::device::cpu();
    let shape = load_f32(model, &device);
    block_on(async {
        let options = GenerateOptions {
            steps: Some(STEPS),
            resolution: OCTREE,
            seed: SEED,
            faces: FACES,
            ..GenerateOptions::default()
        };
        let job = ImageToMesh::new(&shape, None, &device);
        let generated = job
            .run(&Request::new(picture, options), |_| {}, || false)
            .await
            .unwrap();
        let colours = generated.colours.as_deref();
        (
            Format::Glb.encode(&generated.mesh, colours),
            generated.notes,
        )
    })
}

/// The one cut-out policy, with a cut-out made earlier (as the app's worker hands over the one
/// it showed): used for an opaque picture, as ISNet's would be, without a background-removal
/// stage; not used when background removal is off (the whole picture) or when the picture has
/// transparency of its own.
fn a_cut_out_made_earlier_is_used_where_isnet_would_run(model: &Path, picture: image::RgbaImage) {
    let device = orfeas_engine::device::cpu();
    let shape = load_f32(model, &device);
    block_on(async {
        let job = ImageToMesh::new(&shape, None, &device);
        // A cut-out (the fixture the shape pre-processor's parity uses), and a seed at which
        // the random-weight model finds a surface in it.
        let png = std::fs::read(fixtures().join("preprocess_input_0.png")).unwrap();
        let cutout = image::load_from_memory(&png).unwrap().to_rgba8();
        let mut found = None;
        for seed in 0..16 {
            let options = GenerateOptions {
                steps: Some(STEPS),
                resolution: OCTREE,
                seed,
                ..GenerateOptions::default()
            };
            let request = Request::new(cutout.clone(), options.clone());
            if let Ok(direct) = job.run(&request, |_| {}, || false).await {
                found = Some((options, direct));
                break;
            }
        }
        let (options, direct) = found.expect("a seed in 0..16 with a surface");
        let with_cutout = Request {
            cutout: Some(cutout.clone()),
            ..Request::new(picture.clone(), options.clone())
        };
        let (used, note) = job.cut_out(&with_cutout).await.unwrap();
        assert_eq!(note, Note::BackgroundRemoved);
        assert!(*used == cutout, "the cut-out given is the one used");

        let off = Request {
            remove_background: false,
            ..with_cutout.clone()
        };
        let (used, note) = job.cut_out(&off).await.unwrap();
        assert_eq!(note, Note::WholePicture);
        assert!(
            *used == picture,
            "background removal off: the picture whole"
        );

        let transparent = Request {
            cutout: Some(picture.clone()),
            ..Request::new(cutout.clone(), options.clone())
        };
        let (used, note) = job.cut_out(&transparent).await.unwrap();
        assert_eq!(note, Note::TransparencyUsed);
        assert!(
            *used == cutout,
            "a picture with transparency is its own cut-out"
        );

        // The whole job on the cut-out given: no background-removal stage, and the mesh of
        // the cut-out itself run as a picture with transparency (`direct`).
        let mut stages = Vec::new();
        let generated = job
            .run(&with_cutout, |stage| stages.push(stage), || false)
            .await
            .unwrap();
        assert_eq!(generated.notes, [Note::BackgroundRemoved]);
        assert!(
            !stages.contains(&orfeas_engine::pipeline::Stage::RemovingBackground),
            "{stages:?}"
        );
        assert_eq!(direct.notes, [Note::TransparencyUsed]);
        assert_eq!(generated.mesh.triangles, direct.mesh.triangles);
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

    let (engine, notes) = engine_glb(&model, picture.clone());
    assert_eq!(notes, [Note::WholePicture]);
    let gltf = gltf::Gltf::from_slice(&engine).expect("the GLB re-parses");
    let primitive = gltf.meshes().next().unwrap().primitives().next().unwrap();
    let faces_made = primitive.indices().unwrap().count() / 3;
    assert!(
        faces_made <= FACES && faces_made * 100 >= FACES * 98,
        "{faces_made} faces for a budget of {FACES}"
    );
    a_cut_out_made_earlier_is_used_where_isnet_would_run(&model, picture);

    let output = dir.path().join("cli.glb");
    let (steps, octree, seed) = (STEPS.to_string(), OCTREE.to_string(), SEED.to_string());
    let faces = FACES.to_string();
    let no_isnet = dir.path().join("no-isnet");
    // One command for both runs (the grey one adds --no-colour): same settings, no ISNet.
    let generate = |output: &Path, extra: &[&str]| {
        let mut args = vec![
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
            "--faces",
            &faces,
            "--isnet",
            no_isnet.to_str().unwrap(),
            "--backend",
            "cpu",
            "--dtype",
            "f32",
        ];
        args.extend(extra);
        orfeas(&args)
    };
    let run = generate(&output, &[]);
    let said = text(&run);
    assert!(run.status.success(), "{said}");
    assert!(
        said.contains("note: no background removal: the whole picture is taken as the object"),
        "{said}"
    );
    let cli = std::fs::read(&output).unwrap();
    // The colour switch off: the same command with --no-colour writes a grey mesh.
    let grey_output = dir.path().join("grey.glb");
    let run = generate(&grey_output, &["--no-colour"]);
    assert!(run.status.success(), "{}", text(&run));
    let cli_grey = std::fs::read(&grey_output).unwrap();

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
            "steps": STEPS, "octree_resolution": OCTREE, "seed": SEED, "face_count": FACES,
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
        let grey = json!({
            "image": b64(&bytes), "colour": false,
            "steps": STEPS, "octree_resolution": OCTREE, "seed": SEED, "face_count": FACES,
        });
        let (grey_status, _) = finished_job(&client, &server, &grey).await;
        assert_eq!(grey_status["status"], "done", "{grey_status}");
        let grey = client
            .get(server.url(grey_status["result_url"].as_str().unwrap()))
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        assert!(
            grey.to_vec() == cli_grey,
            "the server's grey GLB differs from the CLI's"
        );
        (result.to_vec(), status)
    });
    // Colours by default (COLOR_0, one per vertex), none with the switch off; the shape is
    // the same either way.
    let colour_attribute = |glb: &[u8]| {
        let gltf = gltf::Gltf::from_slice(glb).expect("a GLB");
        let primitive = gltf.meshes().next().unwrap().primitives().next().unwrap();
        primitive
            .attributes()
            .any(|(semantic, _)| semantic == gltf::Semantic::Colors(0))
    };
    assert!(
        colour_attribute(&engine),
        "the engine's GLB has vertex colours"
    );
    assert!(!colour_attribute(&cli_grey), "--no-colour: a grey mesh");
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
