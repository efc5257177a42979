//! Generation jobs: a bounded queue in front of one runner (the GPU does one job at a time),
//! job status for polling, and the result file.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::sync::{mpsc, watch};

/// What a generation request asks for (the original studio's parameters).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GenerateParams {
    /// `None`: the model's own default (5 for turbo checkpoints, else 30).
    pub steps: Option<u32>,
    pub guidance: f32,
    pub octree_resolution: u32,
    pub seed: u64,
    pub remove_background: bool,
    pub format: MeshFormat,
}

impl Default for GenerateParams {
    fn default() -> Self {
        Self {
            steps: None,
            guidance: 5.0,
            octree_resolution: 256,
            seed: 1234,
            remove_background: true,
            format: MeshFormat::Glb,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MeshFormat {
    Glb,
    Obj,
    Stl,
}

impl MeshFormat {
    pub fn parse(text: &str) -> Option<Self> {
        match text.to_ascii_lowercase().as_str() {
            "glb" => Some(Self::Glb),
            "obj" => Some(Self::Obj),
            "stl" => Some(Self::Stl),
            _ => None,
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Self::Glb => "model/gltf-binary",
            Self::Obj => "model/obj",
            Self::Stl => "model/stl",
        }
    }

    pub fn extension(self) -> &'static str {
        match self {
            Self::Glb => "glb",
            Self::Obj => "obj",
            Self::Stl => "stl",
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
    pub format: MeshFormat,
    pub bytes: Vec<u8>,
}

/// Turns an image into a mesh file. One implementation runs the models; tests use others.
#[async_trait::async_trait]
pub trait Pipeline: Send + Sync {
    /// A model `input` needs that is not there, as `(model, reason)`; checked before queueing.
    fn unavailable(&self, _input: &JobInput) -> Option<(String, String)> {
        None
    }

    /// `step(done, total)` reports progress (sampling steps).
    async fn run(
        &self,
        input: JobInput,
        step: &(dyn Fn(u32, u32) + Send + Sync),
    ) -> Result<MeshFile, String>;
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum JobStatus {
    Queued { position: usize },
    Running { step: u32, steps: u32 },
    Done,
    Failed { error: String },
    Cancelled,
}

impl JobStatus {
    pub fn finished(&self) -> bool {
        matches!(self, Self::Done | Self::Failed { .. } | Self::Cancelled)
    }
}

struct JobEntry {
    status: watch::Sender<JobStatus>,
    result: Option<MeshFile>,
    format: MeshFormat,
}

struct Queued {
    id: String,
    input: JobInput,
}

/// The queue is full: try again later.
#[derive(Debug)]
pub struct QueueFull;

pub struct Jobs {
    pipeline: Arc<dyn Pipeline>,
    sender: mpsc::Sender<Queued>,
    entries: Mutex<HashMap<String, JobEntry>>,
    order: Mutex<Vec<String>>,
    next: AtomicU64,
}

impl Jobs {
    /// A queue holding at most `capacity` waiting jobs, drained by one runner task.
    pub fn start(capacity: usize, pipeline: Arc<dyn Pipeline>) -> Arc<Self> {
        let (sender, receiver) = mpsc::channel(capacity.max(1));
        let jobs = Arc::new(Self {
            pipeline: pipeline.clone(),
            sender,
            entries: Mutex::new(HashMap::new()),
            order: Mutex::new(Vec::new()),
            next: AtomicU64::new(1),
        });
        tokio::spawn(run(jobs.clone(), receiver, pipeline));
        jobs
    }

    /// What the pipeline would miss for `input` (see [`Pipeline::unavailable`]).
    pub fn unavailable(&self, input: &JobInput) -> Option<(String, String)> {
        self.pipeline.unavailable(input)
    }

    /// Queue a job, or refuse at once when the queue is full.
    pub fn submit(&self, input: JobInput) -> Result<String, QueueFull> {
        let id = format!("job-{}", self.next.fetch_add(1, Ordering::Relaxed));
        let format = input.params.format;
        let permit = self.sender.try_reserve().map_err(|_| QueueFull)?;
        let (status, _) = watch::channel(JobStatus::Queued { position: 0 });
        self.entries.lock().expect("jobs lock").insert(
            id.clone(),
            JobEntry {
                status,
                result: None,
                format,
            },
        );
        self.order.lock().expect("jobs lock").push(id.clone());
        permit.send(Queued {
            id: id.clone(),
            input,
        });
        Ok(id)
    }

    pub fn status(&self, id: &str) -> Option<JobStatus> {
        let entries = self.entries.lock().expect("jobs lock");
        let status = entries.get(id)?.status.borrow().clone();
        Some(match status {
            JobStatus::Queued { .. } => {
                let order = self.order.lock().expect("jobs lock");
                let position = order
                    .iter()
                    .filter(|other| {
                        entries
                            .get(*other)
                            .is_some_and(|e| matches!(*e.status.borrow(), JobStatus::Queued { .. }))
                    })
                    .position(|other| other == id)
                    .unwrap_or(0);
                JobStatus::Queued { position }
            }
            other => other,
        })
    }

    pub fn describe(&self, id: &str) -> Option<Value> {
        let status = self.status(id)?;
        let mut value = serde_json::to_value(&status).unwrap_or(Value::Null);
        value["id"] = json!(id);
        if status == JobStatus::Done {
            value["result_url"] = json!(format!("/api/jobs/{id}/result"));
        }
        Some(value)
    }

    pub fn result(&self, id: &str) -> Option<Result<MeshFile, JobStatus>> {
        let entries = self.entries.lock().expect("jobs lock");
        let entry = entries.get(id)?;
        Some(match &entry.result {
            Some(file) => Ok(file.clone()),
            None => Err(entry.status.borrow().clone()),
        })
    }

    /// Wait until job `id` has finished (for `?wait=true`).
    pub async fn wait(&self, id: &str) -> Option<JobStatus> {
        let mut receiver = self
            .entries
            .lock()
            .expect("jobs lock")
            .get(id)?
            .status
            .subscribe();
        let status = receiver.wait_for(JobStatus::finished).await.ok()?.clone();
        Some(status)
    }

    /// Mark every queued job cancelled (shutdown); the running one finishes.
    pub fn cancel_queued(&self) -> usize {
        let entries = self.entries.lock().expect("jobs lock");
        let mut cancelled = 0;
        for entry in entries.values() {
            if matches!(*entry.status.borrow(), JobStatus::Queued { .. }) {
                entry.status.send_replace(JobStatus::Cancelled);
                cancelled += 1;
            }
        }
        cancelled
    }

    pub fn running(&self) -> bool {
        let entries = self.entries.lock().expect("jobs lock");
        entries
            .values()
            .any(|e| matches!(*e.status.borrow(), JobStatus::Running { .. }))
    }

    pub fn format_of(&self, id: &str) -> Option<MeshFormat> {
        self.entries
            .lock()
            .expect("jobs lock")
            .get(id)
            .map(|e| e.format)
    }

    fn set(&self, id: &str, status: JobStatus) {
        if let Some(entry) = self.entries.lock().expect("jobs lock").get(id) {
            entry.status.send_replace(status);
        }
    }
}

async fn run(jobs: Arc<Jobs>, mut receiver: mpsc::Receiver<Queued>, pipeline: Arc<dyn Pipeline>) {
    while let Some(Queued { id, input }) = receiver.recv().await {
        if jobs.status(&id) == Some(JobStatus::Cancelled) {
            continue;
        }
        let steps = input.params.steps.unwrap_or(0);
        jobs.set(&id, JobStatus::Running { step: 0, steps });
        let progress_jobs = jobs.clone();
        let progress_id = id.clone();
        let step = move |done: u32, total: u32| {
            progress_jobs.set(
                &progress_id,
                JobStatus::Running {
                    step: done,
                    steps: total,
                },
            );
        };
        let outcome = pipeline.run(input, &step).await;
        match outcome {
            Ok(file) => {
                if let Some(entry) = jobs.entries.lock().expect("jobs lock").get_mut(&id) {
                    entry.result = Some(file);
                }
                jobs.set(&id, JobStatus::Done);
            }
            Err(error) => {
                tracing::warn!("{id} failed: {error}");
                jobs.set(&id, JobStatus::Failed { error });
            }
        }
    }
}
