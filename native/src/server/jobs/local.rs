//! The in-process queue (the default): a bounded channel in front of this machine's runner,
//! job status for polling, the result file, cancellation.
//!
//! A poisoned lock is recovered (the data behind it is only ever replaced whole). Job ids are
//! random 128-bit values, so one client cannot read another's results; finished jobs are
//! evicted by age and count, and an evicted id answers "gone".

use std::collections::VecDeque;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, Weak};
use std::time::Instant;

use serde_json::{Value, json};
use tokio::sync::{mpsc, watch};

use super::metrics::{Snapshot, Tally};
use super::runner::{self, RunnerOptions};
use super::{
    Claim, ClientCounts, ClientShare, JobControl, JobInput, JobLimits, JobQueue, JobStatus, Lookup,
    MeshFile, Outcome, Pipeline, Reservation, StopReason, SubmitError, describe_status, lock,
    new_id,
};

struct JobEntry {
    status: watch::Sender<JobStatus>,
    result: Option<MeshFile>,
    control: Arc<JobControl>,
    started_at: Option<Instant>,
    finished_at: Option<Instant>,
    /// The client's share this job holds until it finishes.
    share: Option<ClientShare>,
}

/// A job in the channel between the API and the runner.
pub struct Queued {
    id: String,
    input: JobInput,
}

struct Table {
    entries: std::collections::HashMap<String, JobEntry>,
    /// Ids in submission order.
    order: VecDeque<String>,
    /// Recently evicted ids (bounded), so they answer "gone" rather than "unknown".
    evicted: VecDeque<String>,
}

pub struct Jobs {
    pipeline: Arc<dyn Pipeline>,
    sender: mpsc::Sender<Queued>,
    receiver: tokio::sync::Mutex<mpsc::Receiver<Queued>>,
    table: Mutex<Table>,
    limits: JobLimits,
    clients: ClientCounts,
    tally: Tally,
    /// This queue, for the progress reports of the jobs it hands out.
    me: Weak<Jobs>,
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
        let runner = RunnerOptions {
            timeout: limits.timeout,
            ..RunnerOptions::default()
        };
        Self::start_with(limits, pipeline, runner)
    }

    /// As [`Jobs::start`], the runner as `runner` says.
    pub fn start_with(
        limits: JobLimits,
        pipeline: Arc<dyn Pipeline>,
        runner: RunnerOptions,
    ) -> Arc<Self> {
        let (sender, receiver) = mpsc::channel(limits.queue.max(1));
        let jobs = Arc::new_cyclic(|me| Self {
            pipeline: pipeline.clone(),
            sender,
            receiver: tokio::sync::Mutex::new(receiver),
            table: Mutex::new(Table {
                entries: std::collections::HashMap::new(),
                order: VecDeque::new(),
                evicted: VecDeque::new(),
            }),
            limits,
            clients: Arc::default(),
            tally: Tally::default(),
            me: me.clone(),
        });
        tokio::spawn(runner::work(jobs.clone(), pipeline, runner));
        jobs
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

    fn cancel_now(&self, id: &str, reason: StopReason) -> Lookup<JobStatus> {
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
            self.tally.update(|c| c.cancelled += 1);
            self.record_finish(id, None);
        }
        status
    }

    fn count(&self, wanted: fn(&JobStatus) -> bool) -> usize {
        lock(&self.table)
            .entries
            .values()
            .filter(|e| wanted(&e.status.borrow()))
            .count()
    }

    fn set(&self, id: &str, status: JobStatus) {
        if let Some(entry) = lock(&self.table).entries.get(id) {
            entry.status.send_replace(status);
        }
    }

    /// Record a finished job (its result, if any) for eviction by age.
    fn record_finish(&self, id: &str, result: Option<MeshFile>) {
        if let Some(entry) = lock(&self.table).entries.get_mut(id) {
            entry.result = result;
            entry.finished_at = Some(Instant::now());
            entry.share = None;
        }
    }
}

#[async_trait::async_trait]
impl JobQueue for Jobs {
    fn reserve(&self, client: IpAddr) -> Result<Reservation, SubmitError> {
        let share = ClientShare::take(&self.clients, client, 0, self.limits.per_client)?;
        let permit = self
            .sender
            .clone()
            .try_reserve_owned()
            .map_err(|e| match e {
                mpsc::error::TrySendError::Full(_) => SubmitError::Full,
                mpsc::error::TrySendError::Closed(_) => SubmitError::Closed,
            })?;
        Ok(Reservation {
            client,
            share,
            permit: Some(permit),
        })
    }

    fn unavailable(&self, input: &JobInput) -> Option<(String, String)> {
        self.pipeline.unavailable(input)
    }

    async fn submit(
        &self,
        reservation: Reservation,
        input: JobInput,
    ) -> Result<String, SubmitError> {
        let Reservation { share, permit, .. } = reservation;
        let permit = permit.ok_or(SubmitError::Closed)?;
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
                    started_at: None,
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
        Ok(id)
    }

    async fn status(&self, id: &str) -> Lookup<JobStatus> {
        self.lookup(id, |table, entry| status_in(table, id, entry))
    }

    async fn describe(&self, id: &str) -> Lookup<Value> {
        // One look at the table: the status and the notes of the same moment.
        self.lookup(id, |table, entry| {
            let status = status_in(table, id, entry);
            let notes = entry.result.as_ref().map(|r| r.notes.as_slice());
            describe_status(id, &status, notes)
        })
    }

    async fn result(&self, id: &str) -> Lookup<Result<MeshFile, JobStatus>> {
        self.lookup(id, |_, entry| match &entry.result {
            Some(file) => Ok(file.clone()),
            None => Err(entry.status.borrow().clone()),
        })
    }

    async fn wait(&self, id: &str) -> Option<JobStatus> {
        let mut receiver = lock(&self.table).entries.get(id)?.status.subscribe();
        let status = receiver.wait_for(JobStatus::finished).await.ok()?.clone();
        Some(status)
    }

    async fn cancel(&self, id: &str, reason: StopReason) -> Result<Lookup<JobStatus>, SubmitError> {
        Ok(self.cancel_now(id, reason))
    }

    async fn next(&self) -> Option<Claim> {
        let mut receiver = self.receiver.lock().await;
        loop {
            let Queued { id, input } = receiver.recv().await?;
            if !matches!(
                self.lookup(&id, |_, e| e.status.borrow().clone()),
                Lookup::Found(JobStatus::Queued { .. })
            ) {
                continue; // cancelled while it waited
            }
            let steps = input.params.options.steps.unwrap_or(0) as u32;
            self.set(&id, JobStatus::Running { step: 0, steps });
            let me = self.me.clone();
            let progress_id = id.clone();
            let control = Arc::new(JobControl::new(move |done, total| {
                if let Some(jobs) = me.upgrade() {
                    jobs.heartbeat(&progress_id, done, total);
                }
            }));
            if let Some(entry) = lock(&self.table).entries.get_mut(&id) {
                entry.control = control.clone();
                entry.started_at = Some(Instant::now());
            }
            return Some(Claim {
                id,
                input,
                attempt: 1,
                control,
            });
        }
    }

    fn heartbeat(&self, id: &str, step: u32, steps: u32) {
        self.set(id, JobStatus::Running { step, steps });
    }

    async fn finish(&self, claim: Claim, outcome: Outcome) {
        let id = &claim.id;
        let started = lock(&self.table).entries.get(id).and_then(|e| e.started_at);
        let (status, result) = match outcome {
            Outcome::Done(file) => (JobStatus::Done, Some(file)),
            Outcome::Failed { error, cause } => (JobStatus::Failed { error, cause }, None),
            Outcome::Stopped(reason) => (
                JobStatus::Cancelled {
                    reason: reason.to_string(),
                },
                None,
            ),
        };
        self.tally.update(|c| {
            match &status {
                JobStatus::Done => c.done += 1,
                JobStatus::Failed { .. } => c.failed += 1,
                _ => c.cancelled += 1,
            }
            if let Some(started) = started {
                c.finished_run(started.elapsed().as_secs_f64());
            }
        });
        self.record_finish(id, result);
        self.set(id, status);
    }

    fn shut_down(&self) -> usize {
        let ids: Vec<String> = lock(&self.table).order.iter().cloned().collect();
        ids.iter()
            .filter(|id| {
                matches!(
                    self.cancel_now(id, StopReason::Shutdown),
                    Lookup::Found(JobStatus::Queued { .. } | JobStatus::Running { .. })
                )
            })
            .count()
    }

    fn running_here(&self) -> bool {
        self.count(|s| matches!(s, JobStatus::Running { .. })) > 0
    }

    async fn overview(&self) -> Value {
        json!({
            "kind": "in-process",
            "queued": self.count(|s| matches!(s, JobStatus::Queued { .. })),
            "running": self.count(|s| matches!(s, JobStatus::Running { .. })),
            "capacity": self.limits.queue,
        })
    }

    async fn metrics(&self) -> Snapshot {
        Snapshot {
            queued: self.count(|s| matches!(s, JobStatus::Queued { .. })),
            running: self.count(|s| matches!(s, JobStatus::Running { .. })),
            counters: self.tally.get(),
            workers: None,
            queue_up: None,
        }
    }
}
