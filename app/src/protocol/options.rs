//! The engine's settings the page passes on from its query parameters.

use serde::{Deserialize, Serialize};

use crate::text::decimal;

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
    /// The finished mesh's face budget (`?faces=` or the official API's `?face_count=`; 0
    /// keeps every face): the detail control's first value.
    #[serde(default)]
    pub faces: Option<u32>,
    /// Decode the shape as the official `enable_flashvdm()` does (`?flashvdm=1`).
    #[serde(default)]
    pub flashvdm: bool,
    /// A grey mesh, without vertex colours from the photo (`?colour=0`): the colour switch's
    /// first state.
    #[serde(default)]
    pub grey: bool,
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
            faces: self.faces.map_or(defaults.faces, |f| f as usize),
            flashvdm: self.flashvdm,
            colour: !self.grey,
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
            faces: value("faces")
                .or_else(|| value("face_count"))
                .and_then(|v| v.parse::<u32>().ok())
                .map(clamp_faces),
            flashvdm: value("flashvdm").is_some_and(|v| v == "1" || v == "true"),
            grey: value("colour")
                .or_else(|| value("color"))
                .is_some_and(|v| v == "0" || v == "false"),
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

/// The official clean-up's face budget (`face_count`), the detail control's default.
pub const DEFAULT_FACES: u32 = 40_000;
/// A budget other than 0 (every face): the official Gradio app's slider.
pub const FACES: std::ops::RangeInclusive<u32> = 100..=1_000_000;

/// The detail control's presets: a name and its face budget, from low-poly to every face.
pub const DETAIL_PRESETS: [(&str, u32); 4] = [
    ("Low-poly", 2_000),
    ("Game", 10_000),
    ("Standard", DEFAULT_FACES),
    ("Full", 0),
];

/// A face budget brought inside [`FACES`] (0 stays 0: every face).
pub fn clamp_faces(faces: u32) -> u32 {
    match faces {
        0 => 0,
        f => f.clamp(*FACES.start(), *FACES.end()),
    }
}

/// The preset a budget is, if it is one.
pub fn detail_preset(faces: u32) -> Option<&'static str> {
    DETAIL_PRESETS
        .iter()
        .find(|(_, f)| *f == faces)
        .map(|(name, _)| *name)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{CutoutReport, CutoutState, FromWorker, ToWorker};
    use orfeas_engine::pipeline::{self, GenerateOptions};

    /// The UI bundle has no engine: its copy of the face budget's default, range and presets
    /// must be the engine's.
    #[test]
    fn the_detail_presets_are_budgets_the_engine_takes() {
        assert_eq!(DEFAULT_FACES as usize, pipeline::DEFAULT_FACES);
        assert_eq!(
            (*FACES.start() as usize, *FACES.end() as usize),
            (*pipeline::FACES.start(), *pipeline::FACES.end())
        );
        for (name, faces) in DETAIL_PRESETS {
            let options = GenerateOptions {
                faces: faces as usize,
                ..Default::default()
            };
            assert_eq!(options.validate(), Ok(()), "{name}");
            assert_eq!(detail_preset(faces), Some(name));
        }
        for asked in [1, 99, 100, 5_000, 1_000_000, 1_000_001, u32::MAX] {
            let engine = GenerateOptions {
                faces: asked as usize,
                ..Default::default()
            }
            .clamped()
            .faces;
            assert_eq!(clamp_faces(asked) as usize, engine, "{asked}");
        }
        assert_eq!(detail_preset(12_345), None);
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
        let faces = |pairs: &[(&str, &str)]| EngineOptions::from_params(&params(pairs)).faces;
        assert_eq!(faces(&[("faces", "2000")]), Some(2000));
        assert_eq!(faces(&[("face_count", "12")]), Some(100));
        assert_eq!(faces(&[("faces", "0")]), Some(0));
        assert_eq!(faces(&[("faces", "5000000")]), Some(1_000_000));
        assert_eq!(faces(&[("faces", "many")]), None);
        // An old UI's Generate without a detail still parses.
        let generate: ToWorker =
            serde_json::from_str(r#"{"type":"generate","request_id":4}"#).unwrap();
        assert_eq!(
            generate,
            ToWorker::Generate {
                request_id: 4,
                faces: None,
                colour: None
            }
        );
        let grey = |pairs: &[(&str, &str)]| EngineOptions::from_params(&params(pairs)).grey;
        assert!(grey(&[("colour", "0")]) && grey(&[("color", "false")]));
        assert!(!grey(&[]) && !grey(&[("colour", "1")]));
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
}
