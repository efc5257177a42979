//! Shared by the CLI and server tests: running the `orfeas` binary and its server; the
//! fixtures come from the workspace's test-support crate (`orfeas_tests::fixtures`).
#![allow(dead_code, unused_imports)]

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

pub use orfeas_tests::fixtures::{
    self, Tensors, isnet_weights, stage, tensors as fixture_tensors, write_bundle,
};

/// The fixture folder.
pub fn fixtures() -> PathBuf {
    fixtures::dir()
}

/// The `orfeas` binary under test: this build's, or `ORFEAS_TEST_BIN` (to run the same tests
/// against another build, e.g. to see that a test fails without the change it covers).
pub fn binary() -> PathBuf {
    std::env::var_os("ORFEAS_TEST_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_orfeas")))
}

pub fn orfeas(args: &[&str]) -> Output {
    Command::new(binary())
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
        Self::start_under(None, models, extra)
    }

    /// As [`Server::start`], run through `sh -c` after `shell` (say `ulimit -n 256`).
    pub fn start_under(shell: Option<&str>, models: &Path, extra: &[&str]) -> Self {
        let started = Instant::now();
        let mut command = match shell {
            Some(shell) => {
                let mut command = Command::new("sh");
                command
                    .arg("-c")
                    .arg(format!("{shell}; exec \"$0\" \"$@\""))
                    .arg(binary());
                command
            }
            None => Command::new(binary()),
        };
        let mut child = command
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

    /// SIGTERM the server and wait for it to exit successfully, failing the test when it still
    /// runs after `within`: how long it took, and everything it wrote to stderr.
    pub fn terminate(&mut self, within: Duration) -> (Duration, String) {
        let signalled = Instant::now();
        let pid = self.child.id().to_string();
        assert!(
            Command::new("kill")
                .args(["-TERM", &pid])
                .status()
                .unwrap()
                .success()
        );
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            assert!(
                signalled.elapsed() < within,
                "still running {:?} after SIGTERM",
                signalled.elapsed()
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        let took = signalled.elapsed();
        assert!(status.success(), "{status:?}");
        let mut stderr = String::new();
        self.child
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut stderr)
            .unwrap();
        (took, stderr)
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

/// `GET path` on `server`, its body parsed as JSON.
pub async fn get_json(client: &reqwest::Client, server: &Server, path: &str) -> Value {
    client
        .get(server.url(path))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// `GET path` on `server`, its body as text.
pub async fn get_text(client: &reqwest::Client, server: &Server, path: &str) -> String {
    client
        .get(server.url(path))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

pub async fn health(client: &reqwest::Client, server: &Server) -> Value {
    get_json(client, server, "/api/health").await
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

/// A web folder whose page has one inline script, and beside it (outside) a folder holding
/// `key` = "top secret": what the static-file tests try to reach.
pub fn web_and_secret() -> (tempfile::TempDir, tempfile::TempDir) {
    let web = tempfile::tempdir().unwrap();
    let secret = tempfile::tempdir().unwrap();
    std::fs::write(secret.path().join("key"), "top secret").unwrap();
    std::fs::write(
        web.path().join("index.html"),
        "<!doctype html><script>1</script>",
    )
    .unwrap();
    (web, secret)
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .pool_max_idle_per_host(256)
        // Let go of idle connections before the server's idle timeout (5 s) closes them, so a
        // request never races the server's close.
        .pool_idle_timeout(Duration::from_secs(2))
        .build()
        .unwrap()
}

pub fn png(width: u32, height: u32) -> Vec<u8> {
    let mut bytes = Vec::new();
    let image = image_rgba(width, height);
    let encoder = image::codecs::png::PngEncoder::new(std::io::Cursor::new(&mut bytes));
    image::ImageEncoder::write_image(
        encoder,
        &image,
        width,
        height,
        image::ExtendedColorType::Rgba8,
    )
    .unwrap();
    bytes
}

pub fn image_rgba(width: u32, height: u32) -> Vec<u8> {
    (0..width * height)
        .flat_map(|i| [(i % 251) as u8, 80, 160, if i % 3 == 0 { 0 } else { 255 }])
        .collect()
}

/// A raw HTTP/1.1 request, so that paths reach the server exactly as written.
pub fn raw_get(base: &str, path: &str, headers: &str) -> (u16, String, Vec<u8>) {
    let address = base.trim_start_matches("http://");
    let mut stream = std::net::TcpStream::connect(address).unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n{headers}\r\n"
    )
    .unwrap();
    let mut response = Vec::new();
    stream.read_to_end(&mut response).unwrap();
    let split = response.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    let head = String::from_utf8_lossy(&response[..split]).to_string();
    let status = head[9..12].parse().unwrap();
    (status, head, response[split + 4..].to_vec())
}

pub fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().find_map(|line| {
        let (key, value) = line.split_once(':')?;
        key.eq_ignore_ascii_case(name).then(|| value.trim())
    })
}

/// The server's peak resident memory so far (VmHWM), in bytes.
pub fn peak_rss(server: &Server) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{}/status", server.child.id())).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    line.split_whitespace()
        .nth(1)
        .unwrap()
        .parse::<u64>()
        .unwrap()
        * 1024
}

/// After an attack: health answers within a second, and a normal job (the fixture shape
/// model, 2 steps, octree 16) is done.
pub async fn still_serves(client: &reqwest::Client, server: &Server) {
    let started = Instant::now();
    assert_eq!(health(client, server).await["status"], "healthy");
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "health took {:?}",
        started.elapsed()
    );
    let response = client
        .post(server.url("/api/generate-3d?wait=true"))
        .json(&json!({
            "image": b64(&png(32, 32)), "steps": 2, "octree_resolution": 16,
            "remove_background": false, "format": "obj",
        }))
        .send()
        .await
        .unwrap();
    let status = response.status();
    let body = response.text().await.unwrap();
    assert_eq!(status, 200, "a normal job after the attack: {body}");
}

/// A model of `mib` MiB (F16 after packing) in `root/<id>`.
pub fn model(root: &Path, id: &str, mib: usize) -> PathBuf {
    let input = root.join(format!("{id}.safetensors"));
    let n = mib << 18; // f32 elements: mib MiB of f16 after packing
    let tensors: Vec<(String, Vec<u8>)> = (0..4)
        .map(|i| {
            let values: Vec<u8> = (0..n / 4)
                .flat_map(|k| (((k % 97) as f32) / 97.0 - 0.5).to_le_bytes())
                .collect();
            (format!("layer{i}.weight"), values)
        })
        .collect();
    let views: Vec<(String, safetensors::tensor::TensorView)> = tensors
        .iter()
        .map(|(name, bytes)| {
            let view = safetensors::tensor::TensorView::new(
                safetensors::Dtype::F32,
                vec![bytes.len() / 4],
                bytes,
            )
            .unwrap();
            (name.clone(), view)
        })
        .collect();
    safetensors::serialize_to_file(views, None, &input).unwrap();
    let out = root.join(id);
    let status = Command::new(binary())
        .args(["pack", "--model-id", id, "--shard-size", "16", "-o"])
        .arg(&out)
        .arg(&input)
        .status()
        .unwrap();
    assert!(status.success());
    std::fs::remove_file(input).unwrap();
    out
}

/// Flip a byte in the middle of the shard set's first shard.
pub fn corrupt_a_shard(set: &Path) {
    let shard = std::fs::read_dir(set)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "safetensors"))
        .unwrap();
    let mut bytes = std::fs::read(&shard).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    std::fs::write(&shard, bytes).unwrap();
}
