//! The Orfeas web app is two wasm bundles: the UI (`src/main.rs`, leptos, no burn) and the
//! engine worker (`src/bin/worker.rs`, burn on WebGPU in a dedicated Web Worker). They share
//! only [`protocol`], the typed messages they exchange, and [`config`], where models live.

pub mod config;
pub mod protocol;
#[cfg(all(feature = "worker", target_arch = "wasm32"))]
pub mod worker;
