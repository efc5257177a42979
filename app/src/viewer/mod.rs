//! The 3D viewer. It runs in a worker of its own (`src/bin/viewer.rs`, started by
//! `app/viewer.js`) drawing on an `OffscreenCanvas` with wgpu, so that neither model loading
//! nor generation in the engine worker ever stalls its frames. The UI sends it pointer deltas
//! and mode changes ([`crate::protocol::ToViewer`]); the [`camera`] math is plain Rust.

pub mod camera;
#[cfg(all(feature = "viewer", target_arch = "wasm32"))]
pub mod render;
#[cfg(all(feature = "viewer", target_arch = "wasm32"))]
pub mod runtime;
