//! Shared by the CLI and server tests: running the `orfeas` binary and its server; the
//! fixtures come from the workspace's test-support crate (`orfeas_tests::fixtures`).
#![allow(dead_code, unused_imports)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Instant;

use serde_json::Value;

pub use orfeas_tests::fixtures::{
    self, Tensors, isnet_weights, stage, tensors as fixture_tensors, write_bundle,
};

/// The fixture folder.
pub fn fixtures() -> PathBuf {
    fixtures::dir()
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

/// An official-style config.yaml (YAML, as the official repository writes it) for the fixture
/// configs with the given denoiser class.
pub fn write_config(path: &Path, class: &str, params: &Value) {
    let config = fixtures::official_config(class, params);
    std::fs::write(path, yaml_serde::to_string(&config).unwrap()).unwrap();
}

/// The fixture shape model converted into `dir` (three shard sets), as a user's real
/// checkpoint would be.
pub fn converted_fixture_model(dir: &Path) -> PathBuf {
    fixtures::converted_shape_model(dir).expect("the fixture model converts");
    dir.to_path_buf()
}

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

/// A brake on a server's loading (`--hold-loading-while`): no shard is read until
/// [`Hold::release`], so the server is certainly still loading while a test looks.
pub struct Hold {
    _dir: tempfile::TempDir,
    path: String,
}

impl Hold {
    pub fn new() -> Hold {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hold");
        std::fs::write(&path, b"").unwrap();
        let path = path.to_str().expect("a UTF-8 temp path").to_string();
        Hold { _dir: dir, path }
    }

    /// The server's arguments that apply it.
    pub fn args(&self) -> [&str; 2] {
        ["--hold-loading-while", &self.path]
    }

    pub fn release(&self) {
        std::fs::remove_file(&self.path).unwrap();
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

/// Post `request` to `/api/generate-3d` (answered `202`) and poll its job until it is no
/// longer queued or running: its last status, and the states seen on the way.
pub async fn finished_job(
    client: &reqwest::Client,
    server: &Server,
    request: &Value,
) -> (Value, Vec<String>) {
    let response = client
        .post(server.url("/api/generate-3d"))
        .json(request)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    let accepted: Value = response.json().await.unwrap();
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
