//! `bench-server --queue nats://…`: the fleet's queue against the in-process one, in one run on
//! this machine — jobs per minute with one and two worker processes, submit latency, and the
//! time from a worker's SIGKILL to its job running on another worker.
//!
//! Every process here shares this machine's cores (and its one CPU backend): two workers
//! compete for the same cores, where a real fleet has one GPU per worker.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use serde_json::{Value, json};

use super::{Server, percentile, start_with};

/// What one configuration measured.
struct Figures {
    label: String,
    jobs_per_min: f64,
    submit_ms: Vec<f64>,
}

fn request() -> Result<Value> {
    Ok(json!({
        "image": super::disc_png_base64()?, "steps": 2, "octree_resolution": 32,
        "remove_background": false,
    }))
}

async fn get(client: &reqwest::Client, server: &Server, path: &str) -> Result<Value> {
    Ok(client
        .get(format!("{}{path}", server.base))
        .send()
        .await?
        .json()
        .await?)
}

/// Submit `jobs` jobs at once (each POST timed), then wait until all are done.
async fn throughput(label: &str, server: &Server, jobs: usize) -> Result<Figures> {
    let client = reqwest::Client::new();
    let body = request()?;
    let started = Instant::now();
    let mut ids = Vec::new();
    let mut submit_ms = Vec::new();
    for _ in 0..jobs {
        let sent = Instant::now();
        let response = client
            .post(format!("{}/api/generate-3d", server.base))
            .json(&body)
            .send()
            .await?;
        submit_ms.push(sent.elapsed().as_secs_f64() * 1000.0);
        anyhow::ensure!(response.status() == 202, "submit: {}", response.status());
        let accepted: Value = response.json().await?;
        ids.push(accepted["job_id"].as_str().context("a job id")?.to_string());
    }
    for id in &ids {
        loop {
            let status = get(&client, server, &format!("/api/jobs/{id}")).await?;
            match status["status"].as_str() {
                Some("done") => break,
                Some("queued" | "running") => tokio::time::sleep(Duration::from_millis(20)).await,
                _ => anyhow::bail!("{label}: job {id} ended {status}"),
            }
        }
    }
    let minutes = started.elapsed().as_secs_f64() / 60.0;
    submit_ms.sort_by(f64::total_cmp);
    Ok(Figures {
        label: label.into(),
        jobs_per_min: jobs as f64 / minutes,
        submit_ms,
    })
}

async fn wait_workers(server: &Server, count: usize) -> Result<()> {
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let health = get(&client, server, "/api/health").await?;
        let ready = health["queue"]["workers"]
            .as_array()
            .map_or(0, |w| w.iter().filter(|w| w["ready"] == true).count());
        if ready >= count {
            return Ok(());
        }
        anyhow::ensure!(Instant::now() < deadline, "workers never ready: {health}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

struct FleetProcesses {
    front: Server,
    workers: Vec<Server>,
}

fn start_fleet(
    binary: &Path,
    models: &Path,
    empty: &Path,
    url: &str,
    name: &str,
    workers: usize,
    extra: &[&str],
) -> Result<FleetProcesses> {
    let common = |instance: String| {
        let mut args: Vec<String> = [
            "--queue",
            url,
            "--fleet-name",
            name,
            "--queue-size",
            "1000",
            "--jobs-per-client",
            "1000",
            "--instance-name",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.push(instance);
        args.extend(extra.iter().map(|s| s.to_string()));
        args
    };
    let mut front_args = common(format!("{name}-front"));
    front_args.push("--no-worker".into());
    let front_args: Vec<&str> = front_args.iter().map(String::as_str).collect();
    let front = start_with(binary, empty, 100_000.0, &front_args)?.0;
    let mut started = Vec::new();
    for i in 0..workers {
        let args = common(format!("{name}-w{i}"));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        started.push(start_with(binary, models, 100_000.0, &args)?.0);
    }
    Ok(FleetProcesses {
        front,
        workers: started,
    })
}

/// Kill the worker running a held job; the seconds until another worker runs it.
async fn kill_to_rerun(
    binary: &Path,
    models: &Path,
    empty: &Path,
    url: &str,
    ack_wait_s: u64,
) -> Result<f64> {
    let hold_dir = tempfile::tempdir()?;
    let hold: PathBuf = hold_dir.path().join("hold");
    std::fs::write(&hold, b"")?;
    let ack = ack_wait_s.to_string();
    let hold_text = hold.to_str().context("a UTF-8 temp path")?.to_string();
    let extra = ["--ack-wait-s", &ack, "--hold-jobs-while", &hold_text];
    let mut fleet = start_fleet(binary, models, empty, url, "bench-kill", 2, &extra)?;
    wait_workers(&fleet.front, 2).await?;
    let client = reqwest::Client::new();
    let response = client
        .post(format!("{}/api/generate-3d", fleet.front.base))
        .json(&request()?)
        .send()
        .await?;
    let accepted: Value = response.json().await?;
    let id = accepted["job_id"].as_str().context("a job id")?.to_string();
    let first = loop {
        let status = get(&client, &fleet.front, &format!("/api/jobs/{id}")).await?;
        if status["status"] == "running" {
            break status["worker"].as_str().unwrap_or_default().to_string();
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let index = usize::from(first.ends_with("w1"));
    fleet.workers[index].child.kill()?;
    let killed = Instant::now();
    loop {
        let status = get(&client, &fleet.front, &format!("/api/jobs/{id}")).await?;
        if status["status"] == "running" && status["attempt"] == 2 {
            break;
        }
        anyhow::ensure!(killed.elapsed() < Duration::from_secs(120), "never rerun");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let seconds = killed.elapsed().as_secs_f64();
    std::fs::remove_file(&hold)?;
    Ok(seconds)
}

pub async fn run(
    binary: &Path,
    shape: &Path,
    url: &str,
    jobs: usize,
    ack_wait_s: u64,
) -> Result<()> {
    // The models folder holds the shape model alone.
    let models = super::shape_only(shape)?;
    let empty = tempfile::tempdir()?;
    let mut results = Vec::new();
    {
        let args = ["--queue-size", "1000", "--jobs-per-client", "1000"];
        let server = start_with(binary, models.path(), 100_000.0, &args)?.0;
        super::wait_ready(&server.base).await?;
        results.push(throughput("in-process, 1 runner", &server, jobs).await?);
    }
    for workers in [1, 2] {
        let name = format!("bench-{workers}");
        let fleet = start_fleet(
            binary,
            models.path(),
            empty.path(),
            url,
            &name,
            workers,
            &[],
        )?;
        wait_workers(&fleet.front, workers).await?;
        let label = format!("NATS, front end + {workers} worker(s)");
        results.push(throughput(&label, &fleet.front, jobs).await?);
    }
    let rerun_s = kill_to_rerun(binary, models.path(), empty.path(), url, ack_wait_s).await?;

    println!(
        "Orfeas fleet benchmark ({} cores, loopback, {url}; every process shares these cores \
         and the CPU backend — a real fleet has one GPU per worker)",
        std::thread::available_parallelism()?
    );
    println!(
        "{jobs} jobs (the fixture model unless --shape-model, 2 steps, octree 32), submitted at once:"
    );
    for figures in &results {
        println!(
            "  {:<34} {:>7.1} jobs/min; submit p50 {:.1} ms, p99 {:.1} ms",
            figures.label,
            figures.jobs_per_min,
            percentile(&figures.submit_ms, 0.5),
            percentile(&figures.submit_ms, 0.99),
        );
    }
    let [local, one, two] = &results[..] else {
        unreachable!()
    };
    println!(
        "ratio= jobs/min, NATS 2 workers / 1 worker: {:.2}",
        two.jobs_per_min / one.jobs_per_min
    );
    println!(
        "ratio= jobs/min, NATS 1 worker / in-process: {:.2}",
        one.jobs_per_min / local.jobs_per_min
    );
    println!(
        "ratio= submit p50, NATS / in-process: {:.2} (p99: {:.2})",
        percentile(&one.submit_ms, 0.5) / percentile(&local.submit_ms, 0.5),
        percentile(&one.submit_ms, 0.99) / percentile(&local.submit_ms, 0.99),
    );
    println!(
        "a worker SIGKILLed mid-job: its job running on the other worker after {rerun_s:.2} s \
         (--ack-wait-s {ack_wait_s}); ratio= rerun / ack wait: {:.2}",
        rerun_s / ack_wait_s as f64
    );
    Ok(())
}
