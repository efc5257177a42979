//! Weight streaming: the path a model's bytes take from the network (or disk) to the device.
//!
//! `index` (what the shard set contains) → `source` (byte streams per shard) → `parse`
//! (incremental safetensors parsing + sha256) → `upload` (device tensors as soon as their
//! bytes are in) → `loader` (drives it all, with `progress`) → `apply` (into a burn module).
//! `quant` is the quantized format (q8/q4 blocks, kept quantized on the device).
//! `status` is the model lifecycle the app and server expose; `pack` builds shard sets and
//! `install` swaps them into place as one transaction.

pub mod apply;
pub mod dtype;
pub mod error;
pub mod index;
#[cfg(not(target_arch = "wasm32"))]
pub mod install;
pub mod loader;
#[cfg(not(target_arch = "wasm32"))]
pub mod pack;
pub mod parse;
pub mod progress;
pub mod quant;
pub mod source;
pub mod status;
pub mod upload;

pub use apply::{
    ApplyError, apply_torch_weights, apply_weights, apply_weights_renamed, torch_layout,
};
pub use error::{LoadError, ShardError};
pub use index::{INDEX_FILE, ModelMeta, ShardIndex, ShardInfo};
pub use loader::{CacheCheck, load_all, load_weights, verify_cached};
pub use progress::{LoadProgress, Phase, ProgressTracker};
pub use quant::{Precision, QuantInfo};
pub use source::{ByteStream, ShardSource, SourceError};
pub use status::{ModelState, ModelStatus, NotReady, NotReadyKind};
pub use upload::{StoredTensor, WeightSet};
