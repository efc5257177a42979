//! Generation jobs: what a job is, the [`JobQueue`] every front end submits to and every GPU
//! takes work from, and the runner that drives one GPU.
//!
//! Two queues implement it: [`Jobs`] keeps the jobs in this process (the default: one machine,
//! no service to run), [`nats::FleetQueue`] keeps them in NATS JetStream so that several
//! `orfeas serve` instances share them (`--queue nats://…`). The runner ([`runner::work`]) is
//! the same for both: it takes the next job only when its GPU is idle, reports steps, obeys a
//! stop and hands the outcome back.

pub mod local;
pub mod metrics;
pub mod nats;
pub mod runner;

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;

pub use local::Jobs;
pub use orfeas_engine::mesh::export::Format;
use orfeas_engine::pipeline::{GenerateOptions, View};

/// What a generation request asks for: the engine's knobs (their defaults and ranges are
/// `orfeas_engine::pipeline`'s), whether to cut the object out, and the file to return.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GenerateParams {
    pub options: GenerateOptions,
    pub remove_background: bool,
    pub format: Format,
}

impl Default for GenerateParams {
    fn default() -> Self {
        Self {
            options: GenerateOptions::default(),
            remove_background: true,
            format: Format::Glb,
        }
    }
}

/// A decoded, validated request.
#[derive(Debug, Clone)]
pub struct JobInput {
    /// The picture: the front view.
    pub image: image::RgbaImage,
    /// More views of the object, for a multi-view (2mv) model (left, back, right).
    pub views: Vec<(View, image::RgbaImage)>,
    pub params: GenerateParams,
}

/// The finished mesh file.
#[derive(Debug, Clone)]
pub struct MeshFile {
    pub format: Format,
    pub bytes: Vec<u8>,
    /// What the job did with the picture (e.g. "background removed"), for the job status.
    pub notes: Vec<String>,
}

/// Why a job was asked to stop before it finished.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    /// `DELETE /api/jobs/{id}`.
    Cancelled,
    /// Past the per-job deadline (`--job-timeout-s`): a failure, not a cancellation.
    TimedOut { after: Duration },
    /// The server is stopping.
    Shutdown,
}

impl std::fmt::Display for StopReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StopReason::Cancelled => f.write_str("cancelled by the client"),
            StopReason::TimedOut { after } => write!(f, "timed out after {} s", after.as_secs()),
            StopReason::Shutdown => f.write_str("the server is shutting down"),
        }
    }
}

/// Why a job gave no mesh, by whose doing: the client's picture or parameters (a 4xx), ours
/// (a 500), or a stop the job was asked for.
#[derive(Debug, Clone, PartialEq)]
pub enum JobError {
    /// The input cannot be made into a mesh (e.g. the model finds no surface in the picture).
    Input(String),
    /// The server failed (a device error, a model that cannot run).
    Internal(String),
    /// Stopped at a step because [`JobControl::stop`] asked.
    Stopped,
}

impl From<orfeas_engine::pipeline::GenerateError> for JobError {
    fn from(error: orfeas_engine::pipeline::GenerateError) -> Self {
        use orfeas_engine::pipeline::GenerateError;
        match error {
            GenerateError::Stopped => JobError::Stopped,
            _ if error.is_input() => JobError::Input(error.to_string()),
            _ => JobError::Internal(error.to_string()),
        }
    }
}

impl From<String> for JobError {
    fn from(reason: String) -> Self {
        JobError::Internal(reason)
    }
}

/// Whose doing a failed job is (the `cause` of its status).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Cause {
    /// The picture or parameters sent: sending the same again fails again.
    Input,
    Server,
}

/// What a running job reports and obeys: its progress, and a request to stop (cancelled, past
/// its deadline, the server shutting down) that the pipeline honours at its next step.
pub struct JobControl {
    stop: Mutex<Option<StopReason>>,
    stopping: AtomicBool,
    progress: Box<dyn Fn(u32, u32) + Send + Sync>,
}

impl JobControl {
    pub fn new(progress: impl Fn(u32, u32) + Send + Sync + 'static) -> Self {
        Self {
            stop: Mutex::new(None),
            stopping: AtomicBool::new(false),
            progress: Box::new(progress),
        }
    }

    /// `done` of `total` steps finished.
    pub fn step(&self, done: u32, total: u32) {
        (self.progress)(done, total);
    }

    /// Ask the job to stop at its next step; the first reason wins.
    pub fn stop(&self, reason: StopReason) {
        let mut stop = lock(&self.stop);
        if stop.is_none() {
            *stop = Some(reason);
        }
        self.stopping.store(true, Ordering::Release);
    }

    /// Whether the job should stop now (cheap: checked at every step).
    pub fn should_stop(&self) -> bool {
        self.stopping.load(Ordering::Acquire)
    }

    pub fn stop_reason(&self) -> Option<StopReason> {
        *lock(&self.stop)
    }
}

/// Turns an image into a mesh file. One implementation runs the models; tests use others.
#[async_trait::async_trait]
pub trait Pipeline: Send + Sync {
    /// A model `input` needs that is not there, as `(model, reason)`; checked before queueing.
    fn unavailable(&self, _input: &JobInput) -> Option<(String, String)> {
        None
    }

    /// Whether this machine can take a job now (its models loaded): a fleet's worker asks
    /// for work only then.
    fn ready(&self) -> bool {
        true
    }

    /// What this machine runs, for the fleet's health: its models and their precision.
    fn describe(&self) -> Value {
        Value::Null
    }

    /// Run the job, reporting steps and stopping early when `control` says so.
    async fn run(&self, input: JobInput, control: &JobControl) -> Result<MeshFile, JobError>;
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum JobStatus {
    Queued { position: usize },
    Running { step: u32, steps: u32 },
    Done,
    Failed { error: String, cause: Cause },
    Cancelled { reason: String },
}

impl JobStatus {
    pub fn finished(&self) -> bool {
        matches!(
            self,
            Self::Done | Self::Failed { .. } | Self::Cancelled { .. }
        )
    }
}

/// How long finished jobs are kept, and how many; how long one may run.
#[derive(Debug, Clone)]
pub struct JobLimits {
    /// Jobs that may wait in the queue (more are refused: 429).
    pub queue: usize,
    /// Finished jobs kept (oldest evicted first).
    pub retain: usize,
    /// How long a finished job's result is kept.
    pub retain_for: Duration,
    /// A job still running after this is stopped at its next step.
    pub timeout: Option<Duration>,
    /// Jobs one client (one IP address) may have queued or running at once, so that one
    /// client cannot take the whole queue.
    pub per_client: usize,
}

impl Default for JobLimits {
    fn default() -> Self {
        Self {
            queue: 8,
            retain: 64,
            retain_for: Duration::from_secs(3600),
            timeout: Some(Duration::from_secs(1800)),
            per_client: 4,
        }
    }
}

/// Why a job could not be queued.
#[derive(Debug, PartialEq, Eq)]
pub enum SubmitError {
    /// The queue is full: try again later.
    Full,
    /// This client already has its share of jobs queued or running: try again later.
    ClientShare { limit: usize },
    /// The runner is gone (the server is stopping): not the client's fault.
    Closed,
    /// The shared queue cannot be reached now (NATS down): try again later.
    Unreachable(String),
}

/// Jobs queued or running (or reserved) per client.
type ClientCounts = Arc<Mutex<HashMap<IpAddr, usize>>>;

/// One of a client's places in the queue; given back when dropped.
pub struct ClientShare {
    counts: ClientCounts,
    client: IpAddr,
}

impl ClientShare {
    /// Take one of `client`'s places, when it holds fewer than `limit` (`others` more are
    /// held where this process cannot count them: the fleet's other instances).
    fn take(
        counts: &ClientCounts,
        client: IpAddr,
        others: usize,
        limit: usize,
    ) -> Result<Self, SubmitError> {
        let mut held = lock(counts);
        let count = held.entry(client).or_insert(0);
        let limit = limit.max(1);
        if *count + others >= limit {
            if *count == 0 {
                held.remove(&client);
            }
            return Err(SubmitError::ClientShare { limit });
        }
        *count += 1;
        Ok(ClientShare {
            counts: counts.clone(),
            client,
        })
    }
}

impl Drop for ClientShare {
    fn drop(&mut self) {
        let mut counts = lock(&self.counts);
        if let Some(count) = counts.get_mut(&self.client) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                counts.remove(&self.client);
            }
        }
    }
}

/// A place in the queue held before the upload is read, and the client's share with it. Used
/// by [`JobQueue::submit`]; dropped unused, both are free again.
pub struct Reservation {
    client: IpAddr,
    share: ClientShare,
    /// The in-process queue's slot in its channel.
    permit: Option<tokio::sync::mpsc::OwnedPermit<local::Queued>>,
}

/// What is known of a job id.
pub enum Lookup<T> {
    Found(T),
    /// It finished and its result was evicted (by age or count).
    Evicted,
    Unknown,
}

/// A job a runner took: run it, then hand its [`Outcome`] to [`JobQueue::finish`].
pub struct Claim {
    pub id: String,
    pub input: JobInput,
    /// Which run of the job this is: above 1 when a worker before this one stopped mid-job.
    pub attempt: u32,
    /// Stop requests reach the job through this (a `DELETE` through any instance).
    pub control: Arc<JobControl>,
}

/// How a run ended.
#[derive(Debug)]
pub enum Outcome {
    Done(MeshFile),
    Failed {
        error: String,
        cause: Cause,
    },
    /// Stopped when asked: cancelled, or the server stopping (a fleet's job then goes back to
    /// the queue for another worker).
    Stopped(StopReason),
}

/// Where jobs wait and what is known of them: submitted by front ends, taken by runners.
#[async_trait::async_trait]
pub trait JobQueue: Send + Sync {
    /// Reserve a place for `client` before its upload is read, or say why not (queue full,
    /// unreachable or closed, the client already holding its share).
    fn reserve(&self, client: IpAddr) -> Result<Reservation, SubmitError>;

    /// A model `input` needs that is missing here, as `(model, reason)` (a fleet: `None`,
    /// its workers decide).
    fn unavailable(&self, _input: &JobInput) -> Option<(String, String)> {
        None
    }

    /// Whether a job may be admitted only when this machine's models are ready (this machine
    /// alone: yes; a fleet: the job waits for any worker).
    fn needs_local_models(&self) -> bool {
        true
    }

    /// Queue a job in its reserved place; its id.
    async fn submit(
        &self,
        reservation: Reservation,
        input: JobInput,
    ) -> Result<String, SubmitError>;

    /// The job's status (a queued one with its place).
    async fn status(&self, id: &str) -> Lookup<JobStatus>;

    /// The status as the API shows it: with the id, the result's URL and notes when done.
    async fn describe(&self, id: &str) -> Lookup<Value>;

    /// The result file of a finished job, or the status of one that has none.
    async fn result(&self, id: &str) -> Lookup<Result<MeshFile, JobStatus>>;

    /// Wait until job `id` has finished (for `?wait=true`).
    async fn wait(&self, id: &str) -> Option<JobStatus>;

    /// Cancel job `id`: a queued one never runs, a running one stops at its next step. The
    /// status it had; an error when the queue cannot be reached to say so.
    async fn cancel(&self, id: &str, reason: StopReason) -> Result<Lookup<JobStatus>, SubmitError>;

    /// The next job for an idle GPU; `None` once the queue is closing (shutdown).
    async fn next(&self) -> Option<Claim>;

    /// The running job `id` has done `step` of `steps` (and is alive).
    fn heartbeat(&self, id: &str, step: u32, steps: u32);

    /// Record how the run of `claim` ended.
    async fn finish(&self, claim: Claim, outcome: Outcome);

    /// The server is stopping: stop taking jobs, stop the running one at its next step. How
    /// many jobs were stopped or cancelled.
    fn shut_down(&self) -> usize;

    /// Whether a job runs here now.
    fn running_here(&self) -> bool;

    /// The queue as health shows it (depth, running jobs, the fleet's workers).
    async fn overview(&self) -> Value;

    /// The figures `/metrics` shows.
    async fn metrics(&self) -> metrics::Snapshot;
}

/// A lock whose holder panicked still guards whole values (every write replaces one): recover
/// it rather than fail every later request.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A random 128-bit job id (hex), from the OS-seeded generator.
pub(crate) fn new_id() -> String {
    format!("{:032x}", rand::random::<u128>())
}

/// The API's view of a status: with the id, and where to fetch a finished job's result.
pub(crate) fn describe_status(id: &str, status: &JobStatus, notes: Option<&[String]>) -> Value {
    let mut value = serde_json::to_value(status).unwrap_or(Value::Null);
    value["id"] = Value::from(id);
    if *status == JobStatus::Done {
        value["result_url"] = Value::from(format!("/api/jobs/{id}/result"));
        if let Some(notes) = notes {
            value["notes"] = Value::from(notes.to_vec());
        }
    }
    value
}
