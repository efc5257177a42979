//! Server benchmark: time from process start to the first `/api/health` 200 (the original
//! studio took 0.9 s after its fix, 26 s before), and health latency under 1000 concurrent
//! requests while a model is loading, side by side with the same requests once it is ready.
//!
//! With a shape model (`--shape-model DIR`, a converted model; else the bench synthesizes the
//! 2.1 layout at reduced width and converts it), also:
//! - the same burst while a generation job runs on it;
//! - health latency (p50/p99, one request every 10 ms) while 20 uploads of a 64 MP PNG arrive at
//!   once (each decoded off the request threads, two at a time), side by side with idle, and the
//!   server's peak RSS;
//! - the server's RSS before any job, after `--keep-jobs` jobs and after `--jobs` (1000) jobs:
//!   finished jobs are evicted past the retention bound, so it must not grow with the count.
//!
//! `cargo run --release -p orfeas --bin bench-server -- [--runs 5] [--requests 1000]
//!  [--model-mib 64] [--shape-model DIR] [--uploads 20] [--jobs 1000]` (it starts the `orfeas`
//!  binary that sits next to it).
//!
//! With `--queue nats://HOST:PORT` (a running `nats-server -js`), it measures the fleet's queue
//! instead, against the in-process one (`fleet.rs`): `[--fleet-jobs 40] [--ack-wait-s 5]`.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use image::ImageEncoder;

#[path = "../fleet.rs"]
mod fleet;

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
    start_with(binary, models, throttle_mibps, &[])
}

fn start_with(
    binary: &Path,
    models: &Path,
    throttle_mibps: f64,
    extra: &[&str],
) -> Result<(Server, Instant)> {
    let spawned = Instant::now();
    let mut child = Command::new(binary)
        .args(["serve", "--bind", "127.0.0.1:0", "--models"])
        .arg(models)
        .args(["--load-throttle-mibps", &throttle_mibps.to_string()])
        .args(extra)
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
    let mut uploads = 20usize;
    let mut jobs = 1000usize;
    let mut queue: Option<String> = None;
    let mut fleet_jobs = 40usize;
    let mut ack_wait_s = 5u64;
    let args: Vec<String> = std::env::args().skip(1).collect();
    for pair in args.chunks(2) {
        let value = pair.get(1).context("a flag without a value")?;
        match pair[0].as_str() {
            "--runs" => runs = value.parse()?,
            "--requests" => requests = value.parse()?,
            "--model-mib" => model_mib = value.parse()?,
            "--shape-model" => shape_model = Some(PathBuf::from(value)),
            "--uploads" => uploads = value.parse()?,
            "--jobs" => jobs = value.parse()?,
            "--queue" => queue = Some(value.clone()),
            "--fleet-jobs" => fleet_jobs = value.parse()?,
            "--ack-wait-s" => ack_wait_s = value.parse()?,
            other => bail!("unknown flag {other}"),
        }
    }
    let binary = orfeas_binary()?;
    if let Some(url) = queue {
        // The fixture model (tiny, the tests' own) unless one is given.
        let fixture = tempfile::tempdir()?;
        let shape = match shape_model {
            Some(shape) => shape,
            None => {
                let shape = fixture.path().join("fixture");
                orfeas_tests::fixtures::converted_shape_model(&shape)?;
                shape
            }
        };
        return fleet::run(&binary, &shape, &url, fleet_jobs, ack_wait_s).await;
    }
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
    let synthesized = tempfile::tempdir()?;
    let shape = match shape_model {
        Some(shape) => shape,
        None => synthesize_shape_model(&binary, synthesized.path())?,
    };
    let during_job = burst_during_job(&binary, dir.path(), &shape, requests).await?;
    // 4. Health while large uploads arrive; 5. memory over many jobs.
    let under_uploads = health_during_uploads(&binary, &shape, uploads).await?;
    let over_jobs = memory_over_jobs(&binary, &shape, jobs).await?;

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
    {
        let (latencies, wall, job_s) = &during_job;
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
    println!(
        "  p99 during a job / p99 ready: {:.2}",
        percentile(&during_job.0, 0.99) / percentile(&ready, 0.99)
    );
    let u = &under_uploads;
    println!(
        "/api/health, one request every 10 ms, with {uploads} concurrent uploads of a {}×{} PNG \
         ({:.0} KB each; {} accepted, {} refused {:?}; all answered in {:.1} s; server peak RSS \
         {} MiB):",
        UPLOAD_SIDE,
        UPLOAD_SIDE,
        u.png_bytes as f64 / 1e3,
        u.accepted,
        u.refused.len(),
        u.refused,
        u.uploads_s,
        u.peak_rss >> 20
    );
    for (label, latencies) in [("idle", &u.idle), ("while the uploads arrive", &u.busy)] {
        println!(
            "  {label:<28} p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms ({} requests)",
            percentile(latencies, 0.5),
            percentile(latencies, 0.99),
            latencies[latencies.len() - 1],
            latencies.len()
        );
    }
    println!(
        "  p99 during uploads / p99 idle: {:.2}",
        percentile(&u.busy, 0.99) / percentile(&u.idle, 0.99)
    );
    let m = &over_jobs;
    println!(
        "server RSS over {jobs} jobs (steps 1, octree 16, --keep-jobs {KEEP_JOBS}; {:.1} s): \
         {} MiB before any job, {} MiB after {KEEP_JOBS}, {} MiB after {jobs}; \
         after {jobs} / after {KEEP_JOBS}: {:.3}",
        m.seconds,
        m.before >> 20,
        m.after_retention >> 20,
        m.after_all >> 20,
        m.after_all as f64 / m.after_retention as f64
    );
    println!(
        "  RSS every 100 jobs (MiB): {:?}",
        m.every_100.iter().map(|b| b >> 20).collect::<Vec<_>>()
    );
    Ok(())
}

/// The 2.1 layout at reduced width (`orfeas synthesize --reduced`), converted into
/// `dir/shape`: a shape model for the job parts when none is given.
fn synthesize_shape_model(binary: &Path, dir: &Path) -> Result<PathBuf> {
    let checkpoint = dir.join("checkpoint");
    let run = |args: &[&std::ffi::OsStr]| -> Result<()> {
        let out = Command::new(binary).args(args).output()?;
        anyhow::ensure!(
            out.status.success(),
            "orfeas {:?}: {}",
            args,
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(())
    };
    run(&[
        "synthesize".as_ref(),
        "--variant".as_ref(),
        "2.1".as_ref(),
        "--reduced".as_ref(),
        "--format".as_ref(),
        "safetensors".as_ref(),
        "-o".as_ref(),
        checkpoint.as_os_str(),
    ])?;
    let shape = dir.join("shape");
    run(&[
        "convert".as_ref(),
        checkpoint.join("model.fp16.safetensors").as_os_str(),
        "--config".as_ref(),
        checkpoint.join("config.yaml").as_os_str(),
        "-o".as_ref(),
        shape.as_os_str(),
    ])?;
    Ok(shape)
}

/// A models folder holding only `shape` (as `shape`).
fn shape_only(shape: &Path) -> Result<tempfile::TempDir> {
    let models = tempfile::tempdir()?;
    std::os::unix::fs::symlink(std::fs::canonicalize(shape)?, models.path().join("shape"))?;
    Ok(models)
}

async fn wait_ready(base: &str) -> Result<()> {
    let started = Instant::now();
    while models_status(base).await? != "ready" {
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(600),
            "the shape model did not load"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

/// The server's resident memory now (`VmRSS`) and at its peak (`VmHWM`), in bytes.
fn rss(server: &Server) -> Result<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{}/status", server.child.id()))?;
    let field = |name: &str| -> Result<u64> {
        let line = status
            .lines()
            .find(|l| l.starts_with(name))
            .with_context(|| format!("no {name} in /proc/PID/status"))?;
        Ok(line
            .split_whitespace()
            .nth(1)
            .context("a value")?
            .parse::<u64>()?
            * 1024)
    };
    Ok((field("VmRSS:")?, field("VmHWM:")?))
}

/// Side of the large upload: 8000² = 64 MP, the most pixels the server accepts.
const UPLOAD_SIDE: u32 = 8000;

struct UploadFigures {
    png_bytes: usize,
    accepted: usize,
    refused: Vec<u16>,
    uploads_s: f64,
    peak_rss: u64,
    idle: Vec<f64>,
    busy: Vec<f64>,
}

/// Health latencies, one request every 10 ms, until `done` is set; sorted.
async fn sample_health(
    base: String,
    done: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> Result<Vec<f64>> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()?;
    let url = format!("{base}/api/health");
    let mut latencies = Vec::new();
    while !done.load(std::sync::atomic::Ordering::Relaxed) {
        let t = Instant::now();
        let response = client.get(&url).send().await?;
        anyhow::ensure!(response.status().is_success(), "health failed");
        response.bytes().await?;
        latencies.push(t.elapsed().as_secs_f64() * 1000.0);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    latencies.sort_by(f64::total_cmp);
    Ok(latencies)
}

const BOUNDARY: &str = "orfeas-bench-boundary";

/// A multipart/form-data body: the text fields, then the file as `image`.
fn multipart_form(fields: &[(&str, &[u8])], file: &[u8]) -> Vec<u8> {
    let mut body = Vec::with_capacity(file.len() + 1024);
    for (name, value) in fields {
        body.extend_from_slice(
            format!("--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n")
                .as_bytes(),
        );
        body.extend_from_slice(value);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(
        format!(
            "--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"image\"; \
             filename=\"large.png\"\r\nContent-Type: image/png\r\n\r\n"
        )
        .as_bytes(),
    );
    body.extend_from_slice(file);
    body.extend_from_slice(format!("\r\n--{BOUNDARY}--\r\n").as_bytes());
    body
}

/// 20 (`uploads`) POSTs of a 64 MP PNG at once, health sampled meanwhile, and idle before.
async fn health_during_uploads(
    binary: &Path,
    shape: &Path,
    uploads: usize,
) -> Result<UploadFigures> {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    let models = shape_only(shape)?;
    // A queue that takes them all: every upload is read and decoded, none refused early.
    let queue = (uploads + 4).to_string();
    let (server, _) = start_with(
        binary,
        models.path(),
        100_000.0,
        &["--queue", &queue, "--jobs-per-client", &queue],
    )?;
    wait_ready(&server.base).await?;
    // A gradient with a disc: compresses well (the attack's point), decodes to 256 MB.
    let image = image::RgbaImage::from_fn(UPLOAD_SIDE, UPLOAD_SIDE, |x, y| {
        let (dx, dy) = (x as f32 - 4000.0, y as f32 - 4000.0);
        let inside = dx * dx + dy * dy < 3000.0 * 3000.0;
        image::Rgba([
            (x / 32) as u8,
            (y / 32) as u8,
            90,
            if inside { 255 } else { 0 },
        ])
    });
    let mut png = Vec::new();
    image::codecs::png::PngEncoder::new_with_quality(
        &mut png,
        image::codecs::png::CompressionType::Fast,
        image::codecs::png::FilterType::Sub,
    )
    .write_image(
        image.as_raw(),
        UPLOAD_SIDE,
        UPLOAD_SIDE,
        image::ExtendedColorType::Rgba8,
    )?;
    drop(image);
    let png_bytes = png.len();
    let form = bytes::Bytes::from(multipart_form(
        &[
            ("steps", b"1"),
            ("octree_resolution", b"16"),
            ("remove_background", b"false"),
        ],
        &png,
    ));
    drop(png);

    let done = Arc::new(AtomicBool::new(false));
    let sampler = tokio::spawn(sample_health(server.base.clone(), done.clone()));
    tokio::time::sleep(Duration::from_secs(2)).await;
    done.store(true, Ordering::Relaxed);
    let idle = sampler.await??;

    let done = Arc::new(AtomicBool::new(false));
    let sampler = tokio::spawn(sample_health(server.base.clone(), done.clone()));
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(600))
        .build()?;
    let started = Instant::now();
    let posts: Vec<_> = (0..uploads)
        .map(|_| {
            let client = client.clone();
            let url = format!("{}/api/generate-3d", server.base);
            let png = form.clone();
            tokio::spawn(async move {
                let response = client
                    .post(&url)
                    .header(
                        "content-type",
                        format!("multipart/form-data; boundary={BOUNDARY}"),
                    )
                    .body(png)
                    .send()
                    .await?;
                Ok::<u16, anyhow::Error>(response.status().as_u16())
            })
        })
        .collect();
    let mut accepted = 0;
    let mut refused = Vec::new();
    for post in posts {
        match post.await?? {
            202 => accepted += 1,
            other => refused.push(other),
        }
    }
    let uploads_s = started.elapsed().as_secs_f64();
    done.store(true, Ordering::Relaxed);
    let busy = sampler.await??;
    let (_, peak_rss) = rss(&server)?;
    Ok(UploadFigures {
        png_bytes,
        accepted,
        refused,
        uploads_s,
        peak_rss,
        idle,
        busy,
    })
}

/// Finished jobs the memory run keeps (`--keep-jobs`).
const KEEP_JOBS: usize = 64;

struct MemoryFigures {
    before: u64,
    /// After every 100 jobs.
    every_100: Vec<u64>,
    after_retention: u64,
    after_all: u64,
    seconds: f64,
}

/// `jobs` small jobs one after another (each result fetched), RSS read along the way.
async fn memory_over_jobs(binary: &Path, shape: &Path, jobs: usize) -> Result<MemoryFigures> {
    let models = shape_only(shape)?;
    let keep = KEEP_JOBS.to_string();
    let (server, _) = start_with(binary, models.path(), 100_000.0, &["--keep-jobs", &keep])?;
    wait_ready(&server.base).await?;
    let client = reqwest::Client::new();
    let image = disc_png_base64()?;
    let (before, _) = rss(&server)?;
    let mut after_retention = before;
    let mut every_100 = Vec::new();
    let started = Instant::now();
    for i in 0..jobs {
        let response = client
            .post(format!("{}/api/generate-3d?wait=true", server.base))
            .json(&serde_json::json!({
                "image": image, "steps": 1, "octree_resolution": 16, "seed": i,
                "remove_background": false, "format": "glb",
            }))
            .send()
            .await?;
        anyhow::ensure!(
            response.status().is_success(),
            "job {i}: {}",
            response.status()
        );
        response.bytes().await?;
        if i + 1 == KEEP_JOBS.min(jobs) {
            after_retention = rss(&server)?.0;
        }
        if (i + 1) % 100 == 0 {
            every_100.push(rss(&server)?.0);
        }
    }
    let (after_all, _) = rss(&server)?;
    Ok(MemoryFigures {
        before,
        every_100,
        after_retention,
        after_all,
        seconds: started.elapsed().as_secs_f64(),
    })
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
