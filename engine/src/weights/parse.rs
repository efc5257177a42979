//! Incremental safetensors parsing: bytes go in as they arrive, in chunks of any size, and
//! each tensor comes out the moment its last byte is in. The header is parsed with the
//! `safetensors` crate (which validates offsets); the shard is hashed on the fly.
//!
//! Host memory held: the header, plus at most one tensor that straddles chunk boundaries.
//! A tensor wholly inside one chunk is handed out as a borrowed slice of that chunk.

use safetensors::tensor::{Dtype, Metadata};
use sha2::{Digest, Sha256};

use super::dtype::is_float;
use super::error::ShardError;
use super::index::{ShardInfo, looks_like_html};

const LEN_BYTES: usize = 8;
/// The safetensors crate's own limit on header size.
const MAX_HEADER: u64 = 100_000_000;

/// One tensor whose bytes are all in.
#[derive(Debug)]
pub struct RawTensor<'a> {
    pub name: &'a str,
    pub dtype: Dtype,
    pub shape: &'a [usize],
    pub bytes: &'a [u8],
}

struct Entry {
    name: String,
    dtype: Dtype,
    shape: Vec<usize>,
    len: usize,
}

enum State {
    Length,
    Header { len: usize },
    Tensors { next: usize },
}

pub struct ShardParser {
    expected_size: u64,
    expected_sha256: String,
    received: u64,
    /// `None` when the source hashes the bytes itself (see [`ShardParser::with_external_digest`]).
    hasher: Option<Sha256>,
    state: State,
    /// Header bytes, or the bytes of the tensor currently being assembled across chunks.
    pending: Vec<u8>,
    entries: Vec<Entry>,
}

/// What a fully received, verified shard contained.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardSummary {
    pub tensors: Vec<String>,
    pub sha256: String,
}

impl ShardParser {
    pub fn new(shard: &ShardInfo) -> Self {
        Self {
            expected_size: shard.size,
            expected_sha256: shard.sha256.to_ascii_lowercase(),
            received: 0,
            hasher: Some(Sha256::new()),
            state: State::Length,
            pending: Vec::new(),
            entries: Vec::new(),
        }
    }

    /// A parser that leaves the sha256 to the caller, who has the digest computed elsewhere
    /// (the browser's native WebCrypto is far faster than hashing in wasm) and must check it
    /// before trusting the shard.
    pub fn with_external_digest(shard: &ShardInfo) -> Self {
        Self {
            hasher: None,
            ..Self::new(shard)
        }
    }

    fn check_digest(&self, actual: &str) -> Result<(), ShardError> {
        let actual = actual.to_ascii_lowercase();
        if actual != self.expected_sha256 {
            return Err(ShardError::HashMismatch {
                expected: self.expected_sha256.clone(),
                actual,
            });
        }
        Ok(())
    }

    pub fn received(&self) -> u64 {
        self.received
    }

    /// Tensor names and count, known once the header is in.
    pub fn tensor_names(&self) -> impl Iterator<Item = &str> {
        self.entries.iter().map(|e| e.name.as_str())
    }

    pub fn header_parsed(&self) -> bool {
        matches!(self.state, State::Tensors { .. })
    }

    /// Feed the next chunk. `on_tensor` is called for every tensor completed by it, in offset order.
    pub fn feed<E>(
        &mut self,
        mut chunk: &[u8],
        on_tensor: &mut dyn FnMut(RawTensor<'_>) -> Result<(), E>,
    ) -> Result<(), FeedError<E>>
    where
        E: std::fmt::Debug,
    {
        let new_total = self.received + chunk.len() as u64;
        if new_total > self.expected_size {
            return Err(FeedError::Shard(ShardError::ExtraBytes {
                expected: self.expected_size,
            }));
        }
        self.received = new_total;
        if let Some(hasher) = &mut self.hasher {
            hasher.update(chunk);
        }

        loop {
            match self.state {
                State::Length => {
                    if !self.take_into_pending(&mut chunk, LEN_BYTES) {
                        return Ok(());
                    }
                    let len = u64::from_le_bytes(self.pending[..8].try_into().expect("8 bytes"));
                    let room = self.expected_size - LEN_BYTES as u64;
                    if len > room || len > MAX_HEADER {
                        return Err(FeedError::Shard(if looks_like_html(&self.pending) {
                            ShardError::Html
                        } else {
                            ShardError::HeaderTooLong {
                                header_len: len,
                                shard_size: self.expected_size,
                            }
                        }));
                    }
                    self.pending.clear();
                    self.state = State::Header { len: len as usize };
                }
                State::Header { len } => {
                    if !self.take_into_pending(&mut chunk, len) {
                        return Ok(());
                    }
                    self.parse_header(len).map_err(FeedError::Shard)?;
                    self.pending = Vec::new();
                    self.state = State::Tensors { next: 0 };
                }
                State::Tensors { next } => {
                    let Some(entry) = self.entries.get(next) else {
                        // Every byte is accounted for by the header, so nothing may follow.
                        debug_assert!(chunk.is_empty());
                        return Ok(());
                    };
                    let tensor_bytes: &[u8] = if self.pending.is_empty() && chunk.len() >= entry.len
                    {
                        // Fast path: the whole tensor is inside this chunk.
                        let (bytes, rest) = chunk.split_at(entry.len);
                        chunk = rest;
                        bytes
                    } else {
                        let len = entry.len;
                        if !self.take_into_pending(&mut chunk, len) {
                            return Ok(());
                        }
                        &self.pending
                    };
                    let entry = &self.entries[next];
                    on_tensor(RawTensor {
                        name: &entry.name,
                        dtype: entry.dtype,
                        shape: &entry.shape,
                        bytes: tensor_bytes,
                    })
                    .map_err(FeedError::Sink)?;
                    self.pending.clear();
                    self.state = State::Tensors { next: next + 1 };
                }
            }
        }
    }

    /// The stream has ended: check the size and (unless it is external) the hash.
    pub fn finish(mut self) -> Result<ShardSummary, ShardError> {
        if self.received < self.expected_size {
            return Err(ShardError::Truncated {
                received: self.received,
                expected: self.expected_size,
            });
        }
        let actual = match self.hasher.take() {
            Some(hasher) => {
                let actual = hex::encode(hasher.finalize());
                self.check_digest(&actual)?;
                actual
            }
            None => self.expected_sha256.clone(),
        };
        Ok(ShardSummary {
            tensors: self.entries.into_iter().map(|e| e.name).collect(),
            sha256: actual,
        })
    }

    /// Move bytes from `chunk` into `pending` until it holds `want` bytes; true when it does.
    /// The buffer grows with the bytes that arrive, never to a size a header merely claims.
    fn take_into_pending(&mut self, chunk: &mut &[u8], want: usize) -> bool {
        let need = want - self.pending.len();
        let n = need.min(chunk.len());
        self.pending.extend_from_slice(&chunk[..n]);
        *chunk = &chunk[n..];
        self.pending.len() == want
    }

    fn parse_header(&mut self, len: usize) -> Result<(), ShardError> {
        let text = std::str::from_utf8(&self.pending)
            .map_err(|e| ShardError::InvalidHeader(format!("not UTF-8 ({e})")))?;
        let metadata: Metadata = serde_json::from_str(text).map_err(|e| {
            let message = e.to_string();
            // The crate reports offset problems through serde; its messages name "offset".
            if message.contains("offset") {
                ShardError::BadOffsets(message)
            } else {
                ShardError::InvalidHeader(message)
            }
        })?;
        let data_len = metadata.data_len() as u64;
        let available = self.expected_size - (LEN_BYTES + len) as u64;
        if data_len != available {
            return Err(ShardError::BadOffsets(format!(
                "the header describes {data_len} data bytes, the shard holds {available}"
            )));
        }
        for name in metadata.offset_keys() {
            let info = metadata.info(&name).expect("name from the same metadata");
            // U8: a quantized tensor's bytes (the loader checks the index lists it as one).
            if !is_float(info.dtype) && info.dtype != Dtype::U8 {
                return Err(ShardError::UnsupportedDtype {
                    name,
                    dtype: format!("{:?}", info.dtype),
                });
            }
            self.entries.push(Entry {
                len: info.data_offsets.1 - info.data_offsets.0,
                dtype: info.dtype,
                shape: info.shape.clone(),
                name,
            });
        }
        Ok(())
    }
}

/// A feed failure: the shard is bad, or the consumer of a tensor failed.
#[derive(Debug)]
pub enum FeedError<E> {
    Shard(ShardError),
    Sink(E),
}
