//! The Orfeas web app is three wasm bundles: the UI (`src/main.rs`, leptos, no burn), the
//! engine worker (`src/bin/worker.rs`, burn on WebGPU in a dedicated Web Worker) and the 3D
//! viewer worker (`src/bin/viewer.rs`, wgpu on an OffscreenCanvas). They share only
//! [`protocol`], the typed messages they exchange, [`config`], where models live, and
//! [`text`], the figures they show.

pub mod config;
pub mod protocol;
pub mod text;
pub mod viewer;
#[cfg(all(feature = "worker", target_arch = "wasm32"))]
pub mod worker;
