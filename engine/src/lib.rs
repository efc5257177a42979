//! Orfeas engine: the platform-neutral core shared by the browser app and the native CLI/server.
//!
//! Data path: [`weights`] (fetch → parse → verify → upload → apply) → models → pipeline →
//! [`mesh`] (field → triangles).
//! [`device`] and [`gpu`] pick where the tensors live.

pub mod device;
#[cfg(any(feature = "wgpu", feature = "webgpu"))]
pub mod gpu;
pub mod mesh;
pub mod weights;
