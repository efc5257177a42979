//! Messages between the UI thread and its two workers (the engine, the 3D viewer), sent as
//! JSON strings through `postMessage` (a few per second at most: progress is throttled at the
//! source). Messages the UI parses (`FromWorker`, `FromViewer`) are externally tagged
//! (`{"progress": {…}}`, `"engine_loaded"`): serde parses those without buffering, which keeps
//! the UI bundle small; messages the workers parse carry a `"type"` field. Bulk data travels
//! beside them as transferred typed arrays ([`bulk`]): an image `File` to the engine, a mesh
//! and the cut-out from it, the same geometry on to the viewer, a PNG snapshot back.

use serde::{Deserialize, Serialize};

use crate::config::ModelSpec;

/// The messages that carry bulk data beside their JSON, posted as JS objects (their typed
/// arrays transferred, not copied): one encoder and one decoder, every key named once here.
/// `worker.js` and `viewer.js` read the `image` and `mesh` keys too.
pub mod bulk {
    use wasm_bindgen::JsValue;

    pub const TYPE: &str = "type";

    /// UI → engine: `{type: "image", name, file}` (a `File`).
    pub const IMAGE: &str = "image";
    pub const NAME: &str = "name";
    pub const FILE: &str = "file";

    /// Engine → UI, and (geometry only) UI → viewer: `{type: "mesh", meta: <MeshMeta JSON>,
    /// positions, normals, colors, indices, glb, obj, stl, ply}`.
    pub const MESH: &str = "mesh";
    pub const META: &str = "meta";
    pub const GEOMETRY: [&str; 4] = ["positions", "normals", "colors", "indices"];
    /// The mesh files, by extension, with the type their download is given.
    pub const FILES: [(&str, &str); 4] = [
        ("glb", "model/gltf-binary"),
        ("obj", "model/obj"),
        ("stl", "model/stl"),
        ("ply", "application/x-ply"),
    ];

    /// Engine → UI: `{type: "cutout", report: <FromWorker::Cutout JSON>, png}`.
    pub const CUTOUT: &str = "cutout";
    pub const REPORT: &str = "report";
    pub const PNG: &str = "png";

    /// Viewer → UI (written by `viewer.js`): `{type: "snapshot", width, height, png}` (a PNG
    /// `Blob`).
    pub const SNAPSHOT: &str = "snapshot";

    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum Kind {
        Image,
        Mesh,
        Cutout,
        Snapshot,
    }

    impl Kind {
        pub fn name(self) -> &'static str {
            match self {
                Kind::Image => IMAGE,
                Kind::Mesh => MESH,
                Kind::Cutout => CUTOUT,
                Kind::Snapshot => SNAPSHOT,
            }
        }
    }

    /// A new message of `kind`; fill it with [`set`].
    pub fn message(kind: Kind) -> js_sys::Object {
        let object = js_sys::Object::new();
        set(&object, TYPE, &JsValue::from_str(kind.name()));
        object
    }

    pub fn set(message: &js_sys::Object, key: &str, value: &JsValue) {
        let _ = js_sys::Reflect::set(message, &JsValue::from_str(key), value);
    }

    pub fn get(message: &JsValue, key: &str) -> JsValue {
        js_sys::Reflect::get(message, &JsValue::from_str(key)).unwrap_or(JsValue::UNDEFINED)
    }

    /// What a bulk message is; one of another type (or none) is an error naming it, never
    /// taken for a mesh.
    pub fn kind(message: &JsValue) -> Result<Kind, String> {
        let name = get(message, TYPE).as_string();
        [Kind::Image, Kind::Mesh, Kind::Cutout, Kind::Snapshot]
            .into_iter()
            .find(|k| name.as_deref() == Some(k.name()))
            .ok_or_else(|| match name {
                Some(name) => format!("an unknown bulk message (type '{name}')"),
                None => "a bulk message without a type".into(),
            })
    }
}

/// UI → worker.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ToWorker {
    /// Acquire the GPU, then load every model in order.
    Start {
        models: Vec<ModelSpec>,
        #[serde(default)]
        options: EngineOptions,
    },
    /// Load a failed model again; shards already verified are not fetched again.
    Retry { model: String },
    /// Run the image-to-3D pipeline; answered by `Result` or `Error` with the same id, or by
    /// `NotReady` while models load.
    Generate { request_id: u64 },
    /// Stop request `request_id` at its next sampler step or field chunk (the user's Stop);
    /// answered by `Stopped`. A request that is not running is left alone.
    Stop { request_id: u64 },
    /// Drop the stored model shards.
    ClearCache,
    /// Re-hash the stored shards of every model, dropping bad ones.
    VerifyCache,
    /// Destroy the GPU device as a driver reset would (for tests and support).
    SimulateDeviceLoss,
    /// Cut the current image out again at the reference's full size (after the app chose a
    /// smaller one for a slow adapter), and keep that size.
    CutoutFullSize,
    /// Load the shape model at this installed precision (`f16`, `q8`, `q4`) instead of the
    /// one loaded: the user's choice on the shape model's card.
    ChooseQuant { precision: String },
}

/// Engine settings the page passes on (from its query parameters).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct EngineOptions {
    /// Side of background removal's square input (`?background_size=`): the reference's 1024
    /// when absent; smaller is faster on weak GPUs, at some cost in edge detail.
    #[serde(default)]
    pub background_size: Option<u32>,
    /// Letterbox the image for background removal instead of stretching it (`?letterbox=1`).
    #[serde(default)]
    pub letterbox: bool,
    /// Where background removal runs (`?background_device=cpu|gpu`): by default on the CPU
    /// where the GPU is a software renderer (the CPU itself runs ISNet faster than a renderer
    /// emulating a GPU on it), else on the GPU.
    #[serde(default)]
    pub background_device: Option<ComputeDevice>,
    /// Shape generation settings (`?steps=`, `?guidance=`, `?octree_resolution=`, `?seed=`):
    /// the reference's when absent.
    #[serde(default)]
    pub steps: Option<u32>,
    #[serde(default)]
    pub guidance: Option<f32>,
    #[serde(default)]
    pub octree_resolution: Option<u32>,
    #[serde(default)]
    pub seed: Option<u64>,
    /// GPU memory the models may take, in GiB (`?gpu_memory_gib=`): WebGPU does not report
    /// it, so a model is checked against this, else 8 GiB (a software adapter: the host's).
    #[serde(default)]
    pub gpu_memory_gib: Option<f64>,
    /// The shape model's precision (`?quant=f16|q8|q4`, else the user's last choice): the
    /// smallest installed that fits the GPU when absent.
    #[serde(default)]
    pub quant: Option<String>,
    /// `quant` is the user's choice on an earlier visit, not the page's address.
    #[serde(default)]
    pub quant_remembered: bool,
    /// Debugging the recovery: hold each device rebuild this long (`?debug_gpu_rebuild_ms=`),
    /// as a slow driver reset would, so loads cut short by the loss finish meanwhile.
    #[serde(default)]
    pub debug_gpu_rebuild_ms: Option<u32>,
}

impl EngineOptions {
    /// The generation knobs asked for, brought inside the engine's ranges (a URL is forgiving:
    /// `?octree_resolution=5000` runs at the largest).
    #[cfg(feature = "worker")]
    pub fn generate_options(&self) -> orfeas_engine::pipeline::GenerateOptions {
        let defaults = orfeas_engine::pipeline::GenerateOptions::default();
        orfeas_engine::pipeline::GenerateOptions {
            steps: self.steps.map(|s| s as usize),
            guidance: self.guidance.unwrap_or(defaults.guidance),
            resolution: self
                .octree_resolution
                .map_or(defaults.resolution, |r| r as usize),
            seed: self.seed.unwrap_or(defaults.seed),
            ..defaults
        }
        .clamped()
    }

    /// The background-removal settings asked for.
    #[cfg(feature = "worker")]
    pub fn background_options(&self) -> orfeas_engine::background::Options {
        orfeas_engine::background::Options {
            size: self
                .background_size
                .map_or(orfeas_engine::models::isnet::INPUT_SIZE, |s| s as usize),
            letterbox: self.letterbox,
        }
    }

    /// Read `background_size` (clamped to 64..=2048, rounded to a multiple of 32),
    /// `letterbox`, `background_device` and the generation knobs from query parameters.
    pub fn from_params(params: &[(String, String)]) -> Self {
        let value = |key: &str| params.iter().rev().find(|(k, _)| k == key).map(|(_, v)| v);
        Self {
            background_size: value("background_size")
                .and_then(|v| v.parse::<u32>().ok())
                .map(|size| (size.clamp(64, 2048) / 32) * 32),
            letterbox: value("letterbox").is_some_and(|v| v == "1" || v == "true"),
            background_device: value("background_device").and_then(|v| match v.as_str() {
                "cpu" => Some(ComputeDevice::Cpu),
                "gpu" => Some(ComputeDevice::Gpu),
                _ => None,
            }),
            // Brought inside the engine's ranges by the worker (`GenerateOptions::clamped`).
            steps: value("steps").and_then(|v| v.parse::<u32>().ok()),
            guidance: value("guidance").and_then(|v| decimal(v)).map(|g| g as f32),
            octree_resolution: value("octree_resolution").and_then(|v| v.parse::<u32>().ok()),
            seed: value("seed").and_then(|v| v.parse::<u64>().ok()),
            gpu_memory_gib: value("gpu_memory_gib")
                .and_then(|v| decimal(v))
                .filter(|g| *g > 0.0),
            quant: value("quant").cloned(),
            quant_remembered: false,
            debug_gpu_rebuild_ms: value("debug_gpu_rebuild_ms")
                .and_then(|v| v.parse::<u32>().ok())
                .map(|ms| ms.min(60_000)),
        }
    }
}

/// burn's CPU backend in the worker, or the WebGPU device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ComputeDevice {
    Cpu,
    Gpu,
}

impl ComputeDevice {
    /// As the query parameter and the panel's `data-device` spell it.
    pub fn name(self) -> &'static str {
        match self {
            Self::Cpu => "cpu",
            Self::Gpu => "gpu",
        }
    }
}

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

/// What the engine says about a mesh it sends (the `meta` of a mesh message).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MeshMeta {
    /// Shown above the viewer, e.g. "Preview (silhouette inflated, not the model's shape)".
    pub label: String,
    /// A 2.5D preview rather than the model's output.
    pub preview: bool,
    pub vertices: usize,
    pub faces: usize,
    /// The image it came from.
    pub source: String,
    /// Time to build it in the worker.
    pub build_ms: f64,
}

/// How the viewer draws the mesh.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ViewMode {
    Shaded,
    Wireframe,
    Normals,
}

impl ViewMode {
    pub const ALL: [ViewMode; 3] = [Self::Shaded, Self::Wireframe, Self::Normals];

    pub fn name(self) -> &'static str {
        match self {
            Self::Shaded => "shaded",
            Self::Wireframe => "wireframe",
            Self::Normals => "normals",
        }
    }
}

/// UI → viewer worker (input is sent as deltas; the viewer owns the camera).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ToViewer {
    /// Drag by CSS pixels.
    Orbit {
        dx: f32,
        dy: f32,
    },
    Pan {
        dx: f32,
        dy: f32,
    },
    /// > 1 moves closer.
    Zoom {
        factor: f32,
    },
    Reset,
    Mode {
        mode: ViewMode,
    },
    /// Allow the idle turntable (on by default).
    Turntable {
        enabled: bool,
    },
    /// The canvas's CSS size times the device pixel ratio.
    Resize {
        width: u32,
        height: u32,
    },
    /// Render the current view into a PNG (answered by a `snapshot` object message).
    Snapshot,
    /// Show nothing.
    Clear,
    /// Destroy the viewer's GPU device as a driver reset would (`?debug=1`).
    SimulateDeviceLoss,
}

/// Viewer worker → UI.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FromViewer {
    Ready {
        adapter: String,
        /// Frames go straight to the canvas (else they are read back and drawn in 2D).
        #[serde(default)]
        direct: bool,
    },
    Failed {
        reason: String,
        /// The device was lost (a GPU reset): a new viewer can show the mesh again.
        #[serde(default)]
        device_lost: bool,
    },
    /// A mesh is on screen.
    Showing { vertices: usize, faces: usize },
    /// A message or mesh the viewer could not use.
    Error { message: String },
}

impl ToViewer {
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("messages always serialise")
    }
}

impl FromViewer {
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("messages always serialise")
    }
}

/// Worker → UI.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FromWorker {
    /// The engine bundle is downloading (sent by the worker's bootstrap script).
    EngineFetch {
        received: u64,
        total: Option<u64>,
    },
    /// The engine bundle is running and waits for `Start`.
    EngineLoaded,
    /// The engine bundle could not start.
    EngineFailed {
        reason: String,
    },
    /// The GPU device is ready.
    Gpu {
        info: GpuReport,
    },
    /// No usable GPU: what is missing, in words.
    GpuUnavailable {
        reason: String,
    },
    /// Loading progress of one model.
    Progress(LoadProgress),
    /// A model's status changed.
    Status {
        model: String,
        status: ModelStatusReport,
    },
    /// Something the user should know that is not an error of a request.
    Notice {
        level: NoticeLevel,
        message: String,
    },
    /// A request needs models that are not ready yet: try again after `retry_after_s`.
    NotReady {
        request_id: u64,
        retry_after_s: u32,
        message: String,
        /// The raw error behind the message (e.g. what the lost device said), shown collapsed.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        detail: Option<String>,
    },
    Result {
        request_id: u64,
        message: String,
    },
    Error {
        request_id: Option<u64>,
        message: String,
    },
    /// The request stopped where the user asked it to (`ToWorker::Stop`); `message` says at
    /// which stage.
    Stopped {
        request_id: u64,
        message: String,
    },
    /// Background removal ran once on a blank picture, so its GPU kernels are compiled before
    /// the user's picture comes (the first pass on a device costs several times a later one).
    Warmed {
        model: String,
        seconds: f64,
    },
    /// Size of the engine's wasm memory (it never shrinks, so this is its peak so far).
    Memory {
        wasm_heap_bytes: u64,
    },
    /// The outcome of `VerifyCache` / `ClearCache`.
    CacheReport {
        message: String,
    },
    /// The chosen image could not be used (not an image, too large, …).
    ImageFailed {
        name: String,
        reason: String,
    },
    /// Background removal on the current image (a finished cut-out comes as an object
    /// message instead, `{type: "cutout", report: <this JSON>, png}`).
    Cutout(CutoutReport),
    /// The shape model's installed precisions, which one is loaded and why.
    ShapeQuant(ShapeQuantReport),
    /// Where a running generation is.
    Generating {
        request_id: u64,
        stage: Stage,
        /// Seconds since the request started.
        #[serde(default)]
        elapsed_s: f64,
        /// What is left of this stage, estimated from the adapter's measured speed so far
        /// (the sampler's steps), when there is an estimate.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        left_s: Option<f64>,
    },
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

/// A plain decimal number (`7`, `-2.5`, `.75`), as query parameters carry them; exponents,
/// `inf` and `NaN` are refused. Parsed with integers so the UI bundle links no float parser.
pub fn decimal(text: &str) -> Option<f64> {
    let (negative, digits) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text.strip_prefix('+').unwrap_or(text)),
    };
    let (whole, fraction) = digits.split_once('.').unwrap_or((digits, ""));
    let all_digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    if whole.len() + fraction.len() == 0
        || whole.len() > 15
        || !all_digits(whole)
        || !all_digits(fraction)
    {
        return None;
    }
    let fraction = &fraction[..fraction.len().min(15)];
    let whole_value = if whole.is_empty() {
        0
    } else {
        whole.parse::<u64>().ok()?
    };
    let fraction_value = if fraction.is_empty() {
        0
    } else {
        fraction.parse::<u64>().ok()?
    };
    let value = whole_value as f64 + fraction_value as f64 / 10f64.powi(fraction.len() as i32);
    Some(if negative { -value } else { value })
}

/// Seconds to wait before retrying a request: the ETA when there is one, else 5, kept in
/// 1..=30 (the old studio's `retry_after` convention).
pub fn retry_after_s(eta_s: Option<f64>) -> u32 {
    match eta_s {
        Some(eta) if eta.is_finite() => (eta.ceil() as i64).clamp(1, 30) as u32,
        _ => 5,
    }
}

/// "12 s, about 20 s left" (or "12 s" without an estimate): how long long GPU work has run
/// and what is left of it, worded once for the cut-out and for generation.
pub fn time_so_far(elapsed_s: f64, left_s: Option<f64>) -> String {
    let elapsed = fixed(elapsed_s, 0);
    match left_s {
        Some(left) => format!("{elapsed} s, about {} s left", fixed(left.ceil(), 0)),
        None => format!("{elapsed} s"),
    }
}

/// `value` with `decimals` digits after the point (at most 4), rounded half away from zero, by
/// integer arithmetic: what `{:.N}` prints for the UI's figures without linking std's float
/// formatter (and its tables) into the UI bundle.
pub fn fixed(value: f64, decimals: usize) -> String {
    let decimals = decimals.min(4);
    let scale = 10_i64.pow(decimals as u32);
    if !value.is_finite() || value.abs() >= (i64::MAX / scale) as f64 {
        return if value.is_nan() {
            "NaN".into()
        } else {
            "∞".into()
        };
    }
    let scaled = (value * scale as f64).round() as i64;
    let sign = if scaled < 0 { "-" } else { "" };
    let (whole, part) = (
        scaled.unsigned_abs() / scale as u64,
        scaled.unsigned_abs() % scale as u64,
    );
    if decimals == 0 {
        format!("{sign}{whole}")
    } else {
        format!("{sign}{whole}.{part:0decimals$}")
    }
}

impl ToWorker {
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("messages always serialise")
    }
}

impl FromWorker {
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("messages always serialise")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimal_reads_what_parse_does() {
        for text in ["7", "7.5", "-2.25", ".75", "0.000001", "123456.5", "+3"] {
            assert_eq!(decimal(text), text.parse::<f64>().ok(), "{text}");
        }
        for text in [
            "",
            ".",
            "-",
            "1e3",
            "inf",
            "NaN",
            "1.2.3",
            "abc",
            "1,5",
            "9999999999999999",
        ] {
            assert_eq!(decimal(text), None, "{text}");
        }
    }

    #[test]
    fn fixed_prints_what_format_does() {
        for (value, decimals) in [
            (0.0, 1),
            (12.34, 1),
            (99.96, 1),
            (0.5, 0),
            (2.5, 0),
            (-3.26, 1),
            (88.1234, 4),
            (1e9, 0),
            (0.00049, 3),
        ] {
            let ours = fixed(value, decimals);
            // Half-way cases round away from zero here, to even in `format!`.
            if (value * 10f64.powi(decimals as i32)).fract().abs() != 0.5 {
                assert_eq!(ours, format!("{value:.decimals$}"), "{value} to {decimals}");
            }
        }
        assert_eq!(fixed(2.5, 0), "3");
        assert_eq!(fixed(-0.04, 1), "0.0");
        assert_eq!(fixed(f64::NAN, 1), "NaN");
        assert_eq!(time_so_far(12.4, Some(19.2)), "12 s, about 20 s left");
    }

    #[test]
    fn messages_round_trip_as_tagged_json() {
        let messages = vec![
            FromWorker::EngineFetch {
                received: 10,
                total: Some(20),
            },
            FromWorker::Status {
                model: "isnet".into(),
                status: ModelStatusReport::Failed {
                    reason: "shard-00002: truncated".into(),
                },
            },
            FromWorker::NotReady {
                request_id: 3,
                retry_after_s: 4,
                message: "loading".into(),
                detail: Some("device lost".into()),
            },
            FromWorker::Generating {
                request_id: 3,
                stage: Stage::Sampling { done: 2, total: 30 },
                elapsed_s: 12.5,
                left_s: Some(140.0),
            },
            FromWorker::Generating {
                request_id: 3,
                stage: Stage::Meshing,
                elapsed_s: 80.0,
                left_s: None,
            },
            FromWorker::Stopped {
                request_id: 3,
                message: "stopped while sampling: step 2 of 30, after 12.5 s".into(),
            },
        ];
        for message in messages {
            let json = message.to_json();
            assert_eq!(serde_json::from_str::<FromWorker>(&json).unwrap(), message);
        }
        let json = ToWorker::Retry {
            model: "isnet".into(),
        }
        .to_json();
        assert_eq!(json, r#"{"type":"retry","model":"isnet"}"#);
        assert_eq!(
            ToWorker::Stop { request_id: 7 }.to_json(),
            r#"{"type":"stop","request_id":7}"#
        );
    }

    #[test]
    fn the_bootstrap_scripts_messages_parse() {
        // worker.js writes these by hand.
        let fetch: FromWorker =
            serde_json::from_str(r#"{"engine_fetch":{"received":5,"total":null}}"#).unwrap();
        assert_eq!(
            fetch,
            FromWorker::EngineFetch {
                received: 5,
                total: None
            }
        );
        let failed: FromWorker =
            serde_json::from_str(r#"{"engine_failed":{"reason":"HTTP 404"}}"#).unwrap();
        assert!(matches!(failed, FromWorker::EngineFailed { .. }));
        let loaded: FromWorker = serde_json::from_str(r#""engine_loaded""#).unwrap();
        assert_eq!(loaded, FromWorker::EngineLoaded);
        // viewer.js writes these.
        let failed: FromViewer = serde_json::from_str(r#"{"failed":{"reason":"x"}}"#).unwrap();
        assert!(matches!(failed, FromViewer::Failed { .. }));
        let error: FromViewer = serde_json::from_str(r#"{"error":{"message":"x"}}"#).unwrap();
        assert!(matches!(error, FromViewer::Error { .. }));
    }

    #[test]
    fn viewer_messages_are_tagged_json() {
        assert_eq!(
            ToViewer::Mode {
                mode: ViewMode::Wireframe
            }
            .to_json(),
            r#"{"type":"mode","mode":"wireframe"}"#
        );
        let json = FromViewer::Showing {
            vertices: 3,
            faces: 1,
        }
        .to_json();
        assert_eq!(
            serde_json::from_str::<FromViewer>(&json).unwrap(),
            FromViewer::Showing {
                vertices: 3,
                faces: 1
            }
        );
        for mode in ViewMode::ALL {
            let json = serde_json::to_string(&mode).unwrap();
            assert_eq!(json, format!("\"{}\"", mode.name()));
        }
    }

    #[test]
    fn engine_options_come_from_the_query() {
        let params = |pairs: &[(&str, &str)]| -> Vec<(String, String)> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        assert_eq!(EngineOptions::from_params(&[]), EngineOptions::default());
        let options =
            EngineOptions::from_params(&params(&[("background_size", "250"), ("letterbox", "1")]));
        assert_eq!(options.background_size, Some(224));
        assert!(options.letterbox);
        let tiny = EngineOptions::from_params(&params(&[("background_size", "3")]));
        assert_eq!(tiny.background_size, Some(64));
        let bad = EngineOptions::from_params(&params(&[("background_size", "big")]));
        assert_eq!(bad.background_size, None);
        for device in [ComputeDevice::Cpu, ComputeDevice::Gpu] {
            let chosen =
                EngineOptions::from_params(&params(&[("background_device", device.name())]));
            assert_eq!(chosen.background_device, Some(device));
        }
        let unknown = EngineOptions::from_params(&params(&[("background_device", "tpu")]));
        assert_eq!(unknown.background_device, None);
        let shape = EngineOptions::from_params(&params(&[
            ("steps", "4"),
            ("octree_resolution", "5000"),
            ("seed", "9"),
            ("guidance", "NaN"),
        ]));
        assert_eq!(
            (
                shape.steps,
                shape.octree_resolution,
                shape.seed,
                shape.guidance
            ),
            (Some(4), Some(5000), Some(9), None)
        );
        // An old UI's Start without options still parses.
        let start: ToWorker = serde_json::from_str(r#"{"type":"start","models":[]}"#).unwrap();
        assert_eq!(
            start,
            ToWorker::Start {
                models: vec![],
                options: EngineOptions::default()
            }
        );
        let cutout = FromWorker::Cutout(CutoutReport {
            name: "a.png".into(),
            state: CutoutState::Ready,
            message: "done".into(),
            detail: None,
            progress: Some(0.5),
            reduced: true,
            device: Some(ComputeDevice::Cpu),
        });
        assert_eq!(
            serde_json::from_str::<FromWorker>(&cutout.to_json()).unwrap(),
            cutout
        );
    }

    #[test]
    fn the_download_types_are_the_engines() {
        // The UI bundle does not link the engine: its list of mesh files is kept equal here.
        use orfeas_engine::mesh::export::Format;
        let engine: Vec<(&str, &str)> = Format::ALL
            .iter()
            .map(|f| (f.extension(), f.content_type()))
            .collect();
        assert_eq!(bulk::FILES.to_vec(), engine);
    }

    #[test]
    fn retry_after_follows_the_eta_within_bounds() {
        assert_eq!(retry_after_s(None), 5);
        assert_eq!(retry_after_s(Some(0.2)), 1);
        assert_eq!(retry_after_s(Some(7.1)), 8);
        assert_eq!(retry_after_s(Some(500.0)), 30);
        assert_eq!(retry_after_s(Some(f64::NAN)), 5);
    }
}
