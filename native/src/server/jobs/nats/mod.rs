//! The fleet's queue: jobs shared by several `orfeas serve` instances through NATS JetStream
//! (`--queue nats://…`).
//!
//! - The queue is a work-queue stream (`<name>-jobs`, subject `<name>.jobs`): one message per
//!   job, its de-duplication id the job id, taken by one durable pull consumer that every
//!   worker shares, so each message goes to one worker at a time. A worker that stops sending
//!   progress acks (killed, frozen, cut off) has its job redelivered after the ack wait; the
//!   consumer's `max_deliver` bounds the runs, and the delivery past the last allowed run fails
//!   the job with a reason and removes it.
//! - Job records live in a KV bucket (`<name>-jobs`, one key per job, changed only by
//!   compare-and-set); every instance keeps a copy by watching it, so any instance answers
//!   status, waits and cancellations for any job, and counts the fleet's metrics.
//! - Inputs (the decoded picture) and results (the mesh file) live in object stores; every
//!   bucket expires as `--keep-results-s` says.
//! - Workers announce themselves every few seconds in a short-lived KV bucket, for health.
//!
//! Nothing here is needed to listen: the server starts at once and connects in the
//! background; while NATS cannot be reached, submissions answer 503 with `Retry-After` and
//! health says why; the client reconnects by itself.
//!
//! The parts: `store` (the stream, consumer and buckets, and what goes in them), `records` (the
//! job records: the copy every instance keeps, their changes, the front end's side), `worker`
//! (taking jobs, keeping them alive, handing back their outcome, announcing the worker).

mod records;
mod store;
mod worker;

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};
use tokio::sync::{OnceCell, watch};

use super::metrics::{Snapshot, Tally};
use super::runner::{self, RunnerOptions};
use super::{
    Claim, ClientCounts, ClientShare, JobInput, JobLimits, JobQueue, JobStatus, Lookup, MeshFile,
    Outcome, Pipeline, Reservation, StopReason, SubmitError, lock,
};
use records::Record;
use store::Handles;
use worker::Running;

/// How long a worker's announcement lasts: one not renewed within this is gone from health.
const WORKER_TTL: Duration = Duration::from_secs(10);
/// How often a worker renews its announcement.
const ANNOUNCE_EVERY: Duration = Duration::from_secs(2);
/// How long one fetch of the next job waits on the server before asking again.
const FETCH_WAIT: Duration = Duration::from_secs(2);
/// How many times a record's compare-and-set is tried against concurrent writers.
const CAS_TRIES: usize = 8;

/// How to reach NATS and how this instance takes part.
#[derive(Debug, Clone)]
pub struct FleetOptions {
    /// `nats://host:port` (several, comma-separated, for a NATS cluster).
    pub url: String,
    /// The prefix of the stream and buckets: fleets sharing one NATS keep apart by name.
    pub name: String,
    /// This instance, as health lists it.
    pub instance: String,
    /// Take jobs (an instance with a GPU and models); `false`: a front end only.
    pub worker: bool,
    /// A worker silent this long (no progress ack) loses its job to another.
    pub ack_wait: Duration,
    /// Runs of one job before it is failed (each ended by its worker stopping mid-job).
    pub max_attempts: u32,
    pub credentials: Credentials,
}

/// What `async-nats` accepts to authenticate and encrypt.
#[derive(Debug, Clone, Default)]
pub struct Credentials {
    /// A `.creds` file (JWT and NKey seed).
    pub creds_file: Option<PathBuf>,
    pub user: Option<String>,
    pub password: Option<String>,
    pub token: Option<String>,
    /// PEM roots to trust for the server's certificate.
    pub tls_ca: Option<PathBuf>,
    /// A client certificate and key (PEM), for servers that verify clients.
    pub tls_client: Option<(PathBuf, PathBuf)>,
    pub require_tls: bool,
}

/// The last problem with NATS, for health.
#[derive(Default)]
struct Problem {
    message: Option<String>,
    since: Option<Instant>,
}

pub struct FleetQueue {
    options: FleetOptions,
    limits: JobLimits,
    client: async_nats::Client,
    handles: OnceCell<Handles>,
    problem: Mutex<Problem>,
    /// Every job record, as the watch delivered it (or this instance wrote it), with its
    /// revision.
    mirror: Mutex<HashMap<String, (u64, Record)>>,
    /// Bumped on every change of the mirror (for waits).
    changed: watch::Sender<u64>,
    clients: ClientCounts,
    running: Mutex<HashMap<String, Running>>,
    tally: Tally,
    closing: watch::Sender<bool>,
    pipeline: Option<Arc<dyn Pipeline>>,
    /// The last listing of the workers, and when.
    workers_seen: Mutex<Option<(Instant, Vec<Value>)>>,
    me: Weak<FleetQueue>,
}

pub(super) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

pub(super) fn age(since_ms: Option<u64>) -> Duration {
    Duration::from_millis(now_ms().saturating_sub(since_ms.unwrap_or(0)))
}

impl FleetQueue {
    /// Connect (in the background: this returns at once) and, for a worker, start its runner
    /// on `pipeline`.
    pub async fn start(
        options: FleetOptions,
        limits: JobLimits,
        pipeline: Arc<dyn Pipeline>,
        runner: RunnerOptions,
    ) -> anyhow::Result<Arc<Self>> {
        let queue_for_events: Arc<OnceCell<Weak<FleetQueue>>> = Arc::default();
        let events = queue_for_events.clone();
        let c = &options.credentials;
        let mut connect = async_nats::ConnectOptions::new()
            .name(format!("orfeas {}", options.instance))
            .retry_on_initial_connect()
            .max_reconnects(None)
            .connection_timeout(Duration::from_secs(2))
            .reconnect_delay_callback(|attempts| {
                Duration::from_millis((100 * attempts as u64).clamp(100, 1000))
            })
            .event_callback(move |event| {
                let events = events.clone();
                async move {
                    if let Some(queue) = events.get().and_then(Weak::upgrade) {
                        queue.on_event(event);
                    }
                }
            });
        if let Some(path) = &c.creds_file {
            connect = connect
                .credentials_file(path)
                .await
                .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        }
        if let (Some(user), Some(password)) = (&c.user, &c.password) {
            connect = connect.user_and_password(user.clone(), password.clone());
        }
        if let Some(token) = &c.token {
            connect = connect.token(token.clone());
        }
        if let Some(ca) = &c.tls_ca {
            connect = connect.add_root_certificates(ca.clone());
        }
        if let Some((cert, key)) = &c.tls_client {
            connect = connect.add_client_certificate(cert.clone(), key.clone());
        }
        if c.require_tls {
            connect = connect.require_tls(true);
        }
        let client = connect
            .connect(options.url.as_str())
            .await
            .map_err(|e| anyhow::anyhow!("--queue {}: {e}", options.url))?;
        let worker = options.worker;
        let queue = Arc::new_cyclic(|me| FleetQueue {
            options,
            limits,
            client,
            handles: OnceCell::new(),
            problem: Mutex::new(Problem {
                message: Some("connecting".into()),
                since: Some(Instant::now()),
            }),
            mirror: Mutex::default(),
            changed: watch::channel(0).0,
            clients: Arc::default(),
            running: Mutex::default(),
            tally: Tally::default(),
            closing: watch::channel(false).0,
            pipeline: worker.then(|| pipeline.clone()),
            workers_seen: Mutex::default(),
            me: me.clone(),
        });
        let _ = queue_for_events.set(Arc::downgrade(&queue));
        tokio::spawn(Self::set_up(queue.clone(), runner));
        Ok(queue)
    }

    fn on_event(&self, event: async_nats::Event) {
        use async_nats::Event;
        match event {
            Event::Connected => self.clear_problem(),
            Event::Disconnected => {
                self.note_problem("the connection to NATS was lost; reconnecting".into())
            }
            Event::ServerError(error) => self.note_problem(format!("NATS: {error}")),
            Event::ClientError(error) => self.note_problem(format!("NATS client: {error}")),
            _ => {}
        }
    }

    /// Remember what is wrong with NATS now, and since when it has been wrong.
    fn note_problem(&self, message: String) {
        let mut problem = lock(&self.problem);
        problem.since.get_or_insert_with(Instant::now);
        problem.message = Some(message);
    }

    fn clear_problem(&self) {
        *lock(&self.problem) = Problem::default();
    }

    fn connected(&self) -> bool {
        self.client.connection_state() == async_nats::connection::State::Connected
    }

    /// Why the queue cannot be used now, or `None`.
    fn unreachable(&self) -> Option<String> {
        let problem = lock(&self.problem);
        let since = problem
            .since
            .map(|s| format!(" (for {} s)", s.elapsed().as_secs()))
            .unwrap_or_default();
        if !self.connected() {
            let what = problem.message.as_deref().unwrap_or("not connected");
            return Some(format!(
                "the job queue at {} cannot be reached: {what}{since}",
                self.options.url
            ));
        }
        if self.handles.get().is_none() {
            let what = problem.message.as_deref().unwrap_or("setting up");
            return Some(format!(
                "the job queue at {} is not set up yet: {what}{since}",
                self.options.url
            ));
        }
        None
    }

    /// Create (or find) the stream, consumer and buckets, retrying until NATS answers; then
    /// watch the records and, for a worker, announce it and start its runner.
    async fn set_up(queue: Arc<Self>, runner: RunnerOptions) {
        loop {
            match queue.create().await {
                Ok(handles) => {
                    let _ = queue.handles.set(handles);
                    queue.clear_problem();
                    break;
                }
                Err(error) => {
                    queue.note_problem(format!("setting up JetStream: {error}"));
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        }
        tracing::info!("job queue ready at {}", queue.options.url);
        tokio::spawn(Self::watch_records(queue.clone()));
        if let Some(pipeline) = queue.pipeline.clone() {
            tokio::spawn(Self::announce(queue.clone()));
            let runner = RunnerOptions {
                wait_until_ready: true,
                ..runner
            };
            tokio::spawn(runner::work(queue, pipeline, runner));
        }
    }

    fn handles(&self) -> Result<&Handles, SubmitError> {
        if let Some(reason) = self.unreachable() {
            return Err(SubmitError::Unreachable(reason));
        }
        self.handles
            .get()
            .ok_or_else(|| SubmitError::Unreachable("the job queue is not set up yet".into()))
    }
}

#[async_trait::async_trait]
impl JobQueue for FleetQueue {
    fn reserve(&self, client: IpAddr) -> Result<Reservation, SubmitError> {
        self.handles()?;
        if *self.closing.borrow() {
            return Err(SubmitError::Closed);
        }
        let (queued, _) = self.counts();
        if queued >= self.limits.queue.max(1) {
            return Err(SubmitError::Full);
        }
        // The client's jobs anywhere in the fleet, and its uploads being read here.
        let keep = self.limits.retain_for;
        let elsewhere = lock(&self.mirror)
            .values()
            .filter(|(_, r)| {
                r.client == client && !r.status.finished() && age(Some(r.submitted_ms)) <= keep
            })
            .count();
        let share = ClientShare::take(&self.clients, client, elsewhere, self.limits.per_client)?;
        Ok(Reservation {
            client,
            share,
            permit: None,
        })
    }

    fn needs_local_models(&self) -> bool {
        false
    }

    async fn submit(
        &self,
        reservation: Reservation,
        input: JobInput,
    ) -> Result<String, SubmitError> {
        self.submit_job(reservation, input).await
    }

    async fn status(&self, id: &str) -> Lookup<JobStatus> {
        match self.record(id).await {
            Some(record) => self.status_of(id, &record),
            None => Lookup::Unknown,
        }
    }

    async fn describe(&self, id: &str) -> Lookup<Value> {
        self.describe_job(id).await
    }

    async fn result(&self, id: &str) -> Lookup<Result<MeshFile, JobStatus>> {
        self.result_file(id).await
    }

    async fn wait(&self, id: &str) -> Option<JobStatus> {
        let mut changes = self.changed.subscribe();
        loop {
            match self.status(id).await {
                Lookup::Found(status) if status.finished() => return Some(status),
                Lookup::Found(_) => {}
                _ => return None,
            }
            // The mirror changes with every record written; a slow watch is covered by
            // looking again now and then.
            let _ = tokio::time::timeout(Duration::from_secs(2), changes.changed()).await;
        }
    }

    async fn cancel(&self, id: &str, reason: StopReason) -> Result<Lookup<JobStatus>, SubmitError> {
        self.cancel_job(id, reason).await
    }

    async fn next(&self) -> Option<Claim> {
        self.next_job().await
    }

    fn heartbeat(&self, id: &str, step: u32, steps: u32) {
        self.step(id, step, steps);
    }

    async fn finish(&self, claim: Claim, outcome: Outcome) {
        self.finish_job(claim, outcome).await;
    }

    fn shut_down(&self) -> usize {
        self.closing.send_replace(true);
        let running = lock(&self.running);
        for job in running.values() {
            job.control.stop(StopReason::Shutdown);
        }
        running.len()
    }

    fn running_here(&self) -> bool {
        !lock(&self.running).is_empty()
    }

    async fn overview(&self) -> Value {
        let (queued, running) = self.counts();
        let mut value = json!({
            "kind": "nats",
            "url": self.options.url,
            "name": self.options.name,
            "instance": self.options.instance,
            "worker": self.options.worker,
            "connected": self.connected(),
            "queued": queued,
            "running": running,
            "capacity": self.limits.queue,
            "ack_wait_s": self.options.ack_wait.as_secs_f64(),
            "max_attempts": self.options.max_attempts,
        });
        if let Some(problem) = self.unreachable() {
            value["problem"] = json!(problem);
        }
        if let Some(handles) = self.handles.get().filter(|_| self.connected()) {
            let info = tokio::time::timeout(Duration::from_secs(1), async {
                let stream = handles.stream.get_info().await.ok()?;
                let consumer = handles.consumer.get_info().await.ok()?;
                Some(json!({
                    "messages": stream.state.messages,
                    "undelivered": consumer.num_pending,
                    "unacknowledged": consumer.num_ack_pending,
                    "redelivered": consumer.num_redelivered,
                }))
            })
            .await;
            if let Ok(Some(info)) = info {
                value["stream"] = info;
            }
        }
        value["workers"] = json!(self.workers().await);
        value
    }

    async fn metrics(&self) -> Snapshot {
        let (queued, running) = self.counts();
        Snapshot {
            queued,
            running,
            counters: self.tally.get(),
            workers: Some(self.workers().await.len()),
            queue_up: Some(self.unreachable().is_none()),
        }
    }
}
