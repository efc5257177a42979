//! A worker's side: taking the next job when the GPU is idle (or settling a delivery that must
//! not run: finished, cancelled, out of attempts), keeping it alive while it runs (progress
//! acks and heartbeats), handing back its outcome, and announcing the worker for health.

use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, AckKind};
use bytes::Bytes;
use futures::StreamExt;
use serde_json::{Value, json};
use tokio::io::AsyncReadExt;

use super::super::{Cause, Claim, JobControl, JobInput, JobStatus, Outcome, StopReason, lock};
use orfeas_engine::pipeline::View;

use super::store::{Handles, JobMessage, decode_image, delete_inputs, view_key};
use super::{ANNOUNCE_EVERY, FETCH_WAIT, FleetQueue, WORKER_TTL, age, now_ms};

/// Why a job's picture cannot be read.
pub(super) enum InputError {
    /// Expired or damaged: the job cannot run, ever.
    Gone(String),
    /// NATS did not answer: another delivery may.
    Unreachable(String),
}

/// A job running on this instance.
pub(super) struct Running {
    pub(super) message: Arc<jetstream::Message>,
    pub(super) control: Arc<JobControl>,
    pub(super) liveness: tokio::task::JoinHandle<()>,
    pub(super) started: Instant,
    pub(super) last_step_write: Option<Instant>,
}

impl FleetQueue {
    pub(super) async fn next_job(&self) -> Option<Claim> {
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

    /// Take the delivered job `message`, or settle it without running (finished, cancelled,
    /// out of attempts, its input gone).
    pub(super) async fn claim(
        &self,
        handles: &Handles,
        message: jetstream::Message,
    ) -> Option<Claim> {
        let delivered = message.info().map(|i| i.delivered).unwrap_or(1).max(1) as u32;
        let Ok(job) = serde_json::from_slice::<JobMessage>(&message.payload) else {
            tracing::warn!("a job message that is not one: dropped");
            let _ = message.ack_with(AckKind::Term).await;
            return None;
        };
        let id = job.id.clone();
        let record = match self.record_fresh(handles, &id).await {
            Ok(Some(record)) => record,
            Ok(None) => {
                // No record: it expired (or the bucket was lost); nothing can answer for it.
                let _ = message.ack_with(AckKind::Term).await;
                delete_inputs(handles, &id).await;
                return None;
            }
            Err(error) => {
                // NATS is away or slow: another delivery, later, decides.
                tracing::warn!("{error}");
                let _ = message
                    .ack_with(AckKind::Nak(Some(Duration::from_secs(1))))
                    .await;
                return None;
            }
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
            self.fail_delivery(handles, &id, &message, error).await;
            return None;
        }
        let input = match self.read_input(handles, &id, &job).await {
            Ok(input) => input,
            Err(InputError::Unreachable(error)) => {
                tracing::warn!("{id}: {error}");
                let _ = message
                    .ack_with(AckKind::Nak(Some(Duration::from_secs(1))))
                    .await;
                return None;
            }
            Err(InputError::Gone(error)) => {
                self.fail_delivery(handles, &id, &message, error).await;
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
                delete_inputs(handles, &id).await;
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
                queue.step(&progress_id, done, total);
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

    /// Fail job `id` for `error` without running it, and take its message and picture away.
    async fn fail_delivery(
        &self,
        handles: &Handles,
        id: &str,
        message: &jetstream::Message,
        error: String,
    ) {
        let failed = JobStatus::Failed {
            error,
            cause: Cause::Server,
        };
        self.settle(id, failed).await;
        let _ = message.ack_with(AckKind::Term).await;
        delete_inputs(handles, id).await;
    }

    pub(super) async fn read_input(
        &self,
        handles: &Handles,
        id: &str,
        job: &JobMessage,
    ) -> Result<JobInput, InputError> {
        let image = read_picture(handles, id, "the job's picture").await?;
        if (image.width(), image.height()) != (job.width, job.height) {
            return Err(InputError::Gone(
                "the stored picture does not match its job".into(),
            ));
        }
        let mut views = Vec::with_capacity(job.views.len());
        for name in &job.views {
            let view = View::parse(name)
                .ok_or_else(|| InputError::Gone(format!("{name:?} is not a view")))?;
            let what = format!("the job's {name} view");
            views.push((
                view,
                read_picture(handles, &view_key(id, name), &what).await?,
            ));
        }
        Ok(JobInput {
            image,
            views,
            params: job.params.clone(),
        })
    }

    /// While job `id` runs here: a progress ack (so JetStream does not hand it to another
    /// worker) and a heartbeat in its record, three times per ack wait.
    pub(super) async fn keep_alive(
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

    pub(super) fn step(&self, id: &str, step: u32, steps: u32) {
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

    /// Record how the run of `claim` ended and acknowledge its message. The job counts as
    /// running here until this is done: a server stopping waits for it.
    pub(super) async fn finish_job(&self, claim: Claim, outcome: Outcome) {
        let job = {
            let running = lock(&self.running);
            running
                .get(&claim.id)
                .map(|job| (job.message.clone(), job.started))
        };
        if let Some((message, started)) = job {
            if let Some(job) = lock(&self.running).get(&claim.id) {
                job.liveness.abort();
            }
            self.settle_run(&claim.id, &message, started, outcome).await;
        }
        lock(&self.running).remove(&claim.id);
    }

    async fn settle_run(
        &self,
        id: &str,
        message: &jetstream::Message,
        started: Instant,
        outcome: Outcome,
    ) {
        let id = id.to_string();
        let Some(handles) = self.handles.get() else {
            return;
        };
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
        tracing::info!("{id}: finished in {:.1} s", started.elapsed().as_secs_f64());
        for _ in 0..20 {
            if message.double_ack().await.is_ok() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        delete_inputs(handles, &id).await;
    }

    /// Announce this worker every few seconds: its models, whether it is ready, its job.
    pub(super) async fn announce(queue: Arc<Self>) {
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
    pub(super) async fn workers(&self) -> Vec<Value> {
        if let Some((at, cards)) = lock(&self.workers_seen).as_ref()
            && at.elapsed() < Duration::from_millis(500)
        {
            return cards.clone();
        }
        let cards = self.list_workers().await;
        *lock(&self.workers_seen) = Some((Instant::now(), cards.clone()));
        cards
    }

    pub(super) async fn list_workers(&self) -> Vec<Value> {
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

/// One stored picture of a job (`what` names it in errors).
async fn read_picture(
    handles: &Handles,
    key: &str,
    what: &str,
) -> Result<image::RgbaImage, InputError> {
    use async_nats::jetstream::object_store::GetErrorKind;
    let mut object = handles.inputs.get(key).await.map_err(|e| match e.kind() {
        GetErrorKind::NotFound => InputError::Gone(format!(
            "{what} is no longer stored ({e}): it waited longer than the queue keeps inputs \
             (--keep-results-s)"
        )),
        _ => InputError::Unreachable(format!("reading {what}: {e}")),
    })?;
    let mut bytes = Vec::new();
    object
        .read_to_end(&mut bytes)
        .await
        .map_err(|e| InputError::Unreachable(format!("reading {what}: {e}")))?;
    decode_image(bytes).map_err(InputError::Gone)
}
