//! The job records: one per job in the KV bucket, changed only by compare-and-set; the copy
//! every instance keeps by watching the bucket (statuses, waits, queue places and the fleet's
//! counters come from it); and the front end's side — submitting, describing, fetching the
//! result, cancelling.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, kv};
use bytes::Bytes;
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::io::AsyncReadExt;

use super::super::{
    Cause, Format, JobInput, JobStatus, Lookup, MeshFile, Reservation, StopReason, SubmitError,
    describe_status, lock, new_id,
};
use super::store::{Handles, JobMessage, delete_inputs, encode_image, view_key};
use super::{CAS_TRIES, FleetQueue, age, now_ms};

/// A job's record in the KV bucket: what every instance answers from.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct Record {
    pub(super) status: JobStatus,
    pub(super) client: IpAddr,
    pub(super) format: Format,
    pub(super) steps: u32,
    pub(super) submitted_ms: u64,
    /// The job message's stream sequence (to take a cancelled job out of the queue).
    #[serde(default)]
    pub(super) seq: Option<u64>,
    #[serde(default)]
    pub(super) worker: Option<String>,
    #[serde(default)]
    pub(super) attempt: u32,
    #[serde(default)]
    pub(super) started_ms: Option<u64>,
    #[serde(default)]
    pub(super) heartbeat_ms: Option<u64>,
    /// `DELETE` asked while it ran: the worker running it stops at its next step.
    #[serde(default)]
    pub(super) cancel: bool,
    #[serde(default)]
    pub(super) finished_ms: Option<u64>,
    #[serde(default)]
    pub(super) notes: Vec<String>,
}

impl Record {
    /// Queued, and not yet past the queue's keep (`--keep-results-s`): a job that still
    /// counts in the queue.
    pub(super) fn waiting(&self, keep: Duration) -> bool {
        matches!(self.status, JobStatus::Queued { .. }) && age(Some(self.submitted_ms)) <= keep
    }
}

impl FleetQueue {
    /// Keep the mirror of the job records, from the bucket's history on, until the end.
    pub(super) async fn watch_records(queue: Arc<Self>) {
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

    pub(super) fn apply(&self, entry: kv::Entry) {
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
    pub(super) fn remember(&self, id: &str, revision: u64, record: Record) {
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
    pub(super) async fn update(
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
    pub(super) async fn update_patiently(
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
    pub(super) async fn record(&self, id: &str) -> Option<Record> {
        let known = lock(&self.mirror).get(id).map(|(_, r)| r.clone());
        if known.as_ref().is_some_and(|r| r.status.finished()) || !self.connected() {
            return known;
        }
        let Some(handles) = self.handles.get() else {
            return known;
        };
        let fresh = tokio::time::timeout(Duration::from_secs(2), self.record_fresh(handles, id));
        match fresh.await {
            Ok(Ok(record)) => record,
            _ => known,
        }
    }

    /// The record of `id` as the bucket has it now: `None` when there is none (expired,
    /// deleted or unreadable), an error when the bucket cannot be asked.
    pub(super) async fn record_fresh(
        &self,
        handles: &Handles,
        id: &str,
    ) -> Result<Option<Record>, String> {
        let entry = handles
            .jobs
            .entry(id)
            .await
            .map_err(|e| format!("reading job {id}: {e}"))?;
        let Some(entry) = entry.filter(|e| e.operation == kv::Operation::Put) else {
            return Ok(None);
        };
        let Ok(record) = serde_json::from_slice::<Record>(&entry.value) else {
            tracing::warn!("job record {id} is not one");
            return Ok(None);
        };
        self.remember(id, entry.revision, record.clone());
        Ok(Some(record))
    }

    /// The status the API shows for `record`: a finished job past its keep is gone; a job
    /// that waited past it expired in the queue; a queued one has its place.
    pub(super) fn status_of(&self, id: &str, record: &Record) -> Lookup<JobStatus> {
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
                    r.waiting(keep) && (r.submitted_ms, other.as_str()) < (record.submitted_ms, id)
                })
                .count();
            return Lookup::Found(JobStatus::Queued { position });
        }
        Lookup::Found(record.status.clone())
    }

    pub(super) fn counts(&self) -> (usize, usize) {
        let keep = self.limits.retain_for;
        let mirror = lock(&self.mirror);
        let queued = mirror.values().filter(|(_, r)| r.waiting(keep)).count();
        let running = mirror
            .values()
            .filter(|(_, r)| matches!(r.status, JobStatus::Running { .. }))
            .count();
        (queued, running)
    }

    /// Write a final status, unless the record is already final.
    pub(super) async fn settle(&self, id: &str, status: JobStatus) {
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

    pub(super) async fn submit_job(
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
        for (view, picture) in &input.views {
            let stored = handles
                .inputs
                .put(
                    view_key(&id, view.name()).as_str(),
                    &mut encode_image(picture).as_slice(),
                )
                .await;
            if let Err(e) = stored {
                delete_inputs(handles, &id).await;
                return Err(unreachable("storing a view", &e));
            }
        }
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
                delete_inputs(handles, &id).await;
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
            views: input
                .views
                .iter()
                .map(|(view, _)| view.name().to_string())
                .collect(),
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
                delete_inputs(handles, &id).await;
                lock(&self.mirror).remove(&id);
                Err(unreachable("queueing the job", &e))
            }
        }
    }

    pub(super) async fn describe_job(&self, id: &str) -> Lookup<Value> {
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

    pub(super) async fn result_file(&self, id: &str) -> Lookup<Result<MeshFile, JobStatus>> {
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

    pub(super) async fn cancel_job(
        &self,
        id: &str,
        reason: StopReason,
    ) -> Result<Lookup<JobStatus>, SubmitError> {
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
                    delete_inputs(handles, id).await;
                }
                Ok(Lookup::Found(was))
            }
            Ok(None) => Ok(Lookup::Found(was)),
            Err(error) => Err(SubmitError::Unreachable(format!(
                "the job could not be cancelled now: {error}"
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
