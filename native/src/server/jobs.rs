//! Generation jobs: a bounded queue in front of one runner (the GPU does one job at a time),
//! job status for polling, the result file, cancellation and a per-job deadline.
//!
//! Nothing a job does can take the queue down: a job that panics is `failed` with the panic's
//! message and the runner goes on; a poisoned lock is recovered (the data behind it is only
//! ever replaced whole). Job ids are random 128-bit values, so one client cannot read another's
//! results; finished jobs are evicted by age and count, and an evicted id answers "gone".

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use futures::FutureExt;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::sync::{mpsc, watch};

pub use orfeas_engine::mesh::export::Format;
use orfeas_engine::pipeline::GenerateOptions;

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
    pub image: image::RgbaImage,
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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
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

    /// Run the job, reporting steps and stopping early when `control` says so.
    async fn run(&self, input: JobInput, control: &JobControl) -> Result<MeshFile, JobError>;
}

#[derive(Debug, Clone, PartialEq, Serialize)]
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

struct JobEntry {
    status: watch::Sender<JobStatus>,
    result: Option<MeshFile>,
    control: Arc<JobControl>,
    finished_at: Option<Instant>,
    /// The client's share this job holds until it finishes.
    share: Option<ClientShare>,
}

struct Queued {
    id: String,
    input: JobInput,
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
}

/// Jobs queued or running (or reserved) per client.
type ClientCounts = Arc<Mutex<HashMap<IpAddr, usize>>>;

/// One of a client's places in the queue; given back when dropped.
pub struct ClientShare {
    counts: ClientCounts,
    client: IpAddr,
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
/// by [`Jobs::submit`]; dropped unused, both are free again.
pub struct Reservation {
    permit: mpsc::OwnedPermit<Queued>,
    share: ClientShare,
}

/// What is known of a job id.
pub enum Lookup<T> {
    Found(T),
    /// It finished and its result was evicted (by age or count).
    Evicted,
    Unknown,
}

struct Table {
    entries: HashMap<String, JobEntry>,
    /// Ids in submission order.
    order: VecDeque<String>,
    /// Recently evicted ids (bounded), so they answer "gone" rather than "unknown".
    evicted: VecDeque<String>,
}

pub struct Jobs {
    pipeline: Arc<dyn Pipeline>,
    sender: mpsc::Sender<Queued>,
    table: Mutex<Table>,
    limits: JobLimits,
    clients: ClientCounts,
}

/// A lock whose holder panicked still guards whole values (every write replaces one): recover
/// it rather than fail every later request.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A random 128-bit job id (hex), from the OS-seeded generator.
fn new_id() -> String {
    format!("{:032x}", rand::random::<u128>())
}

/// Job `id`'s status, a queued one with its place in the queue.
fn status_in(table: &Table, id: &str, entry: &JobEntry) -> JobStatus {
    match entry.status.borrow().clone() {
        JobStatus::Queued { .. } => {
            let position = table
                .order
                .iter()
                .filter(|other| {
                    table
                        .entries
                        .get(*other)
                        .is_some_and(|e| matches!(*e.status.borrow(), JobStatus::Queued { .. }))
                })
                .position(|other| other == id)
                .unwrap_or(0);
            JobStatus::Queued { position }
        }
        other => other,
    }
}

impl Jobs {
    /// A queue holding at most `limits.queue` waiting jobs, drained by one runner task.
    pub fn start(limits: JobLimits, pipeline: Arc<dyn Pipeline>) -> Arc<Self> {
        let (sender, receiver) = mpsc::channel(limits.queue.max(1));
        let jobs = Arc::new(Self {
            pipeline: pipeline.clone(),
            sender,
            table: Mutex::new(Table {
                entries: HashMap::new(),
                order: VecDeque::new(),
                evicted: VecDeque::new(),
            }),
            limits,
            clients: Arc::default(),
        });
        tokio::spawn(run(jobs.clone(), receiver, pipeline));
        jobs
    }

    /// What the pipeline would miss for `input` (see [`Pipeline::unavailable`]).
    pub fn unavailable(&self, input: &JobInput) -> Option<(String, String)> {
        self.pipeline.unavailable(input)
    }

    /// Reserve a place in the queue for `client`, or say why not (queue full or closed, or
    /// the client already holding its share). Taken before the upload is read.
    pub fn reserve(&self, client: IpAddr) -> Result<Reservation, SubmitError> {
        let share = {
            let mut counts = lock(&self.clients);
            let count = counts.entry(client).or_insert(0);
            let limit = self.limits.per_client.max(1);
            if *count >= limit {
                return Err(SubmitError::ClientShare { limit });
            }
            *count += 1;
            ClientShare {
                counts: self.clients.clone(),
                client,
            }
        };
        let permit = self
            .sender
            .clone()
            .try_reserve_owned()
            .map_err(|e| match e {
                mpsc::error::TrySendError::Full(_) => SubmitError::Full,
                mpsc::error::TrySendError::Closed(_) => SubmitError::Closed,
            })?;
        Ok(Reservation { permit, share })
    }

    /// Queue a job in its reserved place; the client's share is held until it finishes.
    pub fn submit(&self, reservation: Reservation, input: JobInput) -> String {
        let Reservation { permit, share } = reservation;
        let id = new_id();
        let (status, _) = watch::channel(JobStatus::Queued { position: 0 });
        {
            let mut table = lock(&self.table);
            self.evict(&mut table);
            table.entries.insert(
                id.clone(),
                JobEntry {
                    status,
                    result: None,
                    control: Arc::new(JobControl::new(|_, _| {})),
                    finished_at: None,
                    share: Some(share),
                },
            );
            table.order.push_back(id.clone());
        }
        permit.send(Queued {
            id: id.clone(),
            input,
        });
        id
    }

    /// Drop finished jobs past their age, then the oldest finished beyond the count.
    fn evict(&self, table: &mut Table) {
        let now = Instant::now();
        let expired = |entry: &JobEntry| {
            entry
                .finished_at
                .is_some_and(|at| now.duration_since(at) > self.limits.retain_for)
        };
        let mut finished: Vec<String> = table
            .order
            .iter()
            .filter(|id| {
                table
                    .entries
                    .get(*id)
                    .is_some_and(|e| e.finished_at.is_some())
            })
            .cloned()
            .collect();
        let over = finished.len().saturating_sub(self.limits.retain);
        let mut gone: Vec<String> = finished.drain(..over).collect();
        gone.extend(
            finished
                .into_iter()
                .filter(|id| table.entries.get(id).is_some_and(expired)),
        );
        for id in gone {
            table.entries.remove(&id);
            table.order.retain(|other| *other != id);
            table.evicted.push_back(id);
        }
        let keep = (self.limits.retain * 16).max(1024);
        while table.evicted.len() > keep {
            table.evicted.pop_front();
        }
    }

    fn lookup<T>(&self, id: &str, f: impl FnOnce(&Table, &JobEntry) -> T) -> Lookup<T> {
        let mut table = lock(&self.table);
        self.evict(&mut table);
        match table.entries.get(id) {
            Some(entry) => Lookup::Found(f(&table, entry)),
            None if table.evicted.iter().any(|e| e == id) => Lookup::Evicted,
            None => Lookup::Unknown,
        }
    }

    pub fn status(&self, id: &str) -> Lookup<JobStatus> {
        self.lookup(id, |table, entry| status_in(table, id, entry))
    }

    pub fn describe(&self, id: &str) -> Lookup<Value> {
        // One look at the table: the status and the notes of the same moment.
        self.lookup(id, |table, entry| {
            let status = status_in(table, id, entry);
            let mut value = serde_json::to_value(&status).unwrap_or(Value::Null);
            value["id"] = json!(id);
            if status == JobStatus::Done {
                value["result_url"] = json!(format!("/api/jobs/{id}/result"));
                if let Some(result) = &entry.result {
                    value["notes"] = json!(result.notes);
                }
            }
            value
        })
    }

    pub fn result(&self, id: &str) -> Lookup<Result<MeshFile, JobStatus>> {
        self.lookup(id, |_, entry| match &entry.result {
            Some(file) => Ok(file.clone()),
            None => Err(entry.status.borrow().clone()),
        })
    }

    /// Wait until job `id` has finished (for `?wait=true`).
    pub async fn wait(&self, id: &str) -> Option<JobStatus> {
        let mut receiver = lock(&self.table).entries.get(id)?.status.subscribe();
        let status = receiver.wait_for(JobStatus::finished).await.ok()?.clone();
        Some(status)
    }

    /// Cancel job `id`: a queued one is dropped, a running one stops at its next step. The
    /// status it had, or why not.
    pub fn cancel(&self, id: &str, reason: StopReason) -> Lookup<JobStatus> {
        let status = self.lookup(id, |_, entry| {
            let status = entry.status.borrow().clone();
            match status {
                JobStatus::Queued { .. } => {
                    entry.status.send_replace(JobStatus::Cancelled {
                        reason: reason.to_string(),
                    });
                }
                JobStatus::Running { .. } => entry.control.stop(reason),
                _ => {}
            }
            status
        });
        if let Lookup::Found(status) = &status
            && matches!(status, JobStatus::Queued { .. })
        {
            self.finish(id, None);
        }
        status
    }

    /// Cancel everything (shutdown): queued jobs at once, the running one at its next step.
    pub fn cancel_all(&self, reason: StopReason) -> usize {
        let ids: Vec<String> = lock(&self.table).order.iter().cloned().collect();
        ids.iter()
            .filter(|id| {
                matches!(
                    self.cancel(id, reason),
                    Lookup::Found(JobStatus::Queued { .. } | JobStatus::Running { .. })
                )
            })
            .count()
    }

    pub fn running(&self) -> bool {
        lock(&self.table)
            .entries
            .values()
            .any(|e| matches!(*e.status.borrow(), JobStatus::Running { .. }))
    }

    fn set(&self, id: &str, status: JobStatus) {
        if let Some(entry) = lock(&self.table).entries.get(id) {
            entry.status.send_replace(status);
        }
    }

    /// Record a finished job (its result, if any) for eviction by age.
    fn finish(&self, id: &str, result: Option<MeshFile>) {
        if let Some(entry) = lock(&self.table).entries.get_mut(id) {
            entry.result = result;
            entry.finished_at = Some(Instant::now());
            entry.share = None;
        }
    }
}

/// The text of a caught panic.
fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".into())
}

async fn run(jobs: Arc<Jobs>, mut receiver: mpsc::Receiver<Queued>, pipeline: Arc<dyn Pipeline>) {
    while let Some(Queued { id, input }) = receiver.recv().await {
        if !matches!(jobs.status(&id), Lookup::Found(JobStatus::Queued { .. })) {
            continue; // cancelled while it waited
        }
        let steps = input.params.options.steps.unwrap_or(0) as u32;
        jobs.set(&id, JobStatus::Running { step: 0, steps });
        let progress_jobs = jobs.clone();
        let progress_id = id.clone();
        let control = Arc::new(JobControl::new(move |done, total| {
            progress_jobs.set(
                &progress_id,
                JobStatus::Running {
                    step: done,
                    steps: total,
                },
            );
        }));
        if let Some(entry) = lock(&jobs.table).entries.get_mut(&id) {
            entry.control = control.clone();
        }
        // The deadline: a timer on another task asks the job to stop at its next step.
        let deadline = jobs.limits.timeout.map(|timeout| {
            let control = control.clone();
            tokio::spawn(async move {
                tokio::time::sleep(timeout).await;
                control.stop(StopReason::TimedOut { after: timeout });
            })
        });
        let outcome = AssertUnwindSafe(pipeline.run(input, &control))
            .catch_unwind()
            .await;
        if let Some(deadline) = deadline {
            deadline.abort();
        }
        let stopped = control.stop_reason();
        let failed = |cause, error| (JobStatus::Failed { error, cause }, None);
        let (status, result) = match (outcome, stopped) {
            (Ok(Ok(file)), _) => (JobStatus::Done, Some(file)),
            // A job that stopped when asked, or failed after the ask: the ask is why.
            (Ok(Err(_)), Some(reason @ StopReason::TimedOut { .. })) => {
                failed(Cause::Server, format!("the job {reason}"))
            }
            (Ok(Err(_)), Some(reason)) => (
                JobStatus::Cancelled {
                    reason: reason.to_string(),
                },
                None,
            ),
            (Ok(Err(JobError::Input(error))), None) => failed(Cause::Input, error),
            (Ok(Err(JobError::Internal(error))), None) => failed(Cause::Server, error),
            (Ok(Err(JobError::Stopped)), None) => failed(
                Cause::Server,
                "the job stopped without being asked to".into(),
            ),
            (Err(panic), _) => failed(
                Cause::Server,
                format!("the job crashed: {}", panic_message(panic.as_ref())),
            ),
        };
        if let JobStatus::Failed { error, cause } = &status {
            tracing::warn!("{id} failed ({cause:?}): {error}");
        }
        jobs.finish(&id, result);
        jobs.set(&id, status);
    }
}
