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

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_nats::jetstream::{self, AckKind, consumer, kv, object_store, stream};
use bytes::Bytes;
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::io::AsyncReadExt;
use tokio::sync::{OnceCell, watch};

use super::metrics::{Snapshot, Tally};
use super::runner::{self, RunnerOptions};
use super::{
    Cause, Claim, ClientCounts, ClientShare, Format, GenerateParams, JobControl, JobInput,
    JobLimits, JobQueue, JobStatus, Lookup, MeshFile, Outcome, Pipeline, Reservation, StopReason,
    SubmitError, describe_status, lock, new_id,
};

/// How a workers' announcement lasts: one not renewed within this is gone from health.
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

/// A job's record in the KV bucket: what every instance answers from.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Record {
    status: JobStatus,
    client: IpAddr,
    format: Format,
    steps: u32,
    submitted_ms: u64,
    /// The job message's stream sequence (to take a cancelled job out of the queue).
    #[serde(default)]
    seq: Option<u64>,
    #[serde(default)]
    worker: Option<String>,
    #[serde(default)]
    attempt: u32,
    #[serde(default)]
    started_ms: Option<u64>,
    #[serde(default)]
    heartbeat_ms: Option<u64>,
    /// `DELETE` asked while it ran: the worker running it stops at its next step.
    #[serde(default)]
    cancel: bool,
    #[serde(default)]
    finished_ms: Option<u64>,
    #[serde(default)]
    notes: Vec<String>,
}

/// The job message: what a worker needs besides the picture (in the inputs store).
#[derive(Debug, Serialize, Deserialize)]
struct JobMessage {
    id: String,
    params: GenerateParams,
    width: u32,
    height: u32,
}

/// The stream, consumer and buckets, once set up.
struct Handles {
    js: jetstream::Context,
    stream: stream::Stream,
    consumer: consumer::PullConsumer,
    jobs: kv::Store,
    workers: kv::Store,
    inputs: object_store::ObjectStore,
    results: object_store::ObjectStore,
    subject: String,
}

/// A job running on this instance.
struct Running {
    message: Arc<jetstream::Message>,
    control: Arc<JobControl>,
    liveness: tokio::task::JoinHandle<()>,
    started: Instant,
    last_step_write: Option<Instant>,
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

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn age(since_ms: Option<u64>) -> Duration {
    Duration::from_millis(now_ms().saturating_sub(since_ms.unwrap_or(0)))
}

/// The picture as the inputs store keeps it: width and height (u32 LE), then RGBA rows.
fn encode_image(image: &image::RgbaImage) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(8 + image.as_raw().len());
    bytes.extend_from_slice(&image.width().to_le_bytes());
    bytes.extend_from_slice(&image.height().to_le_bytes());
    bytes.extend_from_slice(image.as_raw());
    bytes
}

fn decode_image(bytes: Vec<u8>) -> Result<image::RgbaImage, String> {
    let size = |at: usize| {
        bytes
            .get(at..at + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    };
    let (Some(width), Some(height)) = (size(0), size(4)) else {
        return Err("the stored input is truncated".into());
    };
    image::RgbaImage::from_raw(width, height, bytes[8..].to_vec())
        .ok_or_else(|| format!("the stored input is not a {width}×{height} RGBA picture"))
}

/// The KV bucket `bucket` (one value per key), created if missing. Its stream is made here
/// as the KV convention lays it out, because `async-nats` 0.52's `create_key_value` first
/// reads the account's info, which it cannot parse from nats-server 2.9 (Debian 12's).
async fn key_value(
    js: &jetstream::Context,
    bucket: String,
    max_age: Duration,
    storage: stream::StorageType,
) -> Result<kv::Store, String> {
    js.get_or_create_stream(stream::Config {
        name: format!("KV_{bucket}"),
        subjects: vec![format!("$KV.{bucket}.>")],
        max_messages_per_subject: 1,
        max_age,
        storage,
        allow_rollup: true,
        deny_delete: true,
        allow_direct: true,
        discard: stream::DiscardPolicy::New,
        num_replicas: 1,
        ..Default::default()
    })
    .await
    .map_err(|e| e.to_string())?;
    js.get_key_value(bucket).await.map_err(|e| e.to_string())
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
        let mut problem = lock(&self.problem);
        match event {
            Event::Connected => {
                problem.message = None;
                problem.since = None;
            }
            Event::Disconnected => {
                problem.message = Some("the connection to NATS was lost; reconnecting".into());
                problem.since.get_or_insert_with(Instant::now);
            }
            Event::ServerError(error) => {
                problem.message = Some(format!("NATS: {error}"));
                problem.since.get_or_insert_with(Instant::now);
            }
            Event::ClientError(error) => {
                problem.message = Some(format!("NATS client: {error}"));
                problem.since.get_or_insert_with(Instant::now);
            }
            _ => {}
        }
    }

    fn note_problem(&self, message: String) {
        let mut problem = lock(&self.problem);
        problem.since.get_or_insert_with(Instant::now);
        problem.message = Some(message);
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
                    lock(&queue.problem).message = None;
                    lock(&queue.problem).since = None;
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

    async fn create(&self) -> Result<Handles, String> {
        let js = jetstream::new(self.client.clone());
        let name = &self.options.name;
        let keep = self.limits.retain_for.max(Duration::from_secs(1));
        let subject = format!("{name}.jobs");
        let stream = js
            .get_or_create_stream(stream::Config {
                name: format!("{name}-jobs"),
                subjects: vec![subject.clone()],
                retention: stream::RetentionPolicy::WorkQueue,
                max_age: keep,
                duplicate_window: keep.min(Duration::from_secs(120)),
                storage: stream::StorageType::File,
                ..Default::default()
            })
            .await
            .map_err(|e| format!("the job stream: {e}"))?;
        let consumer = stream
            .get_or_create_consumer(
                "workers",
                consumer::pull::Config {
                    durable_name: Some("workers".into()),
                    ack_policy: consumer::AckPolicy::Explicit,
                    ack_wait: self.options.ack_wait,
                    // One delivery past the last run: the worker that gets it fails the job.
                    max_deliver: i64::from(self.options.max_attempts.max(1)) + 1,
                    ..Default::default()
                },
            )
            .await
            .map_err(|e| format!("the workers' consumer: {e}"))?;
        let jobs = key_value(
            &js,
            format!("{name}-jobs"),
            keep * 2,
            stream::StorageType::File,
        )
        .await
        .map_err(|e| format!("the job records: {e}"))?;
        let workers = key_value(
            &js,
            format!("{name}-workers"),
            WORKER_TTL,
            stream::StorageType::Memory,
        )
        .await
        .map_err(|e| format!("the workers' bucket: {e}"))?;
        let objects = |bucket: String| object_store::Config {
            bucket,
            max_age: keep,
            storage: stream::StorageType::File,
            ..Default::default()
        };
        let mut stores = Vec::new();
        for bucket in [format!("{name}-inputs"), format!("{name}-results")] {
            let store = match js.create_object_store(objects(bucket.clone())).await {
                Ok(store) => store,
                Err(_) => js
                    .get_object_store(&bucket)
                    .await
                    .map_err(|e| format!("the object store {bucket}: {e}"))?,
            };
            stores.push(store);
        }
        let results = stores.pop().expect("two stores");
        let inputs = stores.pop().expect("two stores");
        Ok(Handles {
            js,
            stream,
            consumer,
            jobs,
            workers,
            inputs,
            results,
            subject,
        })
    }

    fn handles(&self) -> Result<&Handles, SubmitError> {
        if let Some(reason) = self.unreachable() {
            return Err(SubmitError::Unreachable(reason));
        }
        self.handles
            .get()
            .ok_or_else(|| SubmitError::Unreachable("the job queue is not set up yet".into()))
    }

    /// Keep the mirror of the job records, from the bucket's history on, until the end.
    async fn watch_records(queue: Arc<Self>) {
        let Some(handles) = queue.handles.get() else {
            return;
        };
        loop {
            match handles.jobs.watch_with_history(">").await {
                Ok(mut entries) => {
                    while let Some(entry) = entries.next().await {
                        match entry {
                            Ok(entry) => queue.apply(entry),
                            Err(error) => {
                                tracing::warn!("watching the job records: {error}");
                                break;
                            }
                        }
                    }
                }
                Err(error) => queue.note_problem(format!("watching the job records: {error}")),
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    fn apply(&self, entry: kv::Entry) {
        if matches!(
            entry.operation,
            kv::Operation::Delete | kv::Operation::Purge
        ) {
            lock(&self.mirror).remove(&entry.key);
            self.changed.send_modify(|n| *n += 1);
            return;
        }
        match serde_json::from_slice::<Record>(&entry.value) {
            Ok(record) => self.remember(&entry.key, entry.revision, record),
            Err(error) => tracing::warn!("job record {}: {error}", entry.key),
        }
    }

    /// Keep `record` (unless the mirror has a later revision); count what it finished; pass a
    /// cancellation to the job if it runs here.
    fn remember(&self, id: &str, revision: u64, record: Record) {
        {
            let mut mirror = lock(&self.mirror);
            let previous = mirror.get(id);
            if previous.is_some_and(|(known, _)| *known >= revision) {
                return;
            }
            if let Some((_, before)) = previous {
                self.tally.update(|c| {
                    if record.attempt > before.attempt && record.attempt > 1 {
                        c.redeliveries += 1;
                    }
                    if record.status.finished() && !before.status.finished() {
                        match record.status {
                            JobStatus::Done => c.done += 1,
                            JobStatus::Failed { .. } => c.failed += 1,
                            _ => c.cancelled += 1,
                        }
                        if let (Some(start), Some(end)) = (record.started_ms, record.finished_ms) {
                            c.finished_run(end.saturating_sub(start) as f64 / 1000.0);
                        }
                    }
                });
            }
            if record.cancel
                && let Some(running) = lock(&self.running).get(id)
            {
                running.control.stop(StopReason::Cancelled);
            }
            mirror.insert(id.to_string(), (revision, record));
        }
        self.changed.send_modify(|n| *n += 1);
    }

    /// Change job `id`'s record by `change` (which returns `false` to leave it), by
    /// compare-and-set against concurrent writers; the record written.
    async fn update(
        &self,
        id: &str,
        mut change: impl FnMut(&mut Record) -> bool,
    ) -> Result<Option<Record>, String> {
        let handles = self.handles.get().ok_or("the job queue is not set up")?;
        for _ in 0..CAS_TRIES {
            let entry = handles
                .jobs
                .entry(id)
                .await
                .map_err(|e| format!("reading job {id}: {e}"))?;
            let Some(entry) = entry.filter(|e| e.operation == kv::Operation::Put) else {
                return Ok(None);
            };
            let mut record: Record = serde_json::from_slice(&entry.value)
                .map_err(|e| format!("job record {id}: {e}"))?;
            if !change(&mut record) {
                return Ok(None);
            }
            let value = Bytes::from(serde_json::to_vec(&record).map_err(|e| e.to_string())?);
            match handles.jobs.update(id, value, entry.revision).await {
                Ok(revision) => {
                    self.remember(id, revision, record.clone());
                    return Ok(Some(record));
                }
                Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => continue,
                Err(e) => return Err(format!("writing job {id}: {e}")),
            }
        }
        Err(format!("job {id}: too many concurrent changes"))
    }

    /// `update`, retried while NATS is away (a worker's outcome must not be lost to a
    /// restart of the server): up to about half a minute.
    async fn update_patiently(
        &self,
        id: &str,
        mut change: impl FnMut(&mut Record) -> bool,
    ) -> Option<Record> {
        for attempt in 0..60 {
            match self.update(id, &mut change).await {
                Ok(record) => return record,
                Err(error) => {
                    if attempt % 10 == 0 {
                        tracing::warn!("{error}; trying again");
                    }
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        }
        None
    }

    /// The record of `id`: the mirror's when it is final; else the bucket's (the watch may
    /// lag, or be re-subscribing after NATS came back), the mirror's when NATS is away.
    async fn record(&self, id: &str) -> Option<Record> {
        let known = lock(&self.mirror).get(id).map(|(_, r)| r.clone());
        if known.as_ref().is_some_and(|r| r.status.finished()) || !self.connected() {
            return known;
        }
        let Some(handles) = self.handles.get() else {
            return known;
        };
        let fresh = tokio::time::timeout(Duration::from_secs(2), handles.jobs.entry(id)).await;
        let entry = match fresh {
            Ok(Ok(entry)) => entry,
            _ => return known,
        };
        let entry = entry.filter(|e| e.operation == kv::Operation::Put)?;
        let record: Record = serde_json::from_slice(&entry.value).ok()?;
        self.remember(id, entry.revision, record.clone());
        Some(record)
    }

    /// The status the API shows for `record`: a finished job past its keep is gone; a job
    /// that waited past it expired in the queue; a queued one has its place.
    fn status_of(&self, id: &str, record: &Record) -> Lookup<JobStatus> {
        let keep = self.limits.retain_for;
        if record.status.finished() {
            if age(record.finished_ms) > keep {
                return Lookup::Evicted;
            }
            return Lookup::Found(record.status.clone());
        }
        if matches!(record.status, JobStatus::Queued { .. }) {
            if age(Some(record.submitted_ms)) > keep {
                return Lookup::Found(JobStatus::Failed {
                    error: format!(
                        "no worker took the job within {} s (--keep-results-s): it expired in \
                         the queue",
                        keep.as_secs()
                    ),
                    cause: Cause::Server,
                });
            }
            let mirror = lock(&self.mirror);
            let position = mirror
                .iter()
                .filter(|(other, (_, r))| {
                    matches!(r.status, JobStatus::Queued { .. })
                        && (r.submitted_ms, other.as_str()) < (record.submitted_ms, id)
                        && age(Some(r.submitted_ms)) <= keep
                })
                .count();
            return Lookup::Found(JobStatus::Queued { position });
        }
        Lookup::Found(record.status.clone())
    }

    fn counts(&self) -> (usize, usize) {
        let keep = self.limits.retain_for;
        let mirror = lock(&self.mirror);
        let queued = mirror
            .values()
            .filter(|(_, r)| {
                matches!(r.status, JobStatus::Queued { .. }) && age(Some(r.submitted_ms)) <= keep
            })
            .count();
        let running = mirror
            .values()
            .filter(|(_, r)| matches!(r.status, JobStatus::Running { .. }))
            .count();
        (queued, running)
    }

    /// Take the delivered job `message`, or settle it without running (finished, cancelled,
    /// out of attempts, its input gone).
    async fn claim(&self, handles: &Handles, message: jetstream::Message) -> Option<Claim> {
        let delivered = message.info().map(|i| i.delivered).unwrap_or(1).max(1) as u32;
        let Ok(job) = serde_json::from_slice::<JobMessage>(&message.payload) else {
            tracing::warn!("a job message that is not one: dropped");
            let _ = message.ack_with(AckKind::Term).await;
            return None;
        };
        let id = job.id.clone();
        let Some(record) = self.record_fresh(handles, &id).await else {
            // No record: it expired (or the bucket was lost); nothing can be answered for it.
            let _ = message.ack_with(AckKind::Term).await;
            let _ = handles.inputs.delete(&id).await;
            return None;
        };
        if record.status.finished() {
            let _ = message.ack_with(AckKind::Term).await;
            return None;
        }
        let ack_wait = self.options.ack_wait;
        if let JobStatus::Running { .. } = record.status
            && record.worker.as_deref() != Some(&self.options.instance)
            && age(record.heartbeat_ms) < ack_wait / 2
        {
            // Its worker is alive (its ack was lost, not the worker): leave it to that one.
            let _ = message.ack_with(AckKind::Nak(Some(ack_wait))).await;
            return None;
        }
        let max = self.options.max_attempts.max(1);
        if delivered > max {
            let last = record.worker.clone().unwrap_or_else(|| "a worker".into());
            let error = format!(
                "given up after {max} attempt(s): each time, the worker running it stopped \
                 mid-job (killed or crashed; last {last}); not retried again"
            );
            tracing::warn!("{id}: {error}");
            self.settle(
                &id,
                JobStatus::Failed {
                    error,
                    cause: Cause::Server,
                },
            )
            .await;
            let _ = message.ack_with(AckKind::Term).await;
            let _ = handles.inputs.delete(&id).await;
            return None;
        }
        let input = match self.read_input(handles, &id, &job).await {
            Ok(input) => input,
            Err(error) => {
                self.settle(
                    &id,
                    JobStatus::Failed {
                        error,
                        cause: Cause::Server,
                    },
                )
                .await;
                let _ = message.ack_with(AckKind::Term).await;
                return None;
            }
        };
        let instance = self.options.instance.clone();
        let steps = job.params.options.steps.unwrap_or(0) as u32;
        let claimed = self
            .update(&id, |r| {
                if r.status.finished() || r.cancel {
                    return false;
                }
                r.status = JobStatus::Running { step: 0, steps };
                r.worker = Some(instance.clone());
                r.attempt = delivered;
                r.started_ms = Some(now_ms());
                r.heartbeat_ms = r.started_ms;
                true
            })
            .await;
        match claimed {
            Ok(Some(_)) => {}
            Ok(None) => {
                // Cancelled (or finished) in the meantime.
                self.settle(
                    &id,
                    JobStatus::Cancelled {
                        reason: StopReason::Cancelled.to_string(),
                    },
                )
                .await;
                let _ = message.ack_with(AckKind::Term).await;
                let _ = handles.inputs.delete(&id).await;
                return None;
            }
            Err(error) => {
                tracing::warn!("claiming {id}: {error}");
                let _ = message.ack_with(AckKind::Nak(None)).await;
                return None;
            }
        }
        let message = Arc::new(message);
        let me = self.me.clone();
        let progress_id = id.clone();
        let control = Arc::new(JobControl::new(move |done, total| {
            if let Some(queue) = me.upgrade() {
                queue.heartbeat(&progress_id, done, total);
            }
        }));
        let liveness = tokio::spawn(Self::keep_alive(
            self.me.clone(),
            id.clone(),
            message.clone(),
            ack_wait,
        ));
        lock(&self.running).insert(
            id.clone(),
            Running {
                message,
                control: control.clone(),
                liveness,
                started: Instant::now(),
                last_step_write: None,
            },
        );
        tracing::info!("{id}: running (attempt {delivered})");
        Some(Claim {
            id,
            input,
            attempt: delivered,
            control,
        })
    }

    async fn record_fresh(&self, handles: &Handles, id: &str) -> Option<Record> {
        let entry = handles.jobs.entry(id).await.ok()??;
        if entry.operation != kv::Operation::Put {
            return None;
        }
        let record: Record = serde_json::from_slice(&entry.value).ok()?;
        self.remember(id, entry.revision, record.clone());
        Some(record)
    }

    async fn read_input(
        &self,
        handles: &Handles,
        id: &str,
        job: &JobMessage,
    ) -> Result<JobInput, String> {
        let mut object = handles.inputs.get(id).await.map_err(|e| {
            format!(
                "the job's picture is no longer stored ({e}): it waited longer than the \
                 queue keeps inputs (--keep-results-s)"
            )
        })?;
        let mut bytes = Vec::new();
        object
            .read_to_end(&mut bytes)
            .await
            .map_err(|e| format!("reading the job's picture: {e}"))?;
        let image = decode_image(bytes)?;
        if (image.width(), image.height()) != (job.width, job.height) {
            return Err("the stored picture does not match its job".into());
        }
        Ok(JobInput {
            image,
            params: job.params.clone(),
        })
    }

    /// While job `id` runs here: a progress ack (so JetStream does not hand it to another
    /// worker) and a heartbeat in its record, three times per ack wait.
    async fn keep_alive(
        queue: Weak<Self>,
        id: String,
        message: Arc<jetstream::Message>,
        ack_wait: Duration,
    ) {
        let every = (ack_wait / 3).max(Duration::from_millis(100));
        loop {
            tokio::time::sleep(every).await;
            let Some(queue) = queue.upgrade() else { return };
            if let Err(error) = message.ack_with(AckKind::Progress).await {
                tracing::warn!("{id}: progress ack: {error}");
            }
            let instance = queue.options.instance.clone();
            let beat = queue
                .update(&id, |r| {
                    if r.worker.as_deref() != Some(&instance) || r.status.finished() {
                        return false;
                    }
                    r.heartbeat_ms = Some(now_ms());
                    true
                })
                .await;
            if let Err(error) = beat {
                tracing::warn!("{id}: heartbeat: {error}");
            }
        }
    }

    /// Write a final status (unless the record is already final); what it was.
    async fn settle(&self, id: &str, status: JobStatus) {
        let finished = now_ms();
        self.update_patiently(id, |r| {
            if r.status.finished() {
                return false;
            }
            r.status = status.clone();
            r.finished_ms = Some(finished);
            true
        })
        .await;
    }

    /// Announce this worker every few seconds: its models, whether it is ready, its job.
    async fn announce(queue: Arc<Self>) {
        let Some(handles) = queue.handles.get() else {
            return;
        };
        loop {
            let pipeline = queue.pipeline.as_ref();
            let jobs: Vec<String> = lock(&queue.running).keys().cloned().collect();
            let card = json!({
                "name": queue.options.instance,
                "ready": pipeline.is_some_and(|p| p.ready()),
                "models": pipeline.map_or(Value::Null, |p| p.describe()),
                "running": jobs,
                "seen_ms": now_ms(),
            });
            let key = queue
                .options
                .instance
                .replace(|c: char| !c.is_ascii_alphanumeric(), "_");
            if let Err(error) = handles
                .workers
                .put(key, Bytes::from(card.to_string()))
                .await
            {
                tracing::debug!("announcing this worker: {error}");
            }
            tokio::time::sleep(ANNOUNCE_EVERY).await;
        }
    }

    /// The workers announced within [`WORKER_TTL`] (listed at most twice a second: health may
    /// be asked far more often).
    async fn workers(&self) -> Vec<Value> {
        if let Some((at, cards)) = lock(&self.workers_seen).as_ref()
            && at.elapsed() < Duration::from_millis(500)
        {
            return cards.clone();
        }
        let cards = self.list_workers().await;
        *lock(&self.workers_seen) = Some((Instant::now(), cards.clone()));
        cards
    }

    async fn list_workers(&self) -> Vec<Value> {
        let Some(handles) = self.handles.get() else {
            return Vec::new();
        };
        let listed = tokio::time::timeout(Duration::from_secs(1), async {
            let mut cards = Vec::new();
            let Ok(mut keys) = handles.workers.keys().await else {
                return cards;
            };
            while let Some(Ok(key)) = keys.next().await {
                if let Ok(Some(value)) = handles.workers.get(&key).await
                    && let Ok(mut card) = serde_json::from_slice::<Value>(&value)
                {
                    let seen = age(card["seen_ms"].as_u64());
                    if seen <= WORKER_TTL {
                        card["seen_s_ago"] = json!((seen.as_secs_f64() * 10.0).round() / 10.0);
                        cards.push(card);
                    }
                }
            }
            cards
        })
        .await;
        let mut cards = listed.unwrap_or_default();
        cards.sort_by(|a, b| a["name"].as_str().cmp(&b["name"].as_str()));
        cards
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
        let handles = self.handles()?;
        let unreachable = |what: &str, e: &dyn std::fmt::Display| {
            SubmitError::Unreachable(format!("{what}: {e}"))
        };
        let id = new_id();
        // The picture first: a job message never points at a missing input.
        let picture = encode_image(&input.image);
        handles
            .inputs
            .put(id.as_str(), &mut picture.as_slice())
            .await
            .map_err(|e| unreachable("storing the picture", &e))?;
        let record = Record {
            status: JobStatus::Queued { position: 0 },
            client: reservation.client,
            format: input.params.format,
            steps: input.params.options.steps.unwrap_or(0) as u32,
            submitted_ms: now_ms(),
            seq: None,
            worker: None,
            attempt: 0,
            started_ms: None,
            heartbeat_ms: None,
            cancel: false,
            finished_ms: None,
            notes: Vec::new(),
        };
        let value = Bytes::from(serde_json::to_vec(&record).unwrap_or_default());
        let revision = match handles.jobs.create(&id, value).await {
            Ok(revision) => revision,
            Err(e) => {
                let _ = handles.inputs.delete(&id).await;
                return Err(unreachable("recording the job", &e));
            }
        };
        self.remember(&id, revision, record);
        // The job now counts in the mirror: the reservation's share is no longer needed.
        drop(reservation);
        let message = JobMessage {
            id: id.clone(),
            params: input.params,
            width: input.image.width(),
            height: input.image.height(),
        };
        let payload = Bytes::from(serde_json::to_vec(&message).unwrap_or_default());
        let published = async {
            handles
                .js
                .send_publish(
                    handles.subject.clone(),
                    jetstream::message::PublishMessage::build()
                        .payload(payload)
                        .message_id(&id),
                )
                .await
                .map_err(|e| e.to_string())?
                .await
                .map_err(|e| e.to_string())
        }
        .await;
        match published {
            Ok(ack) => {
                // Where the message sits, for a cancel to take it out; off the submit's path.
                if let Some(queue) = self.me.upgrade() {
                    let id = id.clone();
                    tokio::spawn(async move {
                        let _ = queue
                            .update(&id, |r| {
                                if r.seq.is_some() {
                                    return false;
                                }
                                r.seq = Some(ack.sequence);
                                true
                            })
                            .await;
                    });
                }
                Ok(id)
            }
            Err(e) => {
                let _ = handles.jobs.purge(&id).await;
                let _ = handles.inputs.delete(&id).await;
                lock(&self.mirror).remove(&id);
                Err(unreachable("queueing the job", &e))
            }
        }
    }

    async fn status(&self, id: &str) -> Lookup<JobStatus> {
        match self.record(id).await {
            Some(record) => self.status_of(id, &record),
            None => Lookup::Unknown,
        }
    }

    async fn describe(&self, id: &str) -> Lookup<Value> {
        let Some(record) = self.record(id).await else {
            return Lookup::Unknown;
        };
        match self.status_of(id, &record) {
            Lookup::Found(status) => {
                let mut value = describe_status(id, &status, Some(&record.notes));
                if let Some(worker) = &record.worker {
                    value["worker"] = json!(worker);
                }
                if record.attempt > 0 {
                    value["attempt"] = json!(record.attempt);
                }
                Lookup::Found(value)
            }
            Lookup::Evicted => Lookup::Evicted,
            Lookup::Unknown => Lookup::Unknown,
        }
    }

    async fn result(&self, id: &str) -> Lookup<Result<MeshFile, JobStatus>> {
        let Some(record) = self.record(id).await else {
            return Lookup::Unknown;
        };
        let status = match self.status_of(id, &record) {
            Lookup::Found(status) => status,
            Lookup::Evicted => return Lookup::Evicted,
            Lookup::Unknown => return Lookup::Unknown,
        };
        if status != JobStatus::Done {
            return Lookup::Found(Err(status));
        }
        let Some(handles) = self.handles.get() else {
            return Lookup::Found(Err(JobStatus::Failed {
                error: "the job queue cannot be reached to fetch the result; try again".into(),
                cause: Cause::Server,
            }));
        };
        let fetched = async {
            let mut object = handles.results.get(id).await?;
            let mut bytes = Vec::new();
            object.read_to_end(&mut bytes).await?;
            Ok::<_, async_nats::Error>(bytes)
        }
        .await;
        match fetched {
            Ok(bytes) => Lookup::Found(Ok(MeshFile {
                format: record.format,
                bytes,
                notes: record.notes,
            })),
            // Done, and its file expired with the store's age limit.
            Err(_) => Lookup::Evicted,
        }
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
        let Some(record) = self.record(id).await else {
            return Ok(Lookup::Unknown);
        };
        let before = match self.status_of(id, &record) {
            Lookup::Found(status) => status,
            other => return Ok(other),
        };
        if before.finished() {
            return Ok(Lookup::Found(before));
        }
        self.handles()?;
        let finished = now_ms();
        let reason_text = reason.to_string();
        let mut was = before.clone();
        let written = self
            .update(id, |r| {
                was = r.status.clone();
                match r.status {
                    JobStatus::Queued { .. } => {
                        r.status = JobStatus::Cancelled {
                            reason: reason_text.clone(),
                        };
                        r.finished_ms = Some(finished);
                        true
                    }
                    JobStatus::Running { .. } if !r.cancel => {
                        r.cancel = true;
                        true
                    }
                    _ => false,
                }
            })
            .await;
        match written {
            Ok(Some(record)) => {
                if let (JobStatus::Queued { .. }, Some(seq), Some(handles)) =
                    (&was, record.seq, self.handles.get())
                {
                    // Out of the queue: no worker is handed it.
                    let _ = handles.stream.delete_message(seq).await;
                    let _ = handles.inputs.delete(id).await;
                }
                Ok(Lookup::Found(was))
            }
            Ok(None) => Ok(Lookup::Found(was)),
            Err(error) => Err(SubmitError::Unreachable(format!(
                "the job could not be cancelled now: {error}"
            ))),
        }
    }

    async fn next(&self) -> Option<Claim> {
        let mut closing = self.closing.subscribe();
        loop {
            if *closing.borrow() {
                return None;
            }
            let Some(handles) = self.handles.get() else {
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            };
            if !self.connected() {
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
            let fetched = handles
                .consumer
                .fetch()
                .max_messages(1)
                .expires(FETCH_WAIT)
                .messages()
                .await;
            let mut messages = match fetched {
                Ok(messages) => messages,
                Err(error) => {
                    tracing::debug!("fetching the next job: {error}");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    continue;
                }
            };
            loop {
                let message = tokio::select! {
                    message = messages.next() => message,
                    _ = closing.changed() => return None,
                };
                match message {
                    Some(Ok(message)) => {
                        if let Some(claim) = self.claim(handles, message).await {
                            return Some(claim);
                        }
                    }
                    Some(Err(error)) => {
                        tracing::debug!("fetching the next job: {error}");
                        break;
                    }
                    None => break,
                }
            }
        }
    }

    fn heartbeat(&self, id: &str, step: u32, steps: u32) {
        // A step written at most four times a second (a tiny model steps far faster).
        {
            let mut running = lock(&self.running);
            let Some(job) = running.get_mut(id) else {
                return;
            };
            let due = job
                .last_step_write
                .is_none_or(|at| at.elapsed() >= Duration::from_millis(250));
            if !due && step < steps {
                return;
            }
            job.last_step_write = Some(Instant::now());
        }
        let Some(queue) = self.me.upgrade() else {
            return;
        };
        let id = id.to_string();
        tokio::spawn(async move {
            let instance = queue.options.instance.clone();
            let _ = queue
                .update(&id, |r| {
                    if r.worker.as_deref() != Some(&instance) || r.status.finished() {
                        return false;
                    }
                    r.status = JobStatus::Running { step, steps };
                    r.heartbeat_ms = Some(now_ms());
                    true
                })
                .await;
        });
    }

    async fn finish(&self, claim: Claim, outcome: Outcome) {
        let id = claim.id;
        let Some(running) = lock(&self.running).remove(&id) else {
            return;
        };
        running.liveness.abort();
        let Some(handles) = self.handles.get() else {
            return;
        };
        let message = running.message;
        let status = match outcome {
            Outcome::Done(file) => {
                // The file first: a record that says done always has its result.
                let mut stored = false;
                for _ in 0..60 {
                    match handles
                        .results
                        .put(id.as_str(), &mut file.bytes.as_slice())
                        .await
                    {
                        Ok(_) => {
                            stored = true;
                            break;
                        }
                        Err(error) => {
                            tracing::warn!("{id}: storing the result: {error}");
                            tokio::time::sleep(Duration::from_millis(500)).await;
                        }
                    }
                }
                if !stored {
                    // Leave the message unacknowledged: another run will make it again.
                    return;
                }
                let notes = file.notes.clone();
                let finished = now_ms();
                self.update_patiently(&id, |r| {
                    if r.status == JobStatus::Done {
                        return false;
                    }
                    r.status = JobStatus::Done;
                    r.notes = notes.clone();
                    r.finished_ms = Some(finished);
                    true
                })
                .await;
                None
            }
            Outcome::Failed { error, cause } => Some(JobStatus::Failed { error, cause }),
            Outcome::Stopped(StopReason::Shutdown) => {
                // Back to the queue at once, for another worker.
                let instance = self.options.instance.clone();
                self.update_patiently(&id, |r| {
                    if r.status.finished() || r.worker.as_deref() != Some(&instance) {
                        return false;
                    }
                    r.status = JobStatus::Queued { position: 0 };
                    true
                })
                .await;
                let _ = message.ack_with(AckKind::Nak(None)).await;
                tracing::info!("{id}: handed back to the queue (shutting down)");
                return;
            }
            Outcome::Stopped(reason) => Some(JobStatus::Cancelled {
                reason: reason.to_string(),
            }),
        };
        if let Some(status) = status {
            self.settle(&id, status).await;
        }
        tracing::info!(
            "{id}: finished in {:.1} s",
            running.started.elapsed().as_secs_f64()
        );
        for _ in 0..20 {
            if message.double_ack().await.is_ok() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        let _ = handles.inputs.delete(&id).await;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stored_picture_reads_back_and_a_damaged_one_is_named() {
        let picture =
            image::RgbaImage::from_fn(3, 2, |x, y| image::Rgba([x as u8, y as u8, 7, 255]));
        let stored = encode_image(&picture);
        assert_eq!(decode_image(stored.clone()).unwrap(), picture);
        let cut = decode_image(stored[..stored.len() - 1].to_vec()).unwrap_err();
        assert!(cut.contains("3×2"), "{cut}");
        assert!(decode_image(vec![1, 2]).unwrap_err().contains("truncated"));
    }

    #[test]
    fn a_record_survives_its_round_trip() {
        let record = Record {
            status: JobStatus::Failed {
                error: "x".into(),
                cause: Cause::Input,
            },
            client: "10.0.0.1".parse().unwrap(),
            format: Format::Glb,
            steps: 5,
            submitted_ms: 1,
            seq: Some(4),
            worker: Some("a".into()),
            attempt: 2,
            started_ms: Some(2),
            heartbeat_ms: None,
            cancel: true,
            finished_ms: Some(3),
            notes: vec!["n".into()],
        };
        let back: Record = serde_json::from_slice(&serde_json::to_vec(&record).unwrap()).unwrap();
        assert_eq!(back.status, record.status);
        assert_eq!(
            (back.client, back.seq, back.attempt, back.cancel),
            (record.client, Some(4), 2, true)
        );
    }
}
