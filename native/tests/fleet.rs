//! A fleet of `orfeas serve` instances sharing one job queue in a real `nats-server`
//! (JetStream, a store in a temporary folder, a free loopback port), each instance a real
//! process on the fixture model and the CPU backend: jobs spread over workers and done once,
//! a worker killed mid-job, a job that kills every worker, cancellation through any instance,
//! results through any instance and their expiry, NATS restarting, the hostile-input limits,
//! health and metrics.

mod common;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::{Value, json};

/// A `nats-server` with JetStream on a free port, its store in a temporary folder; stopped
/// and started again on the same port and store to see what survives.
struct Nats {
    child: Option<Child>,
    port: u16,
    store: tempfile::TempDir,
}

impl Nats {
    fn start() -> Nats {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut nats = Nats {
            child: None,
            port,
            store: tempfile::tempdir().unwrap(),
        };
        nats.start_again();
        nats
    }

    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    fn start_again(&mut self) {
        let binary = ["/usr/sbin/nats-server", "/usr/bin/nats-server"]
            .into_iter()
            .map(PathBuf::from)
            .find(|p| p.exists())
            .or_else(|| which("nats-server"))
            .expect(
                "nats-server is not installed: scripts/setup.sh installs it (Debian package \
                 nats-server)",
            );
        let child = Command::new(binary)
            .args([
                "-js",
                "-a",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-sd",
            ])
            .arg(self.store.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting nats-server");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "nats-server did not listen");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
            let _ = child.wait();
        }
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(name))
            .find(|p| p.exists())
    })
}

/// The fixture model, converted once per test into its own folder.
struct Fleet {
    nats: Nats,
    models: tempfile::TempDir,
    nothing: tempfile::TempDir,
    hold: PathBuf,
    _hold_dir: tempfile::TempDir,
}

impl Fleet {
    fn new() -> Fleet {
        let models = tempfile::tempdir().unwrap();
        converted_fixture_model(&models.path().join("hunyuan"));
        let hold_dir = tempfile::tempdir().unwrap();
        Fleet {
            nats: Nats::start(),
            models,
            nothing: tempfile::tempdir().unwrap(),
            hold: hold_dir.path().join("hold"),
            _hold_dir: hold_dir,
        }
    }

    fn args<'a>(&'a self, name: &'a str, extra: &[&'a str]) -> Vec<String> {
        let mut args: Vec<String> = ["--queue", &self.nats.url(), "--instance-name", name]
            .iter()
            .map(|s| s.to_string())
            .collect();
        args.extend(extra.iter().map(|s| s.to_string()));
        args
    }

    /// A worker on the fixture model; its jobs wait while the hold file exists.
    fn worker(&self, name: &str, extra: &[&str]) -> Server {
        let hold = self.hold.to_str().unwrap();
        let mut args = self.args(name, extra);
        args.extend(["--hold-jobs-while".to_string(), hold.to_string()]);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        Server::start(self.models.path(), &args)
    }

    /// A front end: no models, no jobs run.
    fn front_end(&self, extra: &[&str]) -> Server {
        let mut args = self.args("front", extra);
        args.push("--no-worker".into());
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        Server::start(self.nothing.path(), &args)
    }

    fn hold_jobs(&self) {
        std::fs::write(&self.hold, b"").unwrap();
    }

    fn release_jobs(&self) {
        let _ = std::fs::remove_file(&self.hold);
    }
}

/// A small job on the fixture model (its default seed finds a surface).
fn job_request() -> Value {
    json!({
        "image": b64(&png(32, 32)), "steps": 2, "octree_resolution": 16,
        "remove_background": false,
    })
}

async fn submit(client: &reqwest::Client, server: &Server, request: &Value) -> (u16, Value) {
    let response = client
        .post(server.url("/api/generate-3d"))
        .json(request)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

async fn accepted(client: &reqwest::Client, server: &Server) -> String {
    let (status, body) = submit(client, server, &job_request()).await;
    assert_eq!(status, 202, "{body}");
    body["job_id"].as_str().unwrap().to_string()
}

async fn job(client: &reqwest::Client, server: &Server, id: &str) -> Value {
    get_json(client, server, &format!("/api/jobs/{id}")).await
}

/// Poll job `id` through `server` until `done(status)` says so (within `within`).
async fn job_until(
    client: &reqwest::Client,
    server: &Server,
    id: &str,
    within: Duration,
    done: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + within;
    loop {
        let status = job(client, server, id).await;
        if done(&status) {
            return status;
        }
        assert!(
            Instant::now() < deadline,
            "job {id} never got there: {status}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn finished(status: &Value) -> bool {
    !matches!(status["status"].as_str(), Some("queued" | "running"))
}

/// Health of `server` once `check` holds for its `queue` part.
async fn queue_until(
    client: &reqwest::Client,
    server: &Server,
    within: Duration,
    check: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + within;
    loop {
        let queue = health(client, server).await["queue"].clone();
        if check(&queue) {
            return queue;
        }
        assert!(
            Instant::now() < deadline,
            "the queue never got there: {queue}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn ready_workers(queue: &Value) -> Vec<String> {
    queue["workers"]
        .as_array()
        .map(|workers| {
            workers
                .iter()
                .filter(|w| w["ready"] == true)
                .map(|w| w["name"].as_str().unwrap_or_default().to_string())
                .collect()
        })
        .unwrap_or_default()
}

fn kill(server: &mut Server) {
    server.child.kill().unwrap(); // SIGKILL: no goodbye, no ack
    server.child.wait().unwrap();
}

async fn metric(client: &reqwest::Client, server: &Server, line_start: &str) -> f64 {
    let text = get_text(client, server, "/metrics").await;
    text.lines()
        .find_map(|line| line.strip_prefix(line_start)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {line_start} in\n{text}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_jobs_through_a_front_end_spread_over_two_workers_each_done_once() {
    let fleet = Fleet::new();
    fleet.hold_jobs();
    let _w1 = fleet.worker("w1", &[]);
    let _w2 = fleet.worker("w2", &[]);
    let front = fleet.front_end(&["--queue-size", "16", "--jobs-per-client", "16"]);
    let client = client();
    let queue = queue_until(&client, &front, Duration::from_secs(60), |q| {
        ready_workers(q).len() == 2
    })
    .await;
    assert_eq!(queue["kind"], "nats", "{queue}");
    assert_eq!(queue["connected"], true, "{queue}");
    let worker = &queue["workers"][0];
    assert_eq!(
        worker["models"]["models_status"], "ready",
        "health shows each worker's models: {queue}"
    );
    assert!(worker["models"]["shape_models"][0].is_object(), "{queue}");
    // The front end loaded nothing.
    let front_health = health(&client, &front).await;
    assert_eq!(front_health["queue"]["worker"], false);

    let mut ids = Vec::new();
    for _ in 0..10 {
        ids.push(accepted(&client, &front).await);
    }
    // Held: each worker has taken one job (one at a time, only when idle), eight wait.
    let queue = queue_until(&client, &front, Duration::from_secs(30), |q| {
        q["running"] == 2 && q["queued"] == 8
    })
    .await;
    let mut runners = Vec::new();
    for id in &ids {
        let status = job(&client, &front, id).await;
        if status["status"] == "running" {
            runners.push(status["worker"].as_str().unwrap().to_string());
        }
    }
    runners.sort();
    assert_eq!(runners, ["w1", "w2"], "one job on each worker: {queue}");
    assert_eq!(queue["stream"]["messages"], 10, "{queue}");
    fleet.release_jobs();

    let mut made_by = std::collections::BTreeMap::<String, usize>::new();
    for id in &ids {
        let status = job_until(&client, &front, id, Duration::from_secs(120), finished).await;
        assert_eq!(status["status"], "done", "{status}");
        assert_eq!(status["attempt"], 1, "run once: {status}");
        *made_by
            .entry(status["worker"].as_str().unwrap().to_string())
            .or_default() += 1;
        // Downloaded through the front end, which made none of them.
        let result = client
            .get(front.url(&format!("/api/jobs/{id}/result")))
            .send()
            .await
            .unwrap();
        assert_eq!(result.status(), 200);
        let bytes = result.bytes().await.unwrap();
        assert_eq!(&bytes[..4], b"glTF", "a GLB from the worker");
    }
    assert_eq!(made_by.len(), 2, "both workers worked: {made_by:?}");
    assert_eq!(made_by.values().sum::<usize>(), 10);
    // The stream is empty: every job was acknowledged once.
    let queue = queue_until(&client, &front, Duration::from_secs(10), |q| {
        q["stream"]["messages"] == 0 && q["queued"] == 0 && q["running"] == 0
    })
    .await;
    assert_eq!(queue["stream"]["redelivered"], 0, "{queue}");
    // The fleet's metrics, on the front end and on a worker alike.
    for server in [&front, &_w1] {
        assert_eq!(
            metric(
                &client,
                server,
                "orfeas_jobs_finished_total{outcome=\"done\"}"
            )
            .await,
            10.0
        );
        assert_eq!(
            metric(&client, server, "orfeas_job_redeliveries_total").await,
            0.0
        );
        assert_eq!(metric(&client, server, "orfeas_fleet_workers").await, 2.0);
        assert_eq!(metric(&client, server, "orfeas_queue_up").await, 1.0);
        assert_eq!(
            metric(&client, server, "orfeas_job_duration_seconds_count").await,
            10.0
        );
    }
    // A job waits (`?wait=true`) through the front end for a worker's result.
    let response = client
        .post(front.url("/api/generate-3d?wait=true"))
        .json(&job_request())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(&response.bytes().await.unwrap()[..4], b"glTF");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_worker_s_job_runs_elsewhere_and_one_that_kills_every_worker_is_failed() {
    let fleet = Fleet::new();
    let fast = ["--ack-wait-s", "2", "--max-attempts", "2"];
    fleet.hold_jobs();
    let mut workers = [fleet.worker("w1", &fast), fleet.worker("w2", &fast)];
    let front = fleet.front_end(&fast);
    let client = client();
    queue_until(&client, &front, Duration::from_secs(60), |q| {
        ready_workers(q).len() == 2
    })
    .await;

    // A worker killed mid-job: another runs the job after the ack wait.
    let id = accepted(&client, &front).await;
    let running = job_until(&client, &front, &id, Duration::from_secs(30), |s| {
        s["status"] == "running"
    })
    .await;
    let first = running["worker"].as_str().unwrap().to_string();
    let killed = if first == "w1" { 0 } else { 1 };
    kill(&mut workers[killed]);
    let killed_at = Instant::now();
    fleet.release_jobs();
    let done = job_until(&client, &front, &id, Duration::from_secs(60), finished).await;
    assert_eq!(done["status"], "done", "{done}");
    assert_ne!(done["worker"], first, "run by the other worker: {done}");
    assert_eq!(done["attempt"], 2, "{done}");
    assert!(
        killed_at.elapsed() >= Duration::from_millis(1500),
        "not before the ack wait"
    );
    assert_eq!(
        metric(&client, &front, "orfeas_job_redeliveries_total").await,
        1.0
    );

    // A job that kills each worker running it: failed after two runs, with a reason.
    fleet.hold_jobs();
    let survivor = 1 - killed;
    let id = accepted(&client, &front).await;
    let first = job_until(&client, &front, &id, Duration::from_secs(30), |s| {
        s["status"] == "running"
    })
    .await;
    assert_eq!(first["attempt"], 1, "{first}");
    kill(&mut workers[survivor]);
    // The next worker up takes it over (attempt 2) and dies too.
    let mut w3 = fleet.worker("w3", &fast);
    let second = job_until(&client, &front, &id, Duration::from_secs(60), |s| {
        s["status"] == "running" && s["attempt"] == 2
    })
    .await;
    assert_eq!(second["worker"], "w3", "{second}");
    kill(&mut w3);
    let _w4 = fleet.worker("w4", &fast);
    let failed = job_until(&client, &front, &id, Duration::from_secs(60), finished).await;
    assert_eq!(failed["status"], "failed", "{failed}");
    let error = failed["error"].as_str().unwrap();
    assert!(error.contains("given up after 2 attempt(s)"), "{error}");
    assert!(error.contains("w3"), "names the last worker: {error}");
    assert_eq!(failed["cause"], "server");
    // Out of the stream: nothing left to deliver.
    let queue = queue_until(&client, &front, Duration::from_secs(10), |q| {
        q["stream"]["messages"] == 0
    })
    .await;
    assert_eq!(queue["queued"], 0, "{queue}");
    fleet.release_jobs();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_through_any_instance_cancels_a_queued_or_a_running_job() {
    let fleet = Fleet::new();
    fleet.hold_jobs();
    let worker = fleet.worker("w1", &[]);
    let front = fleet.front_end(&[]);
    let client = client();
    queue_until(&client, &front, Duration::from_secs(60), |q| {
        ready_workers(q).len() == 1
    })
    .await;
    let running = accepted(&client, &front).await;
    job_until(&client, &front, &running, Duration::from_secs(30), |s| {
        s["status"] == "running"
    })
    .await;
    let queued = accepted(&client, &front).await;
    assert_eq!(job(&client, &front, &queued).await["status"], "queued");
    queue_until(&client, &front, Duration::from_secs(10), |q| {
        q["stream"]["messages"] == 2
    })
    .await;

    // The queued job, through the worker (not the instance that took it): out of the stream.
    let response = client
        .delete(worker.url(&format!("/api/jobs/{queued}")))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let status = job(&client, &front, &queued).await;
    assert_eq!(status["status"], "cancelled", "{status}");
    let queue = queue_until(&client, &front, Duration::from_secs(10), |q| {
        q["stream"]["messages"] == 1
    })
    .await;
    assert_eq!(queue["queued"], 0, "{queue}");

    // The running one, through the front end: stopped on the worker.
    let response = client
        .delete(front.url(&format!("/api/jobs/{running}")))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    let status = job_until(
        &client,
        &worker,
        &running,
        Duration::from_secs(30),
        finished,
    )
    .await;
    assert_eq!(status["status"], "cancelled", "{status}");
    assert_eq!(status["reason"], "cancelled by the client");

    // The worker is free again; the cancelled job never ran anywhere.
    fleet.release_jobs();
    let next = accepted(&client, &front).await;
    let status = job_until(&client, &front, &next, Duration::from_secs(60), finished).await;
    assert_eq!(status["status"], "done", "{status}");
    let never = job(&client, &front, &queued).await;
    assert!(never.get("worker").is_none(), "never delivered: {never}");
    queue_until(&client, &front, Duration::from_secs(10), |q| {
        q["stream"]["messages"] == 0
    })
    .await;
    // A finished job cannot be cancelled: 409 with its status, through either instance.
    let response = client
        .delete(worker.url(&format!("/api/jobs/{next}")))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 409);

    // A long job in the sampler (100 steps at octree 256 take minutes here): its steps reach
    // the front end, and a DELETE there stops it at its next step on the worker.
    let long = json!({
        "image": b64(&png(32, 32)), "steps": 100, "octree_resolution": 256,
        "remove_background": false,
    });
    let (status, body) = submit(&client, &front, &long).await;
    assert_eq!(status, 202, "{body}");
    let id = body["job_id"].as_str().unwrap().to_string();
    let sampling = job_until(&client, &front, &id, Duration::from_secs(60), |s| {
        s["status"] == "running" && s["step"].as_u64().is_some_and(|step| step >= 1)
    })
    .await;
    assert_eq!(sampling["steps"], 100, "{sampling}");
    let asked = Instant::now();
    let response = client
        .delete(front.url(&format!("/api/jobs/{id}")))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    let stopped = job_until(&client, &front, &id, Duration::from_secs(60), finished).await;
    assert_eq!(stopped["status"], "cancelled", "{stopped}");
    assert!(
        asked.elapsed() < Duration::from_secs(20),
        "stopped at a step, not at the end: {:?}",
        asked.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_stopped_with_sigterm_hands_its_job_back_at_once() {
    let fleet = Fleet::new();
    fleet.hold_jobs();
    let mut w1 = fleet.worker("w1", &[]);
    let front = fleet.front_end(&[]);
    let client = client();
    queue_until(&client, &front, Duration::from_secs(60), |q| {
        ready_workers(q).len() == 1
    })
    .await;
    let id = accepted(&client, &front).await;
    job_until(&client, &front, &id, Duration::from_secs(30), |s| {
        s["status"] == "running" && s["worker"] == "w1"
    })
    .await;
    let (took, stderr) = w1.terminate(Duration::from_secs(15));
    assert!(
        stderr.contains("1 job(s) stopped and handed back"),
        "{stderr}"
    );
    let status = job(&client, &front, &id).await;
    assert_eq!(status["status"], "queued", "back in the queue: {status}");
    // Another worker takes it at once: not after the ack wait (30 s here).
    fleet.release_jobs();
    let started = Instant::now();
    let _w2 = fleet.worker("w2", &[]);
    let done = job_until(&client, &front, &id, Duration::from_secs(60), finished).await;
    assert_eq!(done["status"], "done", "{done}");
    assert_eq!(done["worker"], "w2", "{done}");
    assert!(
        started.elapsed() < Duration::from_secs(25),
        "taken over without waiting for the ack wait: {:?} (w1 took {took:?} to stop)",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn results_are_served_by_any_instance_and_expire_as_on_one_machine() {
    let fleet = Fleet::new();
    let keep = ["--keep-results-s", "3"];
    let worker = fleet.worker("w1", &keep);
    let front = fleet.front_end(&keep);
    let client = client();
    queue_until(&client, &front, Duration::from_secs(60), |q| {
        ready_workers(q).len() == 1
    })
    .await;
    let id = accepted(&client, &front).await;
    let status = job_until(&client, &front, &id, Duration::from_secs(60), finished).await;
    assert_eq!(status["status"], "done", "{status}");
    let finished_at = Instant::now();
    let mut files = Vec::new();
    for server in [&front, &worker] {
        let response = client
            .get(server.url(&format!("/api/jobs/{id}/result")))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        files.push(response.bytes().await.unwrap());
    }
    assert_eq!(files[0], files[1], "the same file from both");
    // Views travel with the job: a back view, stored beside the picture and read back by the
    // worker, whose single-image model fails the job naming it.
    let mut with_view = job_request();
    with_view["back"] = json!(b64(&png(24, 24)));
    let (code, body) = submit(&client, &front, &with_view).await;
    assert_eq!(code, 202, "{body}");
    let viewed = body["job_id"].as_str().unwrap().to_string();
    let status = job_until(&client, &front, &viewed, Duration::from_secs(60), finished).await;
    assert_eq!(status["status"], "failed", "{status}");
    let error = status["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("back view needs a multi-view (2mv) model"),
        "{status}"
    );
    tokio::time::sleep(Duration::from_secs(4).saturating_sub(finished_at.elapsed())).await;
    for server in [&front, &worker] {
        for path in [format!("/api/jobs/{id}/result"), format!("/api/jobs/{id}")] {
            let response = client.get(server.url(&path)).send().await.unwrap();
            assert_eq!(response.status(), 410, "{path}");
        }
    }
    let unknown = client
        .get(front.url("/api/jobs/0123456789abcdef0123456789abcdef"))
        .send()
        .await
        .unwrap();
    assert_eq!(unknown.status(), 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_restarting_loses_no_queued_job_and_submits_wait_for_it_meanwhile() {
    let mut fleet = Fleet::new();
    fleet.hold_jobs();
    let _worker = fleet.worker("w1", &[]);
    let front = fleet.front_end(&[]);
    let client = client();
    queue_until(&client, &front, Duration::from_secs(60), |q| {
        ready_workers(q).len() == 1
    })
    .await;
    let mut ids = Vec::new();
    for _ in 0..3 {
        ids.push(accepted(&client, &front).await);
    }
    queue_until(&client, &front, Duration::from_secs(30), |q| {
        q["running"] == 1 && q["queued"] == 2
    })
    .await;

    fleet.nats.stop();
    // Unreachable: 503 with Retry-After, and health says why.
    let queue = queue_until(&client, &front, Duration::from_secs(10), |q| {
        q["connected"] == false
    })
    .await;
    let problem = queue["problem"].as_str().unwrap_or_default();
    assert!(problem.contains("cannot be reached"), "{queue}");
    assert!(problem.contains(&fleet.nats.url()), "{queue}");
    let response = client
        .post(front.url("/api/generate-3d"))
        .json(&job_request())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 503);
    assert!(response.headers().contains_key("retry-after"));
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["status"], "queue_unreachable", "{body}");
    assert_eq!(metric(&client, &front, "orfeas_queue_up").await, 0.0);

    fleet.nats.start_again();
    queue_until(&client, &front, Duration::from_secs(30), |q| {
        q["connected"] == true && q.get("problem").is_none()
    })
    .await;
    fleet.release_jobs();
    for id in &ids {
        let status = job_until(&client, &front, id, Duration::from_secs(120), finished).await;
        assert_eq!(status["status"], "done", "{id}: {status}");
    }
    let after = accepted(&client, &front).await;
    let status = job_until(&client, &front, &after, Duration::from_secs(60), finished).await;
    assert_eq!(status["status"], "done", "{status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_hostile_input_limits_apply_before_anything_is_published() {
    let fleet = Fleet::new();
    fleet.hold_jobs();
    let _worker = fleet.worker("w1", &[]);
    let front = fleet.front_end(&["--max-upload-mb", "1", "--jobs-per-client", "1"]);
    let client = client();
    queue_until(&client, &front, Duration::from_secs(60), |q| {
        ready_workers(q).len() == 1
    })
    .await;
    let held = accepted(&client, &front).await;
    // Over its share (one job queued or running): 429, whichever instance took the first.
    let (status, body) = submit(&client, &front, &job_request()).await;
    assert_eq!(status, 429, "{body}");
    assert_eq!(body["status"], "client_share", "{body}");
    // From another client: too large, a picture over the side limit, a broken picture, a bad
    // parameter.
    let client_b = reqwest::Client::builder()
        .local_address(std::net::IpAddr::from([127, 0, 0, 2]))
        .build()
        .unwrap();
    let big = json!({ "image": "A".repeat(2 << 20) });
    let (status, _) = submit(&client_b, &front, &big).await;
    assert_eq!(status, 413);
    let wide = json!({ "image": b64(&png(20_000, 1)) });
    let (status, body) = submit(&client_b, &front, &wide).await;
    assert_eq!(status, 400, "{body}");
    let (status, body) = submit(
        &client_b,
        &front,
        &json!({ "image": b64(b"not a picture") }),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    let (status, body) = submit(
        &client_b,
        &front,
        &json!({ "image": b64(&png(8, 8)), "steps": 0 }),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    // Nothing but the one accepted job reached NATS.
    let queue = health(&client, &front).await["queue"].clone();
    assert_eq!(queue["stream"]["messages"], 1, "{queue}");
    fleet.release_jobs();
    let status = job_until(&client, &front, &held, Duration::from_secs(60), finished).await;
    assert_eq!(status["status"], "done", "{status}");
}
