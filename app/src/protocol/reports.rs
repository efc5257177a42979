//! What the engine worker reports and the UI shows: the cut-out, each model's status, the
//! GPU, the shape model's precisions.

use serde::{Deserialize, Serialize};

use super::ComputeDevice;

/// Where the cut-out of the current image stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CutoutState {
    /// Background removal is still loading; the cut-out follows once it is ready.
    Waiting,
    Running,
    Ready,
    /// The image already had transparency: used as it is, as the reference does.
    Kept,
    Failed,
}

impl CutoutState {
    /// The panel's `data-state`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Waiting => "waiting",
            Self::Running => "running",
            Self::Ready => "ready",
            Self::Kept => "kept",
            Self::Failed => "failed",
        }
    }
}

/// The cut-out's state for the image `name` (with a `png` beside it when ready or kept: see
/// [`crate::protocol`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CutoutReport {
    pub name: String,
    pub state: CutoutState,
    pub message: String,
    /// The raw error behind the message, shown collapsed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// While running: the share of the network's work done (0..1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<f64>,
    /// It ran below the reference's size because the adapter is slow: the full size can be
    /// asked for ([`ToWorker::CutoutFullSize`]).
    #[serde(default)]
    pub reduced: bool,
    /// Where ISNet ran (or runs), once it does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<ComputeDevice>,
}

/// A shape model installed at several precisions (sibling folders `<name>`, `<name>-q8`,
/// `<name>-q4`, each a set of three parts): what each costs and whether it fits, and which one
/// the worker loads.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShapeQuantReport {
    /// The shape model's name (its folders' without the precision suffix).
    pub model: String,
    /// The folder loaded: its parts are the models `<chosen>/conditioner` and so on.
    pub chosen: String,
    /// Why that one, in words ("the smallest installed that fits this GPU", "your choice").
    pub because: String,
    pub options: Vec<QuantOption>,
    /// The views its image encoder takes besides the front (`left`, `back`, `right` for a
    /// 2mv model; none for a single-image one): the app offers a drop zone for each.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub views: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QuantOption {
    pub folder: String,
    /// `f16`, `q8` or `q4`, from its indexes.
    pub precision: String,
    /// Its download: the three sets' shard files.
    pub bytes: u64,
    /// Why it cannot run on this GPU (the fit check), when it cannot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refused: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NoticeLevel {
    Info,
    Warning,
}

/// A model's lifecycle as the UI shows it (`data-status`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ModelStatusReport {
    Waiting,
    Loading,
    Ready {
        tensors: usize,
        from_cache: bool,
        /// How the set stores its weights (`f16`, `q8`, `q4`), from its index.
        #[serde(default)]
        precision: String,
    },
    Failed {
        reason: String,
    },
    /// Nothing is installed at the model's URL (its index is not there): not an error, the
    /// app works without it.
    NotInstalled {
        url: String,
    },
    /// Another precision of the same model (`instead`, its id) is used in its place: not
    /// loaded, not shown.
    Standby {
        instead: String,
    },
}

impl ModelStatusReport {
    /// The value of the panel's `data-status` attribute.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Waiting | Self::Loading => "loading",
            Self::Ready { .. } => "ready",
            Self::Failed { .. } => "failed",
            Self::NotInstalled { .. } => "not-installed",
            Self::Standby { .. } => "standby",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GpuReport {
    pub adapter: String,
    pub backend: String,
    pub software: bool,
    pub shader_f16: bool,
    pub max_storage_buffer_binding_size: u64,
    pub max_buffer_size: u64,
    /// The dtype the models run in: "f16" with `shader-f16`, else "f32".
    pub dtype: String,
    /// How the shape model's attention runs here; `None` until the first generation checks
    /// the fused kernel on this device.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attention: Option<AttentionPath>,
}

/// The fused attention kernel (checked on the device against the host), or attention over
/// slices of queries and why.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AttentionPath {
    Fused,
    Sliced { reason: String },
}

/// The engine's reports the UI shows as they are: a job's stage, a model's load.
pub use orfeas_wire::{LoadProgress, Phase, Stage};
