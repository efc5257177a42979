//! Orfeas engine: the platform-neutral core shared by the browser app and the native CLI/server.
//!
//! Data path: [`weights`] (fetch → parse → verify → upload → apply) → [`input`] (the user's
//! image) → models → pipeline → [`mesh`] (field → triangles → preview, clean-up, export).
//! [`device`] and [`gpu`] pick where the tensors live.

pub mod background;
pub mod device;
pub mod fit;
#[cfg(any(feature = "wgpu", feature = "webgpu"))]
pub mod gpu;
pub mod input;
pub mod mesh;
pub mod models;
pub mod pipeline;
pub mod recenter;
pub mod sampler;
pub mod volume;
pub mod weights;
