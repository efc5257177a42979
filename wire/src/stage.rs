//! Where an image-to-mesh job is.

use serde::{Deserialize, Serialize};

/// A job's stage, as every front-end shows it. The shape model reports the stages from
/// `Encoding` to `Meshing`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    RemovingBackground,
    /// DINOv2 on the shape input.
    Encoding,
    /// `done` of `total` sampler steps finished.
    Sampling {
        done: usize,
        total: usize,
    },
    /// Field queries made so far.
    Decoding {
        queries: usize,
    },
    Meshing,
    CleaningUp,
}

impl std::fmt::Display for Stage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Stage::RemovingBackground => write!(f, "removing the background"),
            Stage::Encoding => write!(f, "encoding the image"),
            Stage::Sampling { done, total } => write!(f, "sampling: step {done} of {total}"),
            Stage::Decoding { queries } => write!(f, "decoding the field: {queries} points"),
            Stage::Meshing => write!(f, "marching cubes"),
            Stage::CleaningUp => write!(f, "cleaning up the mesh"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stages_are_externally_tagged_and_read_back() {
        for stage in [
            Stage::RemovingBackground,
            Stage::Sampling { done: 2, total: 30 },
            Stage::Decoding { queries: 8000 },
        ] {
            let json = serde_json::to_string(&stage).unwrap();
            assert_eq!(serde_json::from_str::<Stage>(&json).unwrap(), stage);
        }
        assert_eq!(
            serde_json::to_string(&Stage::Sampling { done: 2, total: 30 }).unwrap(),
            r#"{"sampling":{"done":2,"total":30}}"#
        );
        assert_eq!(
            serde_json::to_string(&Stage::Meshing).unwrap(),
            r#""meshing""#
        );
        assert_eq!(
            Stage::Sampling { done: 3, total: 30 }.to_string(),
            "sampling: step 3 of 30"
        );
    }
}
