//! Messages between the UI thread and its two workers (the engine, the 3D viewer), sent as
//! JSON strings through `postMessage` (a few per second at most: progress is throttled at the
//! source). Messages the UI parses (`FromWorker`, `FromViewer`) are externally tagged
//! (`{"progress": {…}}`, `"engine_loaded"`): serde parses those without buffering, which keeps
//! the UI bundle small; messages the workers parse carry a `"type"` field. Bulk data travels
//! beside them as transferred typed arrays ([`bulk`]): an image `File` to the engine, a mesh
//! and the cut-out from it, the same geometry on to the viewer, a PNG snapshot back.
//!
//! By concern: [`bulk`] (the data beside the JSON), [`options`] (the page's engine settings),
//! [`reports`] (what the UI shows of the engine), [`viewer`] (the 3D viewer's messages); the
//! two message enums of the engine worker are here.

use serde::{Deserialize, Serialize};

use crate::config::ModelSpec;

pub mod bulk;
mod options;
mod reports;
mod viewer;

pub use options::*;
pub use reports::*;
pub use viewer::*;

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
    /// `NotReady` while models load. `faces`: the user's detail (the finished mesh's face
    /// budget, 0 for every face); absent, the page's `?faces=` or the reference's.
    Generate {
        request_id: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        faces: Option<u32>,
        /// The colour switch: vertex colours from the photo or a grey mesh; absent, the
        /// page's `?colour=`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        colour: Option<bool>,
    },
    /// Forget the picture of `view` (`left`, `back`, `right`): the next Generate goes without
    /// it.
    DropView { view: String },
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
}
