use thiserror::Error;

/// What went wrong with one shard. Every variant names the problem precisely enough for a
/// user to act on it; the shard's file name is attached by [`LoadError::Shard`].
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ShardError {
    #[error("truncated: the stream ended after {received} of {expected} bytes")]
    Truncated { received: u64, expected: u64 },
    #[error("extra bytes: the stream went past the expected {expected} bytes")]
    ExtraBytes { expected: u64 },
    #[error("sha256 mismatch: expected {expected}, got {actual}")]
    HashMismatch { expected: String, actual: String },
    #[error("not a safetensors shard: the server sent an HTML page")]
    Html,
    #[error("header length {header_len} is larger than the shard ({shard_size} bytes)")]
    HeaderTooLong { header_len: u64, shard_size: u64 },
    #[error("invalid header: {0}")]
    InvalidHeader(String),
    #[error("tensor {name}: dtype {dtype} cannot be converted to a float tensor")]
    UnsupportedDtype { name: String, dtype: String },
    #[error("tensor offsets out of range: {0}")]
    BadOffsets(String),
    #[error("tensor {name} is not listed for this shard in the index")]
    NotInIndex { name: String },
    #[error("index lists tensor {name} in this shard, but the shard lacks it")]
    MissingTensor { name: String },
    #[error("stream error after {received} bytes: {message}")]
    Stream { received: u64, message: String },
    /// A tensor whose bytes contradict the index (a quantized tensor's length or scales).
    #[error("tensor {name}: {message}")]
    BadTensor { name: String, message: String },
    #[error("tensor {name}: upload failed: {message}")]
    Upload { name: String, message: String },
    #[error("could not open: {0}")]
    Open(String),
}

/// A failed model load.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum LoadError {
    #[error("shard {shard}: {error}")]
    Shard { shard: String, error: ShardError },
    #[error("index: {0}")]
    Index(String),
    /// The source has no index at all: the model is not installed there.
    #[error("not installed: {0} has no shard-set index")]
    NotInstalled(String),
    #[error("device: {0}")]
    Device(String),
    #[error("load cancelled")]
    Cancelled,
}

impl LoadError {
    pub fn shard(shard: &str, error: ShardError) -> Self {
        LoadError::Shard {
            shard: shard.to_string(),
            error,
        }
    }

    /// The shard the error names, if it is about one shard.
    pub fn shard_name(&self) -> Option<&str> {
        match self {
            LoadError::Shard { shard, .. } => Some(shard),
            _ => None,
        }
    }
}
