//! The quantized writers from a user's side: `orfeas convert --quant q4` on an official-layout
//! checkpoint and `orfeas quantize` on its f16 conversion write the same shards; the sets
//! verify; a quantized set is not quantized again; `orfeas generate` makes a mesh from the q4
//! and q8 models on the CPU backend (f32) and on wgpu in f16 (lavapipe has shader-f16), the q8
//! one with the f16 model's face count within a quarter (measured 14 % apart on
//! the CPU backend at octree 48, a small mesh). (The random-weight 2.1 DiT is the
//! stage quantization moves most, 41 % at q4: its small q4 mesh is a third of the f16 one's,
//! so only its existence is asserted; docs/precision.md has the figures.)

use std::path::Path;

use orfeas_engine::weights::{INDEX_FILE, ShardIndex};

mod common;
use common::{fixtures, orfeas, text};

fn index(dir: &Path) -> ShardIndex {
    ShardIndex::from_json(&std::fs::read(dir.join(INDEX_FILE)).unwrap()).unwrap()
}

/// Faces of `orfeas generate` with `model` ("wrote … (V vertices, F faces; R before clean-up)").
fn faces(model: &Path, out: &Path, backend: &str, dtype: &str) -> usize {
    let image = fixtures().join("preprocess_input_0.png");
    let run = orfeas(&[
        "generate",
        image.to_str().unwrap(),
        "--model",
        model.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
        "--steps",
        "5",
        "--octree-resolution",
        "48",
        "--backend",
        backend,
        "--dtype",
        dtype,
    ]);
    let said = text(&run);
    assert!(run.status.success(), "{backend}/{dtype}: {said}");
    let line = said
        .lines()
        .find(|l| l.starts_with("wrote"))
        .expect("a wrote line");
    let numbers: Vec<usize> = line
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|w| w.parse().ok())
        .collect();
    numbers[numbers.len() - 1]
}

#[test]
fn convert_and_quantize_write_q4_sets_that_generate() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let bundle = root.join("model.fp16.safetensors");
    let parts = ["dit21", "vae", "dinov2"]
        .map(|s| orfeas_tests::fixtures::tensors(&format!("{s}.weights.safetensors")));
    orfeas_tests::fixtures::write_bundle(&bundle, &[&parts[0], &parts[1], &parts[2]]);
    let config = orfeas_tests::fixtures::official_config(
        "hunyuandit.HunYuanDiTPlain",
        &orfeas_tests::fixtures::stage("dit21")["config"]["params"],
    );
    let yaml = root.join("config.yaml");
    std::fs::write(&yaml, serde_json::to_vec_pretty(&config).unwrap()).unwrap();
    let path = |name: &str| root.join(name);
    let convert = |out: &str, quant: &str| {
        orfeas(&[
            "convert",
            bundle.to_str().unwrap(),
            "--config",
            yaml.to_str().unwrap(),
            "-o",
            path(out).to_str().unwrap(),
            "--quant",
            quant,
        ])
    };

    let run = convert("q4", "q4");
    assert!(run.status.success(), "{}", text(&run));
    let run = convert("f16", "f16");
    assert!(run.status.success(), "{}", text(&run));
    let run = orfeas(&[
        "quantize",
        path("f16").to_str().unwrap(),
        path("q4-again").to_str().unwrap(),
        "--quant",
        "q4",
    ]);
    let said = text(&run);
    assert!(run.status.success(), "{said}");
    assert!(said.contains("denoiser:") && said.contains("q4"), "{said}");
    for part in ["conditioner", "denoiser", "vae"] {
        let (direct, again, f16) = (
            index(&path("q4").join(part)),
            index(&path("q4-again").join(part)),
            index(&path("f16").join(part)),
        );
        assert!(!direct.quantized.is_empty(), "{part}: nothing quantized");
        assert_eq!(
            direct.shards, again.shards,
            "{part}: the two writers differ"
        );
        assert_eq!(direct.quantized, again.quantized, "{part}");
        assert!(direct.total_bytes() < f16.total_bytes(), "{part}");
    }
    let run = orfeas(&[
        "quantize",
        path("f16").to_str().unwrap(),
        path("q8").to_str().unwrap(),
        "--quant",
        "q8",
    ]);
    assert!(run.status.success(), "{}", text(&run));
    let run = orfeas(&["verify", path("q4").to_str().unwrap()]);
    assert!(run.status.success(), "{}", text(&run));

    // Quantizing twice would compound the error: refused, naming what the input is.
    let run = orfeas(&[
        "quantize",
        path("q4").to_str().unwrap(),
        path("q8-of-q4").to_str().unwrap(),
        "--quant",
        "q8",
    ]);
    assert!(!run.status.success());
    assert!(text(&run).contains("already q4"), "{}", text(&run));
    assert!(!path("q8-of-q4").exists());
    let run = convert("q3", "q3");
    assert!(!run.status.success());
    assert!(text(&run).contains("\"q3\""), "{}", text(&run));

    let mut runs = vec![("cpu", "f32")];
    if orfeas_engine::device::gpu().is_some() {
        runs.push(("wgpu", "f16"));
    } else {
        assert!(
            std::env::var_os("ORFEAS_ALLOW_SKIP").is_some(),
            "no wgpu adapter (install mesa-vulkan-drivers, or set ORFEAS_ALLOW_SKIP=1)"
        );
        eprintln!("SKIPPED on wgpu (ORFEAS_ALLOW_SKIP): no adapter");
    }
    for (backend, dtype) in runs {
        let f16 = faces(&path("f16"), &path("f16.glb"), backend, dtype);
        let q8 = faces(&path("q8"), &path("q8.glb"), backend, dtype);
        let q4 = faces(&path("q4"), &path("q4.glb"), backend, dtype);
        eprintln!("{backend}/{dtype}: {f16} faces with f16 weights, {q8} with q8, {q4} with q4");
        assert!(q4 > 0, "{backend}/{dtype}: the q4 mesh has faces");
        let off = (q8 as f64 - f16 as f64).abs() / f16 as f64;
        assert!(off <= 0.25, "{backend}/{dtype}: q8 {q8} faces, f16 {f16}");
    }
}

#[test]
fn synthesize_writes_quantized_sets_of_an_official_layout() {
    // The benchmarks' way to full-size quantized sets, here at reduced size: the synthetic
    // checkpoint converted at q4 in the same command.
    let dir = tempfile::tempdir().unwrap();
    let run = orfeas(&[
        "synthesize",
        "--variant",
        "2mini-turbo",
        "--reduced",
        "--sets",
        "q4",
        "-o",
        dir.path().to_str().unwrap(),
    ]);
    assert!(run.status.success(), "{}", text(&run));
    for part in orfeas_engine::pipeline::COMPONENTS {
        let set = index(&dir.path().join("sets").join(part));
        assert_eq!(
            set.precision(),
            orfeas_engine::weights::Precision::Q4,
            "{part}"
        );
        assert!(!set.quantized.is_empty(), "{part}: nothing quantized");
    }
    let verify = orfeas(&["verify", dir.path().join("sets").to_str().unwrap()]);
    assert!(verify.status.success(), "{}", text(&verify));
}

/// A shape model installed at two precisions (`hunyuan3d/` and `hunyuan3d-q4/`, as
/// `orfeas quantize` writes it beside the f16 one): `orfeas serve` loads one — the finest that
/// fits by default, the one `--quant` names otherwise — says which and why in health, lists
/// both with their sizes in `/orfeas.json` for the web app, and generates with the one it
/// loaded. A `--quant` that is not installed stops it at start, naming what is.
#[tokio::test(flavor = "multi_thread")]
async fn a_server_lists_each_installed_precision_and_loads_the_one_chosen() {
    use common::{Server, b64, client, finished_job, health, wait_ready};
    use serde_json::json;
    let dir = tempfile::tempdir().unwrap();
    let models = dir.path().join("models");
    let f16 = common::converted_fixture_model(&models.join("hunyuan3d"));
    let q4 = models.join("hunyuan3d-q4");
    let run = orfeas(&[
        "quantize",
        f16.to_str().unwrap(),
        q4.to_str().unwrap(),
        "--quant",
        "q4",
    ]);
    assert!(run.status.success(), "{}", text(&run));
    let bytes = |set: &Path| -> u64 {
        ["conditioner", "denoiser", "vae"]
            .iter()
            .map(|p| index(&set.join(p)).total_bytes())
            .sum()
    };
    let client = client();
    // The web app's folder (without an orfeas.json of its own: the server writes one).
    let web = dir.path().join("web");
    std::fs::create_dir_all(&web).unwrap();
    std::fs::write(web.join("index.html"), "<!doctype html><title>app</title>").unwrap();

    // By default: the finest that fits (the CPU backend holds either), f16.
    let server = Server::start(
        &models,
        &["--backend", "cpu", "--web", web.to_str().unwrap()],
    );
    let ready = wait_ready(&client, &server).await;
    let shape = &ready["shape_models"][0];
    assert_eq!(shape["name"], "hunyuan3d", "{ready}");
    assert_eq!(shape["precision"], "f16", "{ready}");
    assert!(
        shape["because"].as_str().unwrap().contains("finest"),
        "{ready}"
    );
    let installed: Vec<(String, u64)> = shape["installed"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            (
                i["precision"].as_str().unwrap().to_string(),
                i["bytes"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        installed,
        [
            ("f16".to_string(), bytes(&f16)),
            ("q4".to_string(), bytes(&q4))
        ]
    );
    let ids: Vec<&str> = ready["models"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(
        ids,
        [
            "hunyuan3d/conditioner",
            "hunyuan3d/denoiser",
            "hunyuan3d/vae"
        ],
        "only the chosen precision loads"
    );
    assert!(
        ready["models"]
            .as_array()
            .unwrap()
            .iter()
            .all(|m| m["precision"] == "f16")
    );
    // The web app's list: both precisions, each part with its precision and size.
    let site = common::get_json(&client, &server, "/orfeas.json").await;
    let listed: Vec<(String, String, u64)> = site["models"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["id"].as_str().unwrap().to_string(),
                m["precision"].as_str().unwrap().to_string(),
                m["bytes"].as_u64().unwrap(),
            )
        })
        .collect();
    let mut expected = Vec::new();
    for (folder, set, precision) in [("hunyuan3d", &f16, "f16"), ("hunyuan3d-q4", &q4, "q4")] {
        for part in ["conditioner", "denoiser", "vae"] {
            expected.push((
                format!("{folder}/{part}"),
                precision.to_string(),
                index(&set.join(part)).total_bytes(),
            ));
        }
    }
    assert_eq!(listed, expected);
    drop(server);

    // `--quant q4`: the q4 set loads, health names it, and a job runs on it.
    let server = Server::start(&models, &["--backend", "cpu", "--quant", "q4"]);
    let ready = wait_ready(&client, &server).await;
    assert_eq!(ready["shape_models"][0]["precision"], "q4", "{ready}");
    assert_eq!(
        ready["shape_models"][0]["folder"], "hunyuan3d-q4",
        "{ready}"
    );
    assert_eq!(ready["models"][1]["id"], "hunyuan3d-q4/denoiser", "{ready}");
    assert_eq!(
        ready["processor"]["hunyuan3d-q4/denoiser"]["precision"],
        "q4"
    );
    let cutout = std::fs::read(fixtures().join("preprocess_input_0.png")).unwrap();
    let request = json!({
        "image": b64(&cutout), "steps": 4, "octree_resolution": 32, "seed": 8, "format": "obj",
    });
    let (status, _) = finished_job(&client, &server, &request).await;
    assert_eq!(status["status"], "done", "{status}");
    // At seed 2 the q4 fixture model finds no surface in this picture: the client's input,
    // answered 422 with the reason, not a server failure.
    let request = json!({
        "image": b64(&cutout), "steps": 4, "octree_resolution": 32, "seed": 2, "format": "obj",
    });
    let response = client
        .post(server.url("/api/generate-3d?wait=true"))
        .json(&request)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 422);
    let body: serde_json::Value = response.json().await.unwrap();
    assert!(
        body["error"].as_str().unwrap().contains("no surface"),
        "{body}"
    );
    let _ = health(&client, &server).await;
    drop(server);

    // A precision that is not installed: refused at start, naming what is.
    let run = orfeas(&[
        "serve",
        "--bind",
        "127.0.0.1:0",
        "--models",
        models.to_str().unwrap(),
        "--backend",
        "cpu",
        "--quant",
        "q8",
    ]);
    let said = text(&run);
    assert!(!run.status.success(), "{said}");
    assert!(
        said.contains("no q8 set installed")
            && said.contains("f16 in hunyuan3d")
            && said.contains("q4 in hunyuan3d-q4"),
        "{said}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_server_loads_one_precision_of_background_removal_and_lists_the_other() {
    use common::{Server, client, get_json, wait_ready};
    let Some(isnet) = orfeas_tests::fixtures::isnet_weights() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let models = dir.path().join("models");
    let f16 = models.join("isnet-medium");
    std::fs::create_dir_all(&f16).unwrap();
    for entry in std::fs::read_dir(&isnet).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), f16.join(entry.file_name())).unwrap();
    }
    let q8 = models.join("isnet-medium-q8");
    let q8_index =
        orfeas_tests::fixtures::requantized(&f16, &q8, orfeas_engine::weights::Precision::Q8)
            .unwrap();
    let web = dir.path().join("web");
    std::fs::create_dir_all(&web).unwrap();
    std::fs::write(web.join("index.html"), "<!doctype html><title>app</title>").unwrap();

    let server = Server::start(
        &models,
        &["--backend", "cpu", "--web", web.to_str().unwrap()],
    );
    let client = client();
    let ready = wait_ready(&client, &server).await;
    // One loads (the finest: this server reads its own disk), the other is listed.
    let loaded: Vec<(&str, &str)> = ready["models"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| (m["id"].as_str().unwrap(), m["precision"].as_str().unwrap()))
        .collect();
    assert_eq!(loaded, [("isnet-medium", "f16")], "{ready}");
    let other = &ready["other_precisions"];
    assert_eq!(other.as_array().map(Vec::len), Some(1), "{ready}");
    assert_eq!(other[0]["id"], "isnet-medium-q8");
    assert_eq!(other[0]["precision"], "q8");
    assert_eq!(other[0]["bytes"], q8_index.total_bytes());
    assert_eq!(other[0]["instead_of"], "isnet-medium");
    // The app it serves sees both, the sibling with its precision and size, and chooses.
    let site = get_json(&client, &server, "/orfeas.json").await;
    let ids: Vec<&str> = site["models"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["isnet-medium", "isnet-medium-q8"], "{site}");
    assert_eq!(site["models"][1]["precision"], "q8", "{site}");
}
