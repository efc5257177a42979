//! Orfeas engine: the platform-neutral core shared by the browser app and the native CLI/server.
//!
//! Data path: [`weights`] (fetch → parse → verify → upload → apply) → models → pipeline → mesh.

pub mod device;
pub mod weights;
