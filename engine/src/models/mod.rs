//! The shape pipeline's networks, one file per model, each with a `Config` (parsed from the
//! official config values), modules with `init`, and a forward pass that reads like the paper.

pub mod dinov2;
pub mod dit20;
pub mod dit21;
pub mod shape_vae;
