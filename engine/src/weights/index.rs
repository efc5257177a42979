//! The shard-set index: Hugging Face's `model.safetensors.index.json` (`weight_map`,
//! `metadata.total_size`) extended with what a streaming, verifying loader needs up front:
//! every shard's byte size and sha256, the model id/version and the model's config.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use super::error::LoadError;
use super::quant::{Precision, QuantInfo};

pub const INDEX_FILE: &str = "model.safetensors.index.json";
pub const FORMAT: &str = "orfeas-shards/1";
/// A set with quantized tensors (a loader that predates them refuses the format by name).
pub const FORMAT_QUANTIZED: &str = "orfeas-shards/2";

/// The largest shard an index may declare (ours are 16–64 MiB; Hugging Face's up to ~10 GB,
/// which we repack): a lying size cannot make a reader expect more.
pub const MAX_SHARD_BYTES: u64 = 4 << 30;

/// The largest index read (a 2.1 model's is ~200 KB).
pub const MAX_INDEX_BYTES: usize = 16 << 20;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShardIndex {
    pub metadata: IndexMetadata,
    /// Tensor name → shard file (the Hugging Face convention).
    pub weight_map: BTreeMap<String, String>,
    pub model: ModelMeta,
    /// The model's own configuration (architecture hyper-parameters), passed through verbatim.
    #[serde(default)]
    pub config: serde_json::Value,
    /// Shards in load order.
    pub shards: Vec<ShardInfo>,
    /// The quantized tensors (stored as flat U8 tensors in their shards): how each is stored.
    /// Every other tensor is a float.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub quantized: BTreeMap<String, QuantInfo>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IndexMetadata {
    /// Sum of tensor data bytes (the Hugging Face meaning): the float weights' bytes in f16,
    /// the shards' dtype (twice that in f32 on the device), plus the quantized tensors' bytes
    /// (the same on the device whatever it computes in).
    pub total_size: u64,
    /// The part of `total_size` that is quantized tensors.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub quantized_size: u64,
    pub format: String,
    /// The largest tensor (one GPU buffer each), so a client can tell whether the model fits
    /// the device before it downloads anything. Absent from sets packed before it was recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub largest_tensor: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub largest_tensor_elements: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelMeta {
    pub id: String,
    pub version: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShardInfo {
    pub file: String,
    /// Exact byte size of the shard file.
    pub size: u64,
    /// Lower-case hex sha256 of the whole shard file.
    pub sha256: String,
}

impl ShardIndex {
    pub fn from_json(bytes: &[u8]) -> Result<Self, LoadError> {
        if bytes.len() > MAX_INDEX_BYTES {
            return Err(LoadError::Index(format!(
                "the index is {} bytes; at most {MAX_INDEX_BYTES}",
                bytes.len()
            )));
        }
        if looks_like_html(bytes) {
            return Err(LoadError::Index(
                "not an index: the server sent an HTML page".into(),
            ));
        }
        let index: ShardIndex = serde_json::from_slice(bytes)
            .map_err(|e| LoadError::Index(format!("invalid JSON: {e}")))?;
        index.validate()?;
        Ok(index)
    }

    /// The set's precision: the narrowest of its quantized tensors, f16 when it has none.
    pub fn precision(&self) -> Precision {
        Precision::narrowest(self.quantized.values().filter_map(|q| q.check().ok()))
            .unwrap_or(Precision::F16)
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("index serialises")
    }

    /// Bytes the loader will stream: the sum of shard file sizes.
    pub fn total_bytes(&self) -> u64 {
        self.shards.iter().map(|s| s.size).sum()
    }

    /// What the set needs on a device (see [`crate::fit`]); for a set packed before the
    /// largest tensor was recorded only the total is checked.
    pub fn footprint(&self) -> crate::fit::Footprint {
        let quantized = self.metadata.quantized_size.min(self.metadata.total_size);
        crate::fit::Footprint {
            weights_f16: self.metadata.total_size - quantized,
            weights_quantized: quantized,
            largest_tensor_elements: self.metadata.largest_tensor_elements.unwrap_or(0),
            largest_tensor: self
                .metadata
                .largest_tensor
                .clone()
                .unwrap_or_else(|| format!("{} (not recorded)", self.model.id)),
        }
    }

    pub fn tensor_count(&self) -> usize {
        self.weight_map.len()
    }

    /// Tensor names the index places in `file`.
    pub fn tensors_in(&self, file: &str) -> BTreeSet<&str> {
        self.weight_map
            .iter()
            .filter(|(_, f)| f.as_str() == file)
            .map(|(name, _)| name.as_str())
            .collect()
    }

    fn validate(&self) -> Result<(), LoadError> {
        let bad = |m: String| Err(LoadError::Index(m));
        if self.metadata.format != FORMAT && self.metadata.format != FORMAT_QUANTIZED {
            return bad(format!(
                "unsupported format {:?} (expected {FORMAT:?} or {FORMAT_QUANTIZED:?})",
                self.metadata.format
            ));
        }
        if !self.quantized.is_empty() && self.metadata.format != FORMAT_QUANTIZED {
            return bad(format!(
                "quantized tensors in a set of format {:?} (they need {FORMAT_QUANTIZED:?})",
                self.metadata.format
            ));
        }
        for (name, info) in &self.quantized {
            if !self.weight_map.contains_key(name) {
                return bad(format!("quantized tensor {name} is in no shard"));
            }
            info.check()
                .map_err(|e| LoadError::Index(format!("tensor {name}: {e}")))?;
        }
        let mut files = BTreeSet::new();
        for shard in &self.shards {
            if !is_plain_file_name(&shard.file) {
                return bad(format!(
                    "shard name {:?} is not a plain file name",
                    shard.file
                ));
            }
            if !files.insert(shard.file.as_str()) {
                return bad(format!("shard {} listed twice", shard.file));
            }
            if shard.size < 8 || shard.size > MAX_SHARD_BYTES {
                return bad(format!(
                    "shard {} has an impossible size {} (at most {MAX_SHARD_BYTES})",
                    shard.file, shard.size
                ));
            }
            if shard.sha256.len() != 64 || !shard.sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
                return bad(format!("shard {} has an invalid sha256", shard.file));
            }
        }
        for (name, file) in &self.weight_map {
            if !files.contains(file.as_str()) {
                return bad(format!("tensor {name} maps to unknown shard {file}"));
            }
        }
        // The shards hold the tensors' bytes (plus headers): a larger total is a lie.
        let shard_bytes: u64 = self.shards.iter().map(|s| s.size).sum();
        if self.metadata.total_size > shard_bytes {
            return bad(format!(
                "total_size {} is more than the shards hold ({shard_bytes} bytes)",
                self.metadata.total_size
            ));
        }
        Ok(())
    }
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// A plain file name (`[A-Za-z0-9._-]`, not starting with a dot), so a hostile index cannot
/// point outside the model folder, at a hidden file, or at a drive (`C:x`) or device name.
pub fn is_plain_file_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 255
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// An HTML page where data was expected (a captive portal, an SPA fallback, a 404 page with 200).
pub fn looks_like_html(bytes: &[u8]) -> bool {
    let start = bytes
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(bytes.len());
    let head: Vec<u8> = bytes[start..]
        .iter()
        .take(16)
        .map(|b| b.to_ascii_lowercase())
        .collect();
    [
        "<!doctype",
        "<html",
        "<head",
        "<body",
        "<!--",
        "<?xml",
        "<meta",
        "<title",
    ]
    .iter()
    .any(|tag| {
        // A short prefix (the loader sniffs only the first bytes) still counts.
        head.starts_with(tag.as_bytes()) || (head.len() >= 2 && tag.as_bytes().starts_with(&head))
    })
}
