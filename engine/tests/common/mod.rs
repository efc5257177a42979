//! Shared test fixtures: generated models, packed shard sets and an in-memory shard source
//! that re-chunks bytes at random and can inject faults.
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use bytes::Bytes;
use orfeas_engine::weights::index::INDEX_FILE;
use orfeas_engine::weights::pack::{PackOptions, pack};
use orfeas_engine::weights::source::{ByteStream, SourceError, boxed};
use orfeas_engine::weights::{ShardIndex, ShardSource};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use safetensors::tensor::{Dtype, TensorView};

/// A generated model: tensor name → (shape, f32 values).
pub type Model = Vec<(String, Vec<usize>, Vec<f32>)>;

pub fn random_model(seed: u64, tensors: usize, max_elems: usize) -> Model {
    let mut rng = StdRng::seed_from_u64(seed);
    (0..tensors)
        .map(|i| {
            let rank = rng.random_range(1..=4);
            let mut shape: Vec<usize> = (0..rank).map(|_| rng.random_range(1..=8)).collect();
            let numel: usize = shape.iter().product();
            shape[0] *= (rng.random_range(1..=max_elems) / numel).max(1);
            let numel: usize = shape.iter().product();
            let values = (0..numel).map(|_| rng.random_range(-4.0f32..4.0)).collect();
            (format!("layers.{i}.w{}", rank), shape, values)
        })
        .collect()
}

/// Write `model` as one safetensors file in `dtype` (F32, BF16 or F16).
pub fn write_safetensors(model: &Model, dtype: Dtype, path: &Path) {
    let encoded: Vec<(String, Vec<usize>, Vec<u8>)> = model
        .iter()
        .map(|(name, shape, values)| {
            let bytes = match dtype {
                Dtype::F32 => values.iter().flat_map(|v| v.to_le_bytes()).collect(),
                Dtype::F16 => values
                    .iter()
                    .flat_map(|v| half::f16::from_f32(*v).to_le_bytes())
                    .collect(),
                Dtype::BF16 => values
                    .iter()
                    .flat_map(|v| half::bf16::from_f32(*v).to_le_bytes())
                    .collect(),
                other => panic!("test writer does not do {other:?}"),
            };
            (name.clone(), shape.clone(), bytes)
        })
        .collect();
    let views: Vec<(String, TensorView)> = encoded
        .iter()
        .map(|(name, shape, bytes)| {
            (
                name.clone(),
                TensorView::new(dtype, shape.clone(), bytes).unwrap(),
            )
        })
        .collect();
    safetensors::serialize_to_file(views, None, path).unwrap();
}

/// Pack `model` (written as F32) into a shard set of about `shard_size` bytes per shard.
pub fn packed(model: &Model, shard_size: u64, dir: &Path) -> ShardIndex {
    let input = dir.join("input.safetensors");
    write_safetensors(model, Dtype::F32, &input);
    let out = dir.join("shards");
    let options = PackOptions {
        shard_size,
        model_id: "test-model".into(),
        version: "1".into(),
        config: serde_json::json!({"kind": "test"}),
        ..Default::default()
    };
    let index = pack(std::slice::from_ref(&input), &out, &options, |_, _| {}).unwrap();
    std::fs::remove_file(input).unwrap();
    index
}

pub fn shard_dir(dir: &Path) -> PathBuf {
    dir.join("shards")
}

/// The shard files' tensors as the whole-file reference reader (the safetensors crate) sees them.
pub fn reference_tensors(dir: &Path, index: &ShardIndex) -> HashMap<String, (Vec<usize>, Vec<u8>)> {
    let mut out = HashMap::new();
    for shard in &index.shards {
        let bytes = std::fs::read(dir.join(&shard.file)).unwrap();
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        for (name, view) in st.tensors() {
            assert_eq!(view.dtype(), Dtype::F16);
            out.insert(name, (view.shape().to_vec(), view.data().to_vec()));
        }
    }
    out
}

/// An in-memory shard set served in random chunk sizes, with faults to inject.
pub struct MemSource {
    pub files: Mutex<HashMap<String, Vec<u8>>>,
    pub max_chunk: usize,
    pub seed: u64,
    /// Shard → byte offset after which the stream fails.
    pub fail_at: Mutex<HashMap<String, usize>>,
    /// Shards opened, in order.
    pub opened: Mutex<Vec<String>>,
}

impl MemSource {
    pub fn from_dir(dir: &Path, max_chunk: usize, seed: u64) -> Self {
        let files = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.is_file())
            .map(|p| {
                (
                    p.file_name().unwrap().to_str().unwrap().to_string(),
                    std::fs::read(&p).unwrap(),
                )
            })
            .collect();
        Self {
            files: Mutex::new(files),
            max_chunk,
            seed,
            fail_at: Mutex::new(HashMap::new()),
            opened: Mutex::new(Vec::new()),
        }
    }

    pub fn set(&self, file: &str, bytes: Vec<u8>) {
        self.files.lock().unwrap().insert(file.to_string(), bytes);
    }

    /// Replace a shard and update its index entry to match, as a (buggy) packer would have
    /// written it: size and hash agree, so only the content itself is wrong.
    pub fn replace_consistently(&self, file: &str, bytes: Vec<u8>) {
        use sha2::Digest;
        let mut index: serde_json::Value = serde_json::from_slice(&self.get(INDEX_FILE)).unwrap();
        for shard in index["shards"].as_array_mut().unwrap() {
            if shard["file"] == file {
                shard["size"] = bytes.len().into();
                shard["sha256"] = hex::encode(sha2::Sha256::digest(&bytes)).into();
            }
        }
        self.set(INDEX_FILE, serde_json::to_vec(&index).unwrap());
        self.set(file, bytes);
    }

    pub fn get(&self, file: &str) -> Vec<u8> {
        self.files.lock().unwrap()[file].clone()
    }

    pub fn opened(&self) -> Vec<String> {
        self.opened.lock().unwrap().clone()
    }
}

#[async_trait::async_trait]
impl ShardSource for MemSource {
    async fn read_index(&self) -> Result<Vec<u8>, SourceError> {
        Ok(self.get(INDEX_FILE))
    }

    async fn open_shard(&self, file: &str) -> Result<ByteStream, SourceError> {
        self.opened.lock().unwrap().push(file.to_string());
        let bytes = self
            .files
            .lock()
            .unwrap()
            .get(file)
            .cloned()
            .ok_or_else(|| SourceError::new(format!("{file}: not found")))?;
        let fail_at = self.fail_at.lock().unwrap().get(file).copied();
        let salt: u64 = file.bytes().map(u64::from).sum();
        let mut rng = StdRng::seed_from_u64(self.seed ^ salt);
        let mut items: Vec<Result<Bytes, SourceError>> = Vec::new();
        let mut at = 0;
        while at < bytes.len() {
            let n = rng.random_range(1..=self.max_chunk).min(bytes.len() - at);
            if let Some(limit) = fail_at
                && at + n > limit
            {
                items.push(Ok(Bytes::copy_from_slice(&bytes[at..limit])));
                items.push(Err(SourceError::new("connection reset by peer")));
                return Ok(boxed(futures::stream::iter(items)));
            }
            items.push(Ok(Bytes::copy_from_slice(&bytes[at..at + n])));
            at += n;
        }
        Ok(boxed(futures::stream::iter(items)))
    }

    fn describe(&self) -> String {
        "memory".into()
    }
}

/// A caching front for a [`MemSource`] (the network), with the contract the browser's Cache
/// Storage source keeps: a shard is stored only once the loader verified it, and a cached copy
/// that fails is dropped.
pub struct CachingSource<'a> {
    pub network: &'a MemSource,
    pub cache: Mutex<HashMap<String, Vec<u8>>>,
    /// Hash the streamed bytes here rather than in the parser, as the browser source does.
    pub external_digest: bool,
    /// Bytes seen per shard during the current attempt (and whether from the network), kept
    /// until the verdict.
    pending: Mutex<HashMap<String, (Vec<u8>, bool)>>,
}

impl<'a> CachingSource<'a> {
    pub fn new(network: &'a MemSource) -> Self {
        Self {
            network,
            cache: Mutex::new(HashMap::new()),
            external_digest: false,
            pending: Mutex::new(HashMap::new()),
        }
    }

    pub fn cached(&self) -> Vec<String> {
        let mut names: Vec<String> = self.cache.lock().unwrap().keys().cloned().collect();
        names.sort();
        names
    }
}

#[async_trait::async_trait]
impl ShardSource for CachingSource<'_> {
    async fn read_index(&self) -> Result<Vec<u8>, SourceError> {
        self.network.read_index().await
    }

    async fn open_shard(&self, file: &str) -> Result<ByteStream, SourceError> {
        if let Some(bytes) = self.cache.lock().unwrap().get(file).cloned() {
            self.pending
                .lock()
                .unwrap()
                .insert(file.to_string(), (bytes.clone(), false));
            return Ok(boxed(futures::stream::iter([Ok(Bytes::from(bytes))])));
        }
        let stream = self.network.open_shard(file).await?;
        let items: Vec<_> = futures::StreamExt::collect(stream).await;
        let mut seen = Vec::new();
        for item in items.iter().flatten() {
            seen.extend_from_slice(item);
        }
        self.pending
            .lock()
            .unwrap()
            .insert(file.to_string(), (seen, true));
        Ok(boxed(futures::stream::iter(items)))
    }

    fn digests_shards(&self) -> bool {
        self.external_digest
    }

    async fn shard_digest(&self, file: &str) -> Result<String, SourceError> {
        use sha2::Digest;
        let pending = self.pending.lock().unwrap();
        let (bytes, _) = pending
            .get(file)
            .ok_or_else(|| SourceError::new("nothing streamed"))?;
        Ok(hex::encode(sha2::Sha256::digest(bytes)))
    }

    async fn is_cached(&self, file: &str) -> bool {
        self.cache.lock().unwrap().contains_key(file)
    }

    async fn shard_verified(&self, file: &str) {
        if let Some((bytes, true)) = self.pending.lock().unwrap().remove(file) {
            self.cache.lock().unwrap().insert(file.to_string(), bytes);
        }
    }

    async fn shard_failed(&self, file: &str) {
        self.pending.lock().unwrap().remove(file);
        self.cache.lock().unwrap().remove(file);
    }

    fn describe(&self) -> String {
        "cached memory".into()
    }
}
