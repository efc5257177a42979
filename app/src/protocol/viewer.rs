//! The 3D viewer's messages, and the mesh the engine hands over to it.

use serde::{Deserialize, Serialize};

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

#[cfg(test)]
mod tests {
    use super::*;

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
}
