//! A model's load: the phase it is in and how far it got, what the progress bar, the CLI and
//! `/api/health` show.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    /// Bytes are streaming in (tensors are uploaded as they complete).
    Fetch,
    /// A shard's bytes are in; its size and sha256 are being checked.
    Verify,
    /// Waiting for the device to finish the queued uploads.
    Upload,
    /// Weights are in; the model runs once to compile its kernels.
    Warmup,
    Ready,
    Failed,
}

impl std::fmt::Display for Phase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl Phase {
    /// The lowercase name, as serialised and shown.
    pub fn name(self) -> &'static str {
        match self {
            Phase::Fetch => "fetch",
            Phase::Verify => "verify",
            Phase::Upload => "upload",
            Phase::Warmup => "warmup",
            Phase::Ready => "ready",
            Phase::Failed => "failed",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoadProgress {
    pub model: String,
    pub phase: Phase,
    pub bytes_done: u64,
    pub bytes_total: u64,
    pub shards_done: usize,
    pub shards_total: usize,
    pub tensors_done: usize,
    pub tensors_total: usize,
    /// Smoothed throughput of this session's transfer.
    pub bytes_per_sec: f64,
    pub eta_s: Option<f64>,
    pub elapsed_s: f64,
    pub from_cache: bool,
}

impl LoadProgress {
    pub fn new(model: &str, bytes_total: u64, shards_total: usize, tensors_total: usize) -> Self {
        Self {
            model: model.to_string(),
            phase: Phase::Fetch,
            bytes_done: 0,
            bytes_total,
            shards_done: 0,
            shards_total,
            tensors_done: 0,
            tensors_total,
            bytes_per_sec: 0.0,
            eta_s: None,
            elapsed_s: 0.0,
            from_cache: false,
        }
    }

    /// 0..=1, by bytes.
    pub fn fraction(&self) -> f64 {
        if self.bytes_total == 0 {
            return if self.phase == Phase::Ready { 1.0 } else { 0.0 };
        }
        (self.bytes_done as f64 / self.bytes_total as f64).clamp(0.0, 1.0)
    }
}
