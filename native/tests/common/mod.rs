//! Shared by the CLI tests: the fixture folder and running the `orfeas` binary.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Instant;

use safetensors::SafeTensors;
use serde_json::{Value, json};

/// `ORFEAS_FIXTURES`, default `../shared/fixtures/public`.
pub fn fixtures() -> PathBuf {
    std::env::var_os("ORFEAS_FIXTURES")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/fixtures/public")
        })
}

pub fn orfeas(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_orfeas"))
        .args(args)
        .output()
        .expect("orfeas runs")
}

/// Everything the run printed, stdout then stderr.
pub fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

pub fn stage(name: &str) -> Value {
    let text = std::fs::read_to_string(fixtures().join("fixtures.json")).unwrap();
    serde_json::from_str::<Value>(&text).unwrap()[name].clone()
}

/// A fixture weight file's tensors: (official name, shape, F16 bytes).
pub type Tensors = Vec<(String, Vec<usize>, Vec<u8>)>;

pub fn fixture_tensors(file: &str) -> Tensors {
    let bytes = std::fs::read(fixtures().join(file)).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let mut out: Tensors = st
        .tensors()
        .into_iter()
        .map(|(name, view)| {
            assert_eq!(view.dtype(), safetensors::Dtype::F16);
            (name, view.shape().to_vec(), view.data().to_vec())
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// An official-style config.yaml for the fixture configs with the given denoiser class.
pub fn write_config(path: &Path, class: &str, params: &Value) {
    let dinov2 = stage("dinov2");
    let yaml = json!({
        "model": {"target": format!("hy3dshape.models.denoisers.{class}"), "params": params},
        "vae": {"target": "hy3dshape.models.autoencoders.ShapeVAE", "params": stage("vae")["config"]["params"]},
        "conditioner": {
            "target": "hy3dshape.models.conditioner.SingleImageEncoder",
            "params": {"main_image_encoder": {"type": "DinoImageEncoder", "kwargs": {
                "config": dinov2["config"]["config"],
                "image_size": dinov2["config"]["encoder_kwargs"]["image_size"],
                "use_cls_token": true,
            }}},
        },
        "scheduler": {"target": "hy3dshape.schedulers.FlowMatchEulerDiscreteScheduler", "params": {"num_train_timesteps": 1000}},
        "image_processor": {"target": "hy3dshape.preprocessors.ImageProcessorV2", "params": {"size": 512, "border_ratio": 0.15}},
    });
    std::fs::write(path, yaml_serde::to_string(&yaml).unwrap()).unwrap();
}

/// The official safetensors repack of a checkpoint: every part's tensors, flat, F16, under
/// their prefixed names.
pub fn write_bundle(path: &Path, parts: &[&Tensors]) {
    let views: Vec<(String, safetensors::tensor::TensorView)> = parts
        .iter()
        .copied()
        .flatten()
        .map(|(n, s, b)| {
            let view = safetensors::tensor::TensorView::new(safetensors::Dtype::F16, s.clone(), b);
            (n.clone(), view.unwrap())
        })
        .collect();
    safetensors::serialize_to_file(views, None, path).unwrap();
}

/// The fixture shape model (the 2.1 DiT, VAE, DINOv2 test weights) converted by `orfeas
/// convert` into `dir` (three shard sets), as a user's real checkpoint would be.
pub fn converted_fixture_model(dir: &Path) -> PathBuf {
    let work = tempfile::tempdir().unwrap();
    let (bundle, yaml) = (
        work.path().join("model.fp16.safetensors"),
        work.path().join("config.yaml"),
    );
    let parts = [
        fixture_tensors("dit21.weights.safetensors"),
        fixture_tensors("vae.weights.safetensors"),
        fixture_tensors("dinov2.weights.safetensors"),
    ];
    write_bundle(&bundle, &[&parts[0], &parts[1], &parts[2]]);
    write_config(
        &yaml,
        "hunyuandit.HunYuanDiTPlain",
        &stage("dit21")["config"]["params"],
    );
    let out = orfeas(&[
        "convert",
        bundle.to_str().unwrap(),
        "--config",
        yaml.to_str().unwrap(),
        "-o",
        dir.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", text(&out));
    dir.to_path_buf()
}

/// The ISNet weights the set-up converted (`ORFEAS_ISNET` or the default folder). Absent, the
/// test fails, unless `ORFEAS_ALLOW_SKIP` asks for a skip (`None`, with a SKIPPED note).
pub fn isnet_weights() -> Option<PathBuf> {
    let dir = orfeas::remove_bg::default_isnet_dir();
    if dir.join(orfeas_engine::weights::INDEX_FILE).is_file() {
        return Some(dir);
    }
    assert!(
        std::env::var_os("ORFEAS_ALLOW_SKIP").is_some(),
        "no ISNet weights at {} (run scripts/setup.sh, or set ORFEAS_ALLOW_SKIP=1)",
        dir.display()
    );
    eprintln!(
        "SKIPPED (ORFEAS_ALLOW_SKIP): no ISNet weights at {}",
        dir.display()
    );
    None
}

/// A running server; killed on drop.
pub struct Server {
    pub child: Child,
    pub base: String,
    pub started: Instant,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    pub fn start(models: &Path, extra: &[&str]) -> Self {
        let started = Instant::now();
        let mut child = Command::new(env!("CARGO_BIN_EXE_orfeas"))
            .args(["serve", "--bind", "127.0.0.1:0", "--models"])
            .arg(models)
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting orfeas serve");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let base = line
            .trim()
            .strip_prefix("orfeas: listening on ")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
            .to_string();
        Server {
            child,
            base,
            started,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }
}

pub fn b64(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

pub async fn health(client: &reqwest::Client, server: &Server) -> Value {
    client
        .get(server.url("/api/health"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// Health once `models_status` is `ready` (a `not_ready` on the way fails the test).
pub async fn wait_ready(client: &reqwest::Client, server: &Server) -> Value {
    let deadline = Instant::now() + std::time::Duration::from_secs(120);
    loop {
        let h = health(client, server).await;
        if h["models_status"] == "ready" {
            return h;
        }
        assert_ne!(h["models_status"], "not_ready", "{h}");
        assert!(Instant::now() < deadline, "never ready: {h}");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// Poll the job a `202` answer (`accepted`) names until it is no longer queued or running:
/// its last status, and the states seen on the way.
pub async fn finished_job(
    client: &reqwest::Client,
    server: &Server,
    accepted: &Value,
) -> (Value, Vec<String>) {
    let url = server.url(accepted["status_url"].as_str().expect("a queued job"));
    let mut seen = Vec::new();
    loop {
        let status: Value = client.get(&url).send().await.unwrap().json().await.unwrap();
        seen.push(status["status"].as_str().unwrap_or_default().to_string());
        if !matches!(status["status"].as_str(), Some("queued" | "running")) {
            return (status, seen);
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}
