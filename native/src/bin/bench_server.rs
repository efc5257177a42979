//! Server benchmark: time from process start to the first `/api/health` 200 (the original
//! studio took 0.9 s after its fix, 26 s before), and health latency under 1000 concurrent
//! requests while a model is loading, side by side with the same requests once it is ready.
//!
//! With `--shape-model DIR` (a converted model, `orfeas convert`), also the same burst while a
//! generation job runs on it.
//!
//! `cargo run -p orfeas --bin bench-server -- [--runs 5] [--requests 1000] [--model-mib 64]
//!  [--shape-model DIR]` (it starts the `orfeas` binary that sits next to it).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

const ORIGINAL_STARTUP_S: f64 = 0.9;

struct Server {
    child: Child,
    base: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn orfeas_binary() -> Result<PathBuf> {
    let me = std::env::current_exe()?;
    let sibling = me.with_file_name("orfeas");
    anyhow::ensure!(
        sibling.is_file(),
        "{} not found: build it first (cargo build -p orfeas)",
        sibling.display()
    );
    Ok(sibling)
}

fn start(binary: &Path, models: &Path, throttle_mibps: f64) -> Result<(Server, Instant)> {
    let spawned = Instant::now();
    let mut child = Command::new(binary)
        .args(["serve", "--bind", "127.0.0.1:0", "--models"])
        .arg(models)
        .args(["--load-throttle-mibps", &throttle_mibps.to_string()])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    let mut line = String::new();
    BufReader::new(child.stdout.take().context("stdout")?).read_line(&mut line)?;
    let base = line
        .trim()
        .strip_prefix("orfeas: listening on ")
        .with_context(|| format!("unexpected first line {line:?}"))?
        .to_string();
    Ok((Server { child, base }, spawned))
}

fn make_model(root: &Path, mib: usize) -> Result<()> {
    let input = root.join("input.safetensors");
    let elements = mib << 19; // f32 elements → `mib` MiB once packed to f16
    let data: Vec<u8> = (0..elements)
        .flat_map(|i| ((i % 1000) as f32 * 1e-3).to_le_bytes())
        .collect();
    let view =
        safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![elements], &data)?;
    safetensors::serialize_to_file([("weight".to_string(), view)], None, &input)?;
    let options = orfeas_engine::weights::pack::PackOptions {
        model_id: "bench".into(),
        shard_size: 16 << 20,
        ..Default::default()
    };
    orfeas_engine::weights::pack::pack(
        std::slice::from_ref(&input),
        &root.join("bench"),
        &options,
        |_, _| {},
    )?;
    std::fs::remove_file(input)?;
    Ok(())
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// `requests` health requests all at once; latencies in ms, sorted.
async fn burst(base: &str, requests: usize) -> Result<(Vec<f64>, f64)> {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(requests)
        .timeout(Duration::from_secs(30))
        .build()?;
    let url = format!("{base}/api/health");
    let started = Instant::now();
    let tasks: Vec<_> = (0..requests)
        .map(|_| {
            let client = client.clone();
            let url = url.clone();
            tokio::spawn(async move {
                let t = Instant::now();
                let response = client.get(&url).send().await?;
                let ok = response.status().is_success();
                let body = response.bytes().await?;
                anyhow::ensure!(ok && !body.is_empty(), "health failed");
                Ok::<f64, anyhow::Error>(t.elapsed().as_secs_f64() * 1000.0)
            })
        })
        .collect();
    let mut latencies = Vec::with_capacity(requests);
    for task in tasks {
        latencies.push(task.await??);
    }
    let wall = started.elapsed().as_secs_f64();
    latencies.sort_by(f64::total_cmp);
    Ok((latencies, wall))
}

async fn models_status(base: &str) -> Result<String> {
    let health: serde_json::Value = reqwest::get(format!("{base}/api/health"))
        .await?
        .json()
        .await?;
    Ok(health["models_status"]
        .as_str()
        .unwrap_or_default()
        .to_string())
}

#[tokio::main]
async fn main() -> Result<()> {
    let mut runs = 5usize;
    let mut requests = 1000usize;
    let mut model_mib = 64usize;
    let mut shape_model: Option<PathBuf> = None;
    let args: Vec<String> = std::env::args().skip(1).collect();
    for pair in args.chunks(2) {
        let value = pair.get(1).context("a flag without a value")?;
        match pair[0].as_str() {
            "--runs" => runs = value.parse()?,
            "--requests" => requests = value.parse()?,
            "--model-mib" => model_mib = value.parse()?,
            "--shape-model" => shape_model = Some(PathBuf::from(value)),
            other => bail!("unknown flag {other}"),
        }
    }
    let binary = orfeas_binary()?;
    let dir = tempfile::tempdir()?;
    make_model(dir.path(), model_mib)?;

    // 1. Start-up: spawn → first health 200.
    let client = reqwest::Client::new();
    let mut startup = Vec::new();
    for _ in 0..runs {
        let (server, spawned) = start(&binary, dir.path(), 4.0)?;
        loop {
            if let Ok(response) = client
                .get(format!("{}/api/health", server.base))
                .send()
                .await
                && response.status().is_success()
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        startup.push(spawned.elapsed().as_secs_f64() * 1000.0);
    }
    startup.sort_by(f64::total_cmp);

    // 2. Health under a burst, while loading (throttled so it stays loading) and once ready.
    let (server, _) = start(&binary, dir.path(), model_mib as f64 / 20.0)?;
    let status_before = models_status(&server.base).await?;
    let (loading, loading_wall) = burst(&server.base, requests).await?;
    let status_after = models_status(&server.base).await?;
    anyhow::ensure!(
        status_before == "loading" && status_after == "loading",
        "the model was not loading during the burst ({status_before} → {status_after})"
    );
    drop(server);
    let (server, _) = start(&binary, dir.path(), 100_000.0)?;
    while models_status(&server.base).await? != "ready" {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (ready, ready_wall) = burst(&server.base, requests).await?;
    drop(server);

    // 3. The same burst while a generation job runs (the job leaves the request threads).
    let during_job = match &shape_model {
        Some(shape) => Some(burst_during_job(&binary, dir.path(), shape, requests).await?),
        None => None,
    };

    println!(
        "Orfeas server benchmark ({} cores, loopback)",
        std::thread::available_parallelism()?
    );
    println!(
        "start → first /api/health 200, {runs} runs: median {:.1} ms (min {:.1}, max {:.1}); \
         the original studio: {:.0} ms → ratio {:.3}",
        percentile(&startup, 0.5),
        startup[0],
        startup[startup.len() - 1],
        ORIGINAL_STARTUP_S * 1000.0,
        percentile(&startup, 0.5) / (ORIGINAL_STARTUP_S * 1000.0)
    );
    println!("{requests} concurrent /api/health requests:");
    for (label, latencies, wall) in [
        (
            format!("while a {model_mib} MiB model loads"),
            &loading,
            loading_wall,
        ),
        ("once ready".to_string(), &ready, ready_wall),
    ] {
        println!(
            "  {label:<28} p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms, all {requests} in {:.2} s",
            percentile(latencies, 0.5),
            percentile(latencies, 0.99),
            latencies[latencies.len() - 1],
            wall
        );
    }
    if let Some((latencies, wall, job_s)) = &during_job {
        println!(
            "  {:<28} p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms, all {requests} in {:.2} s \
             (the job took {job_s:.1} s)",
            "while a generation job runs",
            percentile(latencies, 0.5),
            percentile(latencies, 0.99),
            latencies[latencies.len() - 1],
            wall
        );
    }
    println!(
        "  p99 loading / p99 ready: {:.2}",
        percentile(&loading, 0.99) / percentile(&ready, 0.99)
    );
    if let Some((latencies, _, _)) = &during_job {
        println!(
            "  p99 during a job / p99 ready: {:.2}",
            percentile(latencies, 0.99) / percentile(&ready, 0.99)
        );
    }
    Ok(())
}

/// A cut-out (a disc on transparency), PNG, base64: generation needs no background removal.
fn disc_png_base64() -> Result<String> {
    use base64::Engine;
    let image = image::RgbaImage::from_fn(256, 256, |x, y| {
        let (dx, dy) = (x as f32 - 128.0, y as f32 - 128.0);
        let inside = dx * dx + dy * dy < 90.0 * 90.0;
        image::Rgba([200, 60, 40, if inside { 255 } else { 0 }])
    });
    let mut png = Vec::new();
    image.write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)?;
    Ok(base64::engine::general_purpose::STANDARD.encode(png))
}

/// Start a server with `shape` beside the bench model, queue one job (30 steps, R = 256) and
/// burst health while it runs: (latencies, burst wall time, job seconds).
async fn burst_during_job(
    binary: &Path,
    bench_models: &Path,
    shape: &Path,
    requests: usize,
) -> Result<(Vec<f64>, f64, f64)> {
    let models = tempfile::tempdir()?;
    std::os::unix::fs::symlink(bench_models.join("bench"), models.path().join("bench"))?;
    std::os::unix::fs::symlink(std::fs::canonicalize(shape)?, models.path().join("shape"))?;
    let (server, _) = start(binary, models.path(), 100_000.0)?;
    while models_status(&server.base).await? != "ready" {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let client = reqwest::Client::new();
    let submitted = Instant::now();
    let accepted: serde_json::Value = client
        .post(format!("{}/api/generate-3d", server.base))
        .json(&serde_json::json!({
            "image": disc_png_base64()?, "steps": 30, "octree_resolution": 256,
            "remove_background": false,
        }))
        .send()
        .await?
        .json()
        .await?;
    let status_url = format!(
        "{}{}",
        server.base,
        accepted["status_url"].as_str().context("a job")?
    );
    let status = |client: reqwest::Client, url: String| async move {
        let status: serde_json::Value = client.get(&url).send().await?.json().await?;
        Ok::<String, anyhow::Error>(status["status"].as_str().unwrap_or_default().to_string())
    };
    while status(client.clone(), status_url.clone()).await? != "running" {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let (latencies, wall) = burst(&server.base, requests).await?;
    anyhow::ensure!(
        status(client.clone(), status_url.clone()).await? == "running",
        "the job finished before the burst did: use a larger model"
    );
    loop {
        match status(client.clone(), status_url.clone()).await?.as_str() {
            "running" | "queued" => tokio::time::sleep(Duration::from_millis(20)).await,
            "done" => break,
            other => bail!("the job ended {other}"),
        }
    }
    Ok((latencies, wall, submitted.elapsed().as_secs_f64()))
}
