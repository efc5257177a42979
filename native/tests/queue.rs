//! The job queue over real HTTP with a pipeline the test scripts: queue full → 429, status
//! and result, `?wait=true`, random ids, a panicking job failed while the runner goes on,
//! a job failed by its input answered as the client's error (422), cancellation (queued and
//! running), the per-job deadline, eviction by count and age (410).

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use burn::tensor::DType;
use orfeas::server::guard::Access;
use orfeas::server::jobs::{JobControl, JobError, JobInput, JobLimits, Jobs, MeshFile, Pipeline};
use orfeas::server::models::{Loader, Models, load_in_background};
use orfeas::server::{AppState, RequestLimits, router};
use serde_json::{Value, json};
use tokio::sync::Semaphore;

/// A pipeline the test drives by seed: 666 panics; 777 runs steps until it is told to stop
/// (a long job); 555 fails on its input (as a picture without a surface does); any other
/// finishes each time the test adds a permit, with a mesh naming the seed.
struct Scripted {
    permits: Arc<Semaphore>,
}

#[async_trait::async_trait]
impl Pipeline for Scripted {
    async fn run(&self, input: JobInput, control: &JobControl) -> Result<MeshFile, JobError> {
        control.step(1, input.params.options.steps.unwrap_or(30) as u32);
        match input.params.options.seed {
            666 => panic!("boom in the pipeline"),
            555 => return Err(JobError::Input("nothing to mesh in this picture".into())),
            777 => {
                let mut step = 1;
                while !control.should_stop() {
                    step += 1;
                    control.step(step, 1000);
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                return Err(JobError::Stopped);
            }
            _ => {}
        }
        self.permits
            .acquire()
            .await
            .map_err(|e| JobError::Internal(e.to_string()))?
            .forget();
        Ok(MeshFile {
            format: input.params.format,
            bytes: format!("solid seed{}\nendsolid\n", input.params.options.seed).into_bytes(),
            notes: Vec::new(),
        })
    }
}

fn tiny_model(root: &Path) {
    let input = root.join("in.safetensors");
    let data: Vec<u8> = (0..1024u32)
        .flat_map(|i| (i as f32).to_le_bytes())
        .collect();
    let view =
        safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![1024], &data).unwrap();
    safetensors::serialize_to_file([("w".to_string(), view)], None, &input).unwrap();
    let options = orfeas_engine::weights::pack::PackOptions {
        model_id: "shape".into(),
        ..Default::default()
    };
    orfeas_engine::weights::pack::pack(&[input], &root.join("shape"), &options, |_, _| {}).unwrap();
}

fn png() -> String {
    use base64::Engine;
    let mut bytes = Vec::new();
    image::RgbaImage::from_pixel(4, 4, image::Rgba([200, 10, 10, 255]))
        .write_to(
            &mut std::io::Cursor::new(&mut bytes),
            image::ImageFormat::Png,
        )
        .unwrap();
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// A server over the scripted pipeline with `limits`; its base URL and the gate.
async fn serve(limits: JobLimits) -> (String, Arc<Semaphore>) {
    let dir = tempfile::tempdir().unwrap();
    tiny_model(dir.path());
    let models = Arc::new(Models::discover(Some(dir.path())).unwrap());
    let cpu = orfeas::compute::open(
        orfeas::compute::Backend::Cpu,
        orfeas::compute::Precision::F32,
        None,
    )
    .unwrap();
    load_in_background(
        models.clone(),
        Loader::new(cpu.device, DType::F32, cpu.capacity),
    )
    .join()
    .unwrap();
    let permits = Arc::new(Semaphore::new(0));
    let jobs = Jobs::start(
        limits,
        Arc::new(Scripted {
            permits: permits.clone(),
        }),
    );
    let state = Arc::new(AppState::new(
        models,
        jobs,
        RequestLimits {
            max_upload_bytes: 1 << 20,
            ..RequestLimits::default()
        },
    ));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        let _dir = dir;
        axum::serve(listener, router(state, None, None, Access::default()))
            .await
            .unwrap();
    });
    (base, permits)
}

async fn submit(client: &reqwest::Client, base: &str, seed: u64) -> Value {
    client
        .post(format!("{base}/api/generate-3d"))
        .json(&json!({ "image": png(), "seed": seed, "format": "stl", "steps": 7 }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

async fn get_json(client: &reqwest::Client, url: &str) -> (u16, Value) {
    let response = client.get(url).send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// Poll `url` until its `status` is `want` (10 s at most).
async fn wait_for(client: &reqwest::Client, url: &str, want: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, status) = get_json(client, url).await;
        if status["status"] == want {
            return status;
        }
        assert!(Instant::now() < deadline, "waiting for {want}: {status}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A new job (seed `seed`) runs to `done`.
async fn a_job_is_done(client: &reqwest::Client, base: &str, seed: u64) {
    let job = submit(client, base, seed).await;
    let url = format!("{base}{}", job["status_url"].as_str().unwrap());
    wait_for(client, &url, "done").await;
}

/// Health answers within a second.
async fn healthy(client: &reqwest::Client, base: &str) {
    let started = Instant::now();
    let (code, _) = get_json(client, &format!("{base}/api/health")).await;
    assert_eq!(code, 200);
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "health took {:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_answers_429_and_jobs_deliver_their_mesh() {
    let (base, permits) = serve(JobLimits {
        queue: 1,
        ..JobLimits::default()
    })
    .await;
    let client = reqwest::Client::new();

    // One job runs (held by the gate), one waits in the queue of 1, the next is refused.
    let first = submit(&client, &base, 1).await;
    let id = first["job_id"].as_str().unwrap();
    assert_eq!(id.len(), 32, "a 128-bit id: {id}");
    assert!(id.chars().all(|c| c.is_ascii_hexdigit()));
    let first_url = format!("{base}{}", first["status_url"].as_str().unwrap());
    let running = wait_for(&client, &first_url, "running").await;
    assert_eq!(running["steps"], 7);
    let second = submit(&client, &base, 2).await;
    assert_ne!(second["job_id"], first["job_id"]);
    let second_url = format!("{base}{}", second["status_url"].as_str().unwrap());
    let (_, queued) = get_json(&client, &second_url).await;
    assert_eq!(queued["status"], "queued");
    assert_eq!(queued["position"], 0);
    let refused = client
        .post(format!("{base}/api/generate-3d"))
        .json(&json!({ "image": png(), "seed": 3 }))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 429);
    assert!(refused.headers().contains_key("retry-after"));
    let refused: Value = refused.json().await.unwrap();
    assert_eq!(refused["status"], "queue_full");

    // Release the first: its result is the mesh, with the right type.
    permits.add_permits(1);
    let result_url = format!("{base}{}", first["result_url"].as_str().unwrap());
    let deadline = Instant::now() + Duration::from_secs(10);
    let response = loop {
        let response = client.get(&result_url).send().await.unwrap();
        if response.status() != 409 {
            break response;
        }
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "model/stl");
    assert_eq!(response.text().await.unwrap(), "solid seed1\nendsolid\n");

    // `?wait=true` answers with the file itself once the job is done.
    permits.add_permits(2);
    let waited = client
        .post(format!("{base}/api/generate-3d?wait=true"))
        .json(&json!({ "image": png(), "seed": 9, "format": "obj" }))
        .send()
        .await
        .unwrap();
    assert_eq!(waited.status(), 200);
    assert_eq!(waited.headers()["content-type"], "model/obj");
    assert!(
        waited.headers()["content-disposition"]
            .to_str()
            .unwrap()
            .ends_with(".obj\"")
    );
    assert_eq!(waited.text().await.unwrap(), "solid seed9\nendsolid\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_that_panics_fails_and_the_next_job_runs() {
    let (base, permits) = serve(JobLimits::default()).await;
    let client = reqwest::Client::new();
    let crashed = submit(&client, &base, 666).await;
    let url = format!("{base}{}", crashed["status_url"].as_str().unwrap());
    let failed = wait_for(&client, &url, "failed").await;
    assert!(
        failed["error"]
            .as_str()
            .unwrap()
            .contains("crashed: boom in the pipeline"),
        "{failed}"
    );
    assert_eq!(failed["cause"], "server", "{failed}");
    healthy(&client, &base).await;
    // The runner goes on: the next job is done, and a later one is not refused as "full".
    permits.add_permits(2);
    a_job_is_done(&client, &base, 5).await;
    let after = submit(&client, &base, 6).await;
    assert_eq!(after["status"], "queued", "{after}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_are_cancelled_queued_or_running() {
    let (base, permits) = serve(JobLimits::default()).await;
    let client = reqwest::Client::new();
    let long = submit(&client, &base, 777).await;
    let long_url = format!("{base}{}", long["status_url"].as_str().unwrap());
    wait_for(&client, &long_url, "running").await;
    let waiting = submit(&client, &base, 8).await;
    let waiting_url = format!("{base}{}", waiting["status_url"].as_str().unwrap());
    // The queued one is dropped at once.
    let cancelled = client.delete(&waiting_url).send().await.unwrap();
    assert_eq!(cancelled.status(), 200);
    let (_, status) = get_json(&client, &waiting_url).await;
    assert_eq!(status["status"], "cancelled", "{status}");
    // The running one stops at its next step.
    let cancelling = client.delete(&long_url).send().await.unwrap();
    assert_eq!(cancelling.status(), 202);
    let stopped = wait_for(&client, &long_url, "cancelled").await;
    assert!(
        stopped["reason"].as_str().unwrap().contains("client"),
        "{stopped}"
    );
    // Finished jobs cannot be cancelled; unknown ones are unknown.
    assert_eq!(client.delete(&long_url).send().await.unwrap().status(), 409);
    let unknown = format!("{base}/api/jobs/{}", "0".repeat(32));
    assert_eq!(client.delete(&unknown).send().await.unwrap().status(), 404);
    healthy(&client, &base).await;
    permits.add_permits(1);
    a_job_is_done(&client, &base, 9).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_past_its_deadline_is_stopped_and_failed() {
    let (base, permits) = serve(JobLimits {
        timeout: Some(Duration::from_millis(300)),
        ..JobLimits::default()
    })
    .await;
    let client = reqwest::Client::new();
    let long = submit(&client, &base, 777).await;
    let url = format!("{base}{}", long["status_url"].as_str().unwrap());
    let failed = wait_for(&client, &url, "failed").await;
    assert!(
        failed["error"].as_str().unwrap().contains("timed out"),
        "{failed}"
    );
    healthy(&client, &base).await;
    permits.add_permits(1);
    a_job_is_done(&client, &base, 10).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finished_jobs_are_evicted_by_count_and_age_then_gone() {
    let (base, permits) = serve(JobLimits {
        retain: 2,
        retain_for: Duration::from_millis(800),
        ..JobLimits::default()
    })
    .await;
    let client = reqwest::Client::new();
    permits.add_permits(3);
    let mut urls = Vec::new();
    for seed in 1..=3 {
        let job = submit(&client, &base, seed).await;
        let url = format!("{base}{}", job["status_url"].as_str().unwrap());
        wait_for(&client, &url, "done").await;
        urls.push(url);
    }
    // Three finished, two kept: the oldest is gone (410), its result too.
    let (code, body) = get_json(&client, &urls[0]).await;
    assert_eq!(code, 410, "{body}");
    assert_eq!(body["status"], "gone");
    let (code, _) = get_json(&client, &format!("{}/result", urls[0])).await;
    assert_eq!(code, 410);
    assert_eq!(get_json(&client, &urls[2]).await.0, 200);
    // After the age limit, all are gone; an id never issued stays 404.
    tokio::time::sleep(Duration::from_millis(900)).await;
    assert_eq!(get_json(&client, &urls[2]).await.0, 410);
    let never = format!("{base}/api/jobs/{}", "f".repeat(32));
    assert_eq!(get_json(&client, &never).await.0, 404);
    healthy(&client, &base).await;
    permits.add_permits(1);
    a_job_is_done(&client, &base, 4).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_failed_by_its_input_is_the_clients_error_and_a_crash_is_ours() {
    let (base, _permits) = serve(JobLimits::default()).await;
    let client = reqwest::Client::new();
    // Polled: the status says whose doing it was.
    let rejected = submit(&client, &base, 555).await;
    let url = format!("{base}{}", rejected["status_url"].as_str().unwrap());
    let failed = wait_for(&client, &url, "failed").await;
    assert_eq!(failed["cause"], "input", "{failed}");
    assert_eq!(
        failed["error"], "nothing to mesh in this picture",
        "{failed}"
    );
    // Waited for: 422 with the reason (the same request would fail again), not a 500.
    let waited = |seed: u64| {
        client
            .post(format!("{base}/api/generate-3d?wait=true"))
            .json(&json!({ "image": png(), "seed": seed }))
            .send()
    };
    let response = waited(555).await.unwrap();
    assert_eq!(response.status(), 422);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["status"], "unprocessable", "{body}");
    assert_eq!(body["error"], "nothing to mesh in this picture", "{body}");
    let response = waited(666).await.unwrap();
    assert_eq!(response.status(), 500);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["status"], "failed", "{body}");
    healthy(&client, &base).await;
}

/// The in-process queue's figures: health's `queue` and `/metrics` (Prometheus text) count what
/// ran, failed, was cancelled and waits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_metrics_count_this_machine_s_jobs() {
    let (base, permits) = serve(JobLimits::default()).await;
    let client = reqwest::Client::new();
    let metrics = |client: reqwest::Client, base: String| async move {
        client
            .get(format!("{base}/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    };
    let sample = |text: &str, name: &str| -> f64 {
        text.lines()
            .find_map(|line| line.strip_prefix(name)?.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {name} in\n{text}"))
    };
    // One done, one failed on its input, one running (held), one queued then cancelled.
    permits.add_permits(1);
    a_job_is_done(&client, &base, 1).await;
    let failed = submit(&client, &base, 555).await;
    wait_for(
        &client,
        &format!("{base}{}", failed["status_url"].as_str().unwrap()),
        "failed",
    )
    .await;
    let held = submit(&client, &base, 2).await;
    let held_url = format!("{base}{}", held["status_url"].as_str().unwrap());
    wait_for(&client, &held_url, "running").await;
    let queued = submit(&client, &base, 3).await;
    let (_, health) = get_json(&client, &format!("{base}/api/health")).await;
    assert_eq!(health["queue"]["kind"], "in-process", "{health}");
    assert_eq!(health["queue"]["queued"], 1, "{health}");
    assert_eq!(health["queue"]["running"], 1, "{health}");
    let text = metrics(client.clone(), base.clone()).await;
    assert!(
        text.contains("# TYPE orfeas_job_duration_seconds histogram"),
        "{text}"
    );
    assert_eq!(sample(&text, "orfeas_queue_depth"), 1.0);
    assert_eq!(sample(&text, "orfeas_jobs_running"), 1.0);
    assert_eq!(
        sample(&text, "orfeas_jobs_finished_total{outcome=\"done\"}"),
        1.0
    );
    assert_eq!(
        sample(&text, "orfeas_jobs_finished_total{outcome=\"failed\"}"),
        1.0
    );
    assert_eq!(sample(&text, "orfeas_job_duration_seconds_count"), 2.0);
    assert!(
        !text.contains("orfeas_fleet_workers"),
        "one machine has no fleet"
    );
    client
        .delete(format!("{base}{}", queued["status_url"].as_str().unwrap()))
        .send()
        .await
        .unwrap();
    permits.add_permits(1);
    wait_for(&client, &held_url, "done").await;
    let text = metrics(client.clone(), base.clone()).await;
    assert_eq!(
        sample(&text, "orfeas_jobs_finished_total{outcome=\"cancelled\"}"),
        1.0
    );
    assert_eq!(
        sample(&text, "orfeas_jobs_finished_total{outcome=\"done\"}"),
        2.0
    );
    assert_eq!(sample(&text, "orfeas_queue_depth"), 0.0);
    assert_eq!(sample(&text, "orfeas_jobs_running"), 0.0);
}
