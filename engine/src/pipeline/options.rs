//! The knobs of one generation: their defaults (the original studio's) and their ranges, in
//! one place. The CLI's flags, the server's request parameters and the app's URL parameters
//! all read them from here.

use std::ops::RangeInclusive;

use serde::{Deserialize, Serialize};

use crate::volume::Refinement;

/// The official demos' step counts: 30 with the flow-matching ladder, 5 for turbo.
pub const DEFAULT_STEPS: usize = 30;
pub const TURBO_STEPS: usize = 5;
pub const DEFAULT_GUIDANCE: f32 = 5.0;
pub const DEFAULT_OCTREE_RESOLUTION: usize = 256;
pub const DEFAULT_SEED: u64 = 1234;
/// Field queries per decoder call (the official `num_chunks`).
pub const DEFAULT_CHUNK: usize = 8000;
/// The official clean-up's face budget (`FaceReducer(max_facenum=40000)`, the API's
/// `face_count`).
pub const DEFAULT_FACES: usize = crate::mesh::cleanup::MAX_FACES;

/// What a request may ask for. A server may narrow steps and octree further
/// (`--max-steps`, `--max-octree`).
pub const STEPS: RangeInclusive<usize> = 1..=200;
pub const GUIDANCE: RangeInclusive<f32> = 0.0..=50.0;
pub const OCTREE_RESOLUTION: RangeInclusive<usize> = 16..=1024;
/// A face budget other than 0 (every face): the official Gradio app's slider.
pub const FACES: RangeInclusive<usize> = 100..=1_000_000;

/// Knobs of one generation (the original studio's parameters; its defaults).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct GenerateOptions {
    /// Sampler steps; `None` takes the model's own (`ShapeModel::default_steps`: 5 for turbo, else 30).
    pub steps: Option<usize>,
    pub guidance: f32,
    /// Octree resolution: the grid has `resolution + 1` points per axis.
    pub resolution: usize,
    pub seed: u64,
    /// Field queries per decoder call (the official `num_chunks`).
    pub chunk: usize,
    /// Query every grid point (as the official decoder) instead of coarse-to-fine.
    pub dense: bool,
    /// Decode as the official `enable_flashvdm()` does (levels, and each group of queries
    /// attending to the latents it draws most) instead of coarse-to-fine.
    pub flashvdm: bool,
    /// Fine cells per coarse cell for coarse-to-fine decoding; 0 picks `R / 64` (1 to 4), so
    /// the coarse grid always has at least 64 cells a side and features smaller than a coarse
    /// cell are rare.
    pub coarse_stride: usize,
    /// Faces of the finished mesh (the official `face_count`): the clean-up decimates to this
    /// many, or stops above it where fewer would open a closed surface; 0 keeps every face.
    pub faces: usize,
    /// Vertex colours from the cut-out photos (on by default; the files carry them where the
    /// format can: GLB, OBJ, PLY).
    pub colour: bool,
}

impl GenerateOptions {
    /// Every knob inside its range, or the first one that is not, named, with its range.
    pub fn validate(&self) -> Result<(), String> {
        if let Some(steps) = self.steps
            && !STEPS.contains(&steps)
        {
            return Err(out_of_range("steps", STEPS, steps));
        }
        if !GUIDANCE.contains(&self.guidance) {
            return Err(out_of_range("guidance", GUIDANCE, self.guidance));
        }
        if !OCTREE_RESOLUTION.contains(&self.resolution) {
            return Err(out_of_range(
                "octree_resolution",
                OCTREE_RESOLUTION,
                self.resolution,
            ));
        }
        if self.chunk == 0 {
            return Err("chunk must be at least 1".into());
        }
        if self.dense && self.flashvdm {
            return Err("dense and flashvdm decoding exclude each other: choose one".into());
        }
        if self.faces != 0 && !FACES.contains(&self.faces) {
            return Err(format!(
                "{} (or 0 for every face)",
                out_of_range("face_count", FACES, self.faces)
            ));
        }
        Ok(())
    }

    /// The same knobs brought inside their ranges (for forgiving inputs such as a URL).
    pub fn clamped(mut self) -> Self {
        self.steps = self.steps.map(|s| s.clamp(*STEPS.start(), *STEPS.end()));
        self.guidance = if self.guidance.is_finite() {
            self.guidance.clamp(*GUIDANCE.start(), *GUIDANCE.end())
        } else {
            DEFAULT_GUIDANCE
        };
        self.resolution = self
            .resolution
            .clamp(*OCTREE_RESOLUTION.start(), *OCTREE_RESOLUTION.end());
        self.chunk = self.chunk.max(1);
        if self.faces != 0 {
            self.faces = self.faces.clamp(*FACES.start(), *FACES.end());
        }
        self
    }

    pub fn refinement(&self) -> Refinement {
        let stride = match self.coarse_stride {
            0 => (self.resolution / 64).clamp(1, 4),
            s => s,
        };
        Refinement {
            stride,
            ..Refinement::default()
        }
    }
}

/// "steps must be 1–200, got 0".
pub fn out_of_range<T: std::fmt::Display>(name: &str, range: RangeInclusive<T>, got: T) -> String {
    format!(
        "{name} must be {}–{}, got {got}",
        range.start(),
        range.end()
    )
}

impl Default for GenerateOptions {
    fn default() -> Self {
        Self {
            steps: None,
            guidance: DEFAULT_GUIDANCE,
            resolution: DEFAULT_OCTREE_RESOLUTION,
            seed: DEFAULT_SEED,
            chunk: DEFAULT_CHUNK,
            dense: false,
            flashvdm: false,
            coarse_stride: 0,
            faces: DEFAULT_FACES,
            colour: true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_defaults_are_valid_and_each_range_is_enforced_by_name() {
        assert_eq!(GenerateOptions::default().validate(), Ok(()));
        let bad = [
            (
                GenerateOptions {
                    steps: Some(0),
                    ..Default::default()
                },
                "steps must be 1–200, got 0",
            ),
            (
                GenerateOptions {
                    steps: Some(201),
                    ..Default::default()
                },
                "steps must be 1–200, got 201",
            ),
            (
                GenerateOptions {
                    guidance: -0.5,
                    ..Default::default()
                },
                "guidance must be 0–50, got -0.5",
            ),
            (
                GenerateOptions {
                    guidance: f32::NAN,
                    ..Default::default()
                },
                "guidance must be 0–50, got NaN",
            ),
            (
                GenerateOptions {
                    resolution: 15,
                    ..Default::default()
                },
                "octree_resolution must be 16–1024, got 15",
            ),
            (
                GenerateOptions {
                    resolution: 1025,
                    ..Default::default()
                },
                "octree_resolution must be 16–1024, got 1025",
            ),
            (
                GenerateOptions {
                    faces: 99,
                    ..Default::default()
                },
                "face_count must be 100–1000000, got 99 (or 0 for every face)",
            ),
            (
                GenerateOptions {
                    faces: 1_000_001,
                    ..Default::default()
                },
                "face_count must be 100–1000000, got 1000001 (or 0 for every face)",
            ),
        ];
        for (options, reason) in bad {
            assert_eq!(options.validate(), Err(reason.to_string()));
            assert_eq!(options.clamped().validate(), Ok(()));
        }
        for faces in [0, 100, 1_000_000] {
            let edges = GenerateOptions {
                steps: Some(200),
                guidance: 50.0,
                resolution: 16,
                faces,
                ..Default::default()
            };
            assert_eq!(edges.clone().validate(), Ok(()));
            assert_eq!(edges.clone().clamped(), edges);
        }
        let both = GenerateOptions {
            dense: true,
            flashvdm: true,
            ..Default::default()
        };
        assert_eq!(
            both.validate(),
            Err("dense and flashvdm decoding exclude each other: choose one".into())
        );
        // A record written before the knob existed reads with the default budget.
        let old: GenerateOptions = serde_json::from_str(r#"{"steps":5,"seed":3}"#).unwrap();
        assert_eq!(old.faces, DEFAULT_FACES);
    }
}
