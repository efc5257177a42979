//! The streaming loader: shard bytes in, verified device tensors out.

use std::collections::BTreeSet;

use burn::tensor::{DType, Device};
use futures::StreamExt;

use super::error::{LoadError, ShardError};
use super::index::{ShardIndex, ShardInfo};
use super::parse::{FeedError, ShardParser};
use super::progress::{LoadProgress, Phase, ProgressTracker};
use super::source::{ByteStream, ShardSource, SourceError};
use super::upload::{StoredTensor, WeightSet};

/// Device bytes uploaded between two flushes of the device's queue.
const FLUSH_EVERY: usize = 8 << 20;

/// Read and validate a source's index.
pub async fn read_index<S: ShardSource + ?Sized>(source: &S) -> Result<ShardIndex, LoadError> {
    let bytes = source
        .read_index()
        .await
        .map_err(|e| match e.is_missing() {
            true => LoadError::NotInstalled(source.describe()),
            false => LoadError::Index(format!("{}: {e}", source.describe())),
        })?;
    ShardIndex::from_json(&bytes)
}

/// A fresh progress record for loading `index`.
pub fn initial_progress(index: &ShardIndex) -> LoadProgress {
    LoadProgress::new(
        &index.model.id,
        index.total_bytes(),
        index.shards.len(),
        index.tensor_count(),
    )
}

/// Read the index and stream the whole set in one call, for callers that do not resume:
/// progress ends in `ready` or `failed`.
pub async fn load_all<S, F>(
    source: &S,
    device: &Device,
    dtype: DType,
    on_progress: F,
) -> Result<(ShardIndex, WeightSet), LoadError>
where
    S: ShardSource + ?Sized,
    F: FnMut(&LoadProgress),
{
    let index = read_index(source).await?;
    let mut tracker = ProgressTracker::new(initial_progress(&index), on_progress);
    let mut weights = WeightSet::new();
    match load_weights(source, &index, device, dtype, &mut weights, &mut tracker).await {
        Ok(()) => {
            tracker.set_phase(Phase::Ready);
            tracker.flush();
            Ok((index, weights))
        }
        Err(e) => {
            tracker.set_phase(Phase::Failed);
            Err(e)
        }
    }
}

/// Stream every shard of `index` that `weights` does not hold yet onto `device` as `dtype`.
///
/// Each tensor is uploaded the moment its bytes are in; a shard's tensors join `weights` only
/// after the shard's size and sha256 check out. On error, `weights` keeps every shard verified
/// so far, so calling again resumes where it stopped.
pub async fn load_weights<S, F>(
    source: &S,
    index: &ShardIndex,
    device: &Device,
    dtype: DType,
    weights: &mut WeightSet,
    tracker: &mut ProgressTracker<F>,
) -> Result<(), LoadError>
where
    S: ShardSource + ?Sized,
    F: FnMut(&LoadProgress),
{
    let mut prefetched: Option<Opened> = None;
    for (i, shard) in index.shards.iter().enumerate() {
        let expected = index.tensors_in(&shard.file);
        if weights.is_shard_verified(&shard.file) {
            tracker.skip_shard(shard.size, expected.len());
            continue;
        }
        let next = index.shards[i + 1..]
            .iter()
            .find(|s| !weights.is_shard_verified(&s.file));
        let (from_cache, opened) = match prefetched.take() {
            Some(o) if o.file == shard.file => (o.from_cache, Some(o.stream)),
            _ => (source.is_cached(&shard.file).await, None),
        };
        let (bytes_before, tensors_before) = {
            let p = tracker.progress();
            (p.bytes_done, p.tensors_done)
        };
        let mut attempt = Attempt {
            source,
            shard,
            expected: &expected,
            quantized: &index.quantized,
            device,
            dtype,
            next,
        };
        let mut result = attempt
            .run(from_cache, opened, &mut prefetched, tracker)
            .await;
        if let Err(error) = &result {
            source.shard_failed(&shard.file).await;
            if from_cache {
                // A cached copy that does not verify is dropped; the network gets one chance.
                tracing::warn!("cached {} is bad ({error}); fetching it again", shard.file);
                tracker.rewind_to(bytes_before, tensors_before);
                if !source.is_cached(&shard.file).await {
                    attempt.next = None;
                    result = attempt.run(false, None, &mut prefetched, tracker).await;
                    if result.is_err() {
                        source.shard_failed(&shard.file).await;
                    }
                }
            }
        }
        let tensors = result.map_err(|error| LoadError::shard(&shard.file, error))?;
        source.shard_verified(&shard.file).await;
        weights.commit_shard(&shard.file, tensors);
        device
            .flush()
            .map_err(|e| LoadError::Device(format!("{e:?}")))?;
        tracker.shard_done();
    }
    tracker.set_phase(Phase::Upload);
    #[cfg(not(target_arch = "wasm32"))]
    device
        .sync()
        .map_err(|e| LoadError::Device(format!("{e:?}")))?;
    Ok(())
}

/// The next shard's stream, opened while the current one is verified, so that the download
/// does not wait for hashing and cache writes.
struct Opened {
    file: String,
    from_cache: bool,
    stream: Result<ByteStream, SourceError>,
}

/// One try at one shard.
struct Attempt<'a, S: ?Sized> {
    source: &'a S,
    shard: &'a ShardInfo,
    expected: &'a BTreeSet<&'a str>,
    /// The index's quantized tensors (every other tensor is a float).
    quantized: &'a std::collections::BTreeMap<String, super::quant::QuantInfo>,
    device: &'a Device,
    dtype: DType,
    /// The shard to open once this one's bytes are all in.
    next: Option<&'a ShardInfo>,
}

impl<S: ShardSource + ?Sized> Attempt<'_, S> {
    async fn run<F: FnMut(&LoadProgress)>(
        &self,
        from_cache: bool,
        opened: Option<Result<ByteStream, SourceError>>,
        prefetched: &mut Option<Opened>,
        tracker: &mut ProgressTracker<F>,
    ) -> Result<Vec<(String, StoredTensor)>, ShardError> {
        let Self {
            source,
            shard,
            expected,
            quantized,
            device,
            dtype,
            next,
        } = *self;
        tracker.set_from_cache(from_cache);
        tracker.set_phase(Phase::Fetch);
        let opened = match opened {
            Some(stream) => stream,
            None => source.open_shard(&shard.file).await,
        };
        let mut stream = opened.map_err(|e| ShardError::Open(e.to_string()))?;
        let mut parser = new_parser(source, shard);
        let mut uploaded: Vec<(String, StoredTensor)> = Vec::with_capacity(expected.len());
        let mut unflushed = 0usize;
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| ShardError::Stream {
                received: parser.received(),
                message: e.to_string(),
            })?;
            let before = uploaded.len();
            parser
                .feed(&chunk, &mut |raw| {
                    if !expected.contains(raw.name) {
                        return Err(ShardError::NotInIndex {
                            name: raw.name.to_string(),
                        });
                    }
                    let bad = |message| ShardError::BadTensor {
                        name: raw.name.to_string(),
                        message,
                    };
                    let stored = match quantized.get(raw.name) {
                        Some(info) => StoredTensor::upload_quantized(
                            info, raw.dtype, raw.bytes, device, dtype,
                        )
                        .map_err(bad)?,
                        None if raw.dtype == safetensors::Dtype::U8 => {
                            return Err(bad(
                                "stored as U8 but the index does not list it as quantized".into(),
                            ));
                        }
                        None => {
                            StoredTensor::upload(raw.dtype, raw.shape, raw.bytes, device, dtype)
                                .map_err(|message| ShardError::Upload {
                                    name: raw.name.to_string(),
                                    message,
                                })?
                        }
                    };
                    uploaded.push((raw.name.to_string(), stored));
                    Ok(())
                })
                .map_err(|e| match e {
                    FeedError::Shard(e) | FeedError::Sink(e) => e,
                })?;
            for (_, tensor) in &uploaded[before..] {
                unflushed += tensor.device_bytes;
            }
            if unflushed >= FLUSH_EVERY {
                // Hand queued uploads to the device so their host copies can go: without this a
                // backend that queues writes holds them all, and memory grows with the model.
                device.flush().map_err(|e| ShardError::Upload {
                    name: format!("(flush after {} tensors)", uploaded.len()),
                    message: format!("{e:?}"),
                })?;
                unflushed = 0;
            }
            tracker.add_tensors(uploaded.len() - before);
            tracker.add_bytes(chunk.len() as u64);
        }

        // All bytes are in: start the next download before hashing this shard.
        if let Some(next) = next
            && prefetched.is_none()
        {
            *prefetched = Some(Opened {
                file: next.file.clone(),
                from_cache: source.is_cached(&next.file).await,
                stream: source.open_shard(&next.file).await,
            });
        }
        tracker.set_phase(Phase::Verify);
        let summary = finish(source, shard, parser).await?;
        let present: std::collections::HashSet<&str> =
            summary.tensors.iter().map(String::as_str).collect();
        if let Some(missing) = expected.iter().find(|name| !present.contains(*name)) {
            return Err(ShardError::MissingTensor {
                name: missing.to_string(),
            });
        }
        Ok(uploaded)
    }
}

/// What checking a cache found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CacheCheck {
    /// Cached shards whose size and sha256 match the index.
    pub verified: Vec<String>,
    /// Cached shards that did not verify; they were dropped (the next load refetches them).
    pub dropped: Vec<(String, String)>,
    /// Shards not in the cache.
    pub missing: Vec<String>,
}

/// Re-hash every cached shard of `index` without uploading anything; drop the bad ones.
pub async fn verify_cached<S: ShardSource + ?Sized>(source: &S, index: &ShardIndex) -> CacheCheck {
    let mut check = CacheCheck::default();
    for shard in &index.shards {
        if !source.is_cached(&shard.file).await {
            check.missing.push(shard.file.clone());
            continue;
        }
        match verify_shard_bytes(source, shard).await {
            Ok(()) => check.verified.push(shard.file.clone()),
            Err(error) => {
                source.shard_failed(&shard.file).await;
                check.dropped.push((shard.file.clone(), error.to_string()));
            }
        }
    }
    check
}

async fn verify_shard_bytes<S: ShardSource + ?Sized>(
    source: &S,
    shard: &ShardInfo,
) -> Result<(), ShardError> {
    let mut stream = source
        .open_shard(&shard.file)
        .await
        .map_err(|e| ShardError::Open(e.to_string()))?;
    let mut parser = new_parser(source, shard);
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| ShardError::Stream {
            received: parser.received(),
            message: e.to_string(),
        })?;
        parser.feed(&chunk, &mut |_| Ok(())).map_err(|e| match e {
            FeedError::Shard(e) | FeedError::Sink(e) => e,
        })?;
    }
    finish(source, shard, parser).await.map(|_| ())
}

fn new_parser<S: ShardSource + ?Sized>(source: &S, shard: &ShardInfo) -> ShardParser {
    if source.digests_shards() {
        ShardParser::with_external_digest(shard)
    } else {
        ShardParser::new(shard)
    }
}

/// Size check, then the hash: the parser's own, or the source's.
async fn finish<S: ShardSource + ?Sized>(
    source: &S,
    shard: &ShardInfo,
    parser: ShardParser,
) -> Result<super::parse::ShardSummary, ShardError> {
    let received = parser.received();
    let summary = parser.finish()?;
    if source.digests_shards() {
        let actual = source
            .shard_digest(&shard.file)
            .await
            .map_err(|e| ShardError::Stream {
                received,
                message: format!("hashing: {e}"),
            })?
            .to_ascii_lowercase();
        if actual != shard.sha256.to_ascii_lowercase() {
            return Err(ShardError::HashMismatch {
                expected: shard.sha256.to_ascii_lowercase(),
                actual,
            });
        }
    }
    Ok(summary)
}
