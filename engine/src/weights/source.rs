//! Where shard bytes come from: a folder (native), an HTTP server (native), or the browser's
//! `fetch` (wasm). Every source hands the loader a stream of byte chunks of whatever size the
//! transport delivers; the loader never needs a whole shard in memory.

use bytes::Bytes;
use futures::stream::BoxStream;
#[cfg(target_arch = "wasm32")]
use futures::stream::LocalBoxStream;
use thiserror::Error;

/// What a source could not do, and whether it is because the file is not there at all.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("{message}")]
pub struct SourceError {
    message: String,
    missing: bool,
}

impl SourceError {
    pub fn new(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            missing: false,
        }
    }

    /// The file is not there (no such file, HTTP 404 or 410): for an index, the model is not
    /// installed, which is not the same as a broken one.
    pub fn missing(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            missing: true,
        }
    }

    /// The server answered `status` for `what` (e.g. `GET <url>`).
    pub fn http(what: &str, status: u16) -> Self {
        let message = format!("{what}: HTTP {status}");
        match status {
            404 | 410 => Self::missing(message),
            _ => Self::new(message),
        }
    }

    pub fn is_missing(&self) -> bool {
        self.missing
    }
}

/// A shard's bytes as they arrive.
#[cfg(not(target_arch = "wasm32"))]
pub type ByteStream = BoxStream<'static, Result<Bytes, SourceError>>;
#[cfg(target_arch = "wasm32")]
pub type ByteStream = LocalBoxStream<'static, Result<Bytes, SourceError>>;

/// Convert any `Send` chunk stream into a [`ByteStream`] (also on wasm, where it drops `Send`).
pub fn boxed<S>(stream: S) -> ByteStream
where
    S: futures::Stream<Item = Result<Bytes, SourceError>> + Send + 'static,
{
    let stream: BoxStream<'static, _> = Box::pin(stream);
    #[cfg(target_arch = "wasm32")]
    let stream: ByteStream = Box::pin(stream);
    stream
}

/// Natively a source is shared with the runtime's threads; in the browser nothing is `Send`.
#[cfg(not(target_arch = "wasm32"))]
pub trait MaybeSync: Send + Sync {}
#[cfg(not(target_arch = "wasm32"))]
impl<T: Send + Sync + ?Sized> MaybeSync for T {}
#[cfg(target_arch = "wasm32")]
pub trait MaybeSync {}
#[cfg(target_arch = "wasm32")]
impl<T: ?Sized> MaybeSync for T {}

/// A place a shard set can be read from.
#[cfg_attr(not(target_arch = "wasm32"), async_trait::async_trait)]
#[cfg_attr(target_arch = "wasm32", async_trait::async_trait(?Send))]
pub trait ShardSource: MaybeSync {
    /// The whole index file (`model.safetensors.index.json`); it is small.
    async fn read_index(&self) -> Result<Vec<u8>, SourceError>;
    /// A stream of the shard's bytes.
    async fn open_shard(&self, file: &str) -> Result<ByteStream, SourceError>;
    /// Whether `file` will be served from a local cache rather than the network.
    async fn is_cached(&self, _file: &str) -> bool {
        false
    }
    /// Whether this source computes each shard's sha256 itself ([`ShardSource::shard_digest`]),
    /// faster than the parser can (the browser's WebCrypto).
    fn digests_shards(&self) -> bool {
        false
    }
    /// The hex sha256 of the bytes the last stream of `file` delivered (after it ended).
    async fn shard_digest(&self, file: &str) -> Result<String, SourceError> {
        Err(SourceError::new(format!(
            "{file}: this source does not hash shards"
        )))
    }
    /// The loader verified `file` (size and sha256): a caching source may now keep it.
    async fn shard_verified(&self, _file: &str) {}
    /// `file` failed to load or verify: a caching source must not keep it, and drops any copy
    /// it served, so the next attempt goes to the network.
    async fn shard_failed(&self, _file: &str) {}
    /// Where the model comes from, for messages.
    fn describe(&self) -> String;
}

/// Read an index's body as it arrives, refusing it once it passes [`MAX_INDEX_BYTES`] (or when
/// the server declares more up front): a hostile or mistaken server cannot make us hold more
/// than an index could be.
///
/// [`MAX_INDEX_BYTES`]: super::index::MAX_INDEX_BYTES
pub async fn read_index_body(
    declared: Option<u64>,
    mut stream: ByteStream,
) -> Result<Vec<u8>, SourceError> {
    use futures::StreamExt;
    let limit = super::index::MAX_INDEX_BYTES;
    let over = || SourceError::new(format!("the index is over {limit} bytes"));
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(over());
    }
    let mut body = Vec::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| SourceError::new(format!("reading the index: {e}")))?;
        if body.len() + chunk.len() > limit {
            return Err(over());
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// The length of one buffer holding chunks of `lengths` bytes (JavaScript typed arrays are
/// indexed by `u32`): summed in 64 bits, so a shard near the 4 GiB cap is refused by name
/// instead of wrapping to a small, wrong total.
pub fn whole_length(file: &str, lengths: impl Iterator<Item = u32>) -> Result<u32, SourceError> {
    let total: u64 = lengths.map(u64::from).sum();
    u32::try_from(total).map_err(|_| {
        SourceError::new(format!(
            "{file}: {total} bytes streamed; one buffer holds at most {} bytes",
            u32::MAX
        ))
    })
}

#[cfg(not(target_arch = "wasm32"))]
pub use native::{DirSource, HttpSource};

#[cfg(not(target_arch = "wasm32"))]
mod native {
    use std::path::PathBuf;

    use futures::TryStreamExt;

    use super::*;
    use crate::weights::index::{INDEX_FILE, MAX_INDEX_BYTES};

    /// A shard set in a local folder, streamed in chunks.
    #[derive(Debug, Clone)]
    pub struct DirSource {
        pub dir: PathBuf,
        pub chunk_size: usize,
    }

    impl DirSource {
        pub fn new(dir: impl Into<PathBuf>) -> Self {
            Self {
                dir: dir.into(),
                chunk_size: 1 << 20,
            }
        }
    }

    #[async_trait::async_trait]
    impl ShardSource for DirSource {
        async fn read_index(&self) -> Result<Vec<u8>, SourceError> {
            let path = self.dir.join(INDEX_FILE);
            let size = tokio::fs::metadata(&path)
                .await
                .map_err(|e| match e.kind() {
                    std::io::ErrorKind::NotFound => {
                        SourceError::missing(format!("{}: {e}", path.display()))
                    }
                    _ => SourceError::new(format!("{}: {e}", path.display())),
                })?
                .len();
            if size > MAX_INDEX_BYTES as u64 {
                return Err(SourceError::new(format!(
                    "{}: {size} bytes; an index is at most {MAX_INDEX_BYTES}",
                    path.display()
                )));
            }
            tokio::fs::read(&path)
                .await
                .map_err(|e| SourceError::new(format!("{}: {e}", path.display())))
        }

        async fn open_shard(&self, file: &str) -> Result<ByteStream, SourceError> {
            let path = self.dir.join(file);
            let handle = tokio::fs::File::open(&path)
                .await
                .map_err(|e| SourceError::new(format!("{}: {e}", path.display())))?;
            let stream = tokio_util::io::ReaderStream::with_capacity(handle, self.chunk_size)
                .map_err(|e| SourceError::new(e.to_string()));
            Ok(boxed(stream))
        }

        async fn is_cached(&self, _file: &str) -> bool {
            true
        }

        fn describe(&self) -> String {
            self.dir.display().to_string()
        }
    }

    /// A shard set served over HTTP (`<base>/model.safetensors.index.json`, `<base>/<shard>`).
    #[derive(Debug, Clone)]
    pub struct HttpSource {
        pub base: String,
        pub client: reqwest::Client,
    }

    impl HttpSource {
        pub fn new(base: impl Into<String>) -> Self {
            let mut base = base.into();
            if !base.ends_with('/') {
                base.push('/');
            }
            Self {
                base,
                client: reqwest::Client::new(),
            }
        }

        async fn get(&self, file: &str) -> Result<reqwest::Response, SourceError> {
            let url = format!("{}{file}", self.base);
            let response = self
                .client
                .get(&url)
                .send()
                .await
                .map_err(|e| SourceError::new(format!("GET {url}: {e}")))?;
            if !response.status().is_success() {
                return Err(SourceError::http(
                    &format!("GET {url}"),
                    response.status().as_u16(),
                ));
            }
            Ok(response)
        }
    }

    #[async_trait::async_trait]
    impl ShardSource for HttpSource {
        async fn read_index(&self) -> Result<Vec<u8>, SourceError> {
            let response = self.get(INDEX_FILE).await?;
            let declared = response.content_length();
            let stream = response
                .bytes_stream()
                .map_err(|e| SourceError::new(format!("connection: {e}")));
            super::read_index_body(declared, boxed(stream)).await
        }

        async fn open_shard(&self, file: &str) -> Result<ByteStream, SourceError> {
            let response = self.get(file).await?;
            let stream = response
                .bytes_stream()
                .map_err(|e| SourceError::new(format!("connection: {e}")));
            Ok(boxed(stream))
        }

        fn describe(&self) -> String {
            self.base.clone()
        }
    }
}

#[cfg(target_arch = "wasm32")]
pub use web::FetchSource;

#[cfg(target_arch = "wasm32")]
mod web {
    use futures::StreamExt;
    use wasm_bindgen::{JsCast, JsValue};
    use wasm_bindgen_futures::JsFuture;

    use super::*;
    use crate::weights::index::INDEX_FILE;

    pub(super) fn body_stream(
        response: web_sys::Response,
        file: &str,
    ) -> Result<ByteStream, SourceError> {
        let body = response
            .body()
            .ok_or_else(|| SourceError::new(format!("{file}: response has no body")))?;
        let stream = wasm_streams::ReadableStream::from_raw(body)
            .into_stream()
            .map(|chunk| match chunk {
                Ok(value) => Ok(Bytes::from(
                    value.unchecked_into::<js_sys::Uint8Array>().to_vec(),
                )),
                Err(e) => Err(SourceError::new(format!("connection: {}", js_message(&e)))),
            });
        Ok(Box::pin(stream))
    }

    /// A shard set fetched by the browser; the body is read as a `ReadableStream`.
    #[derive(Debug, Clone)]
    pub struct FetchSource {
        pub base: String,
    }

    impl FetchSource {
        pub fn new(base: impl Into<String>) -> Self {
            let mut base = base.into();
            if !base.ends_with('/') {
                base.push('/');
            }
            Self { base }
        }

        pub(super) async fn fetch(&self, file: &str) -> Result<web_sys::Response, SourceError> {
            let url = format!("{}{file}", self.base);
            let global = js_sys::global();
            let promise = if let Some(window) = global.dyn_ref::<web_sys::Window>() {
                window.fetch_with_str(&url)
            } else if let Some(worker) = global.dyn_ref::<web_sys::WorkerGlobalScope>() {
                worker.fetch_with_str(&url)
            } else {
                return Err(SourceError::new("no fetch in this JavaScript context"));
            };
            let response: web_sys::Response = JsFuture::from(promise)
                .await
                .map_err(|e| SourceError::new(format!("fetch {url}: {}", js_message(&e))))?
                .unchecked_into();
            if !response.ok() {
                return Err(SourceError::http(
                    &format!("fetch {url}"),
                    response.status(),
                ));
            }
            Ok(response)
        }
    }

    /// A readable message from a thrown JavaScript value (`Error.message`, `DOMException` name
    /// and message, or the value itself).
    pub fn js_message(value: &JsValue) -> String {
        if let Some(e) = value.dyn_ref::<web_sys::DomException>() {
            return format!("{}: {}", e.name(), e.message());
        }
        value
            .dyn_ref::<js_sys::Error>()
            .map(|e| String::from(e.message()))
            .or_else(|| value.as_string())
            .unwrap_or_else(|| format!("{value:?}"))
    }

    #[async_trait::async_trait(?Send)]
    impl ShardSource for FetchSource {
        async fn read_index(&self) -> Result<Vec<u8>, SourceError> {
            let response = self.fetch(INDEX_FILE).await?;
            let declared = response
                .headers()
                .get("content-length")
                .ok()
                .flatten()
                .and_then(|n| n.trim().parse::<u64>().ok());
            super::read_index_body(declared, body_stream(response, INDEX_FILE)?).await
        }

        async fn open_shard(&self, file: &str) -> Result<ByteStream, SourceError> {
            body_stream(self.fetch(file).await?, file)
        }

        fn describe(&self) -> String {
            self.base.clone()
        }
    }
}

#[cfg(target_arch = "wasm32")]
pub use cache::{CachedFetchSource, delete_cache};

/// The browser's Cache Storage in front of [`FetchSource`]: shards are stored only after the
/// loader verified them, served from the cache on the next visit (and offline), and dropped
/// when they fail. When the browser refuses to store (quota), loading goes on from the network
/// and the model lives in memory for the session.
#[cfg(target_arch = "wasm32")]
mod cache {
    use std::cell::RefCell;
    use std::collections::HashMap;
    use std::rc::Rc;

    use futures::StreamExt;
    use wasm_bindgen::{JsCast, JsValue};
    use wasm_bindgen_futures::JsFuture;

    use super::web::js_message;
    use super::*;
    use crate::weights::index::{INDEX_FILE, looks_like_html};

    type Chunks = Rc<RefCell<Vec<js_sys::Uint8Array>>>;

    pub struct CachedFetchSource {
        pub network: super::FetchSource,
        cache_name: String,
        /// The JavaScript chunks of the shard being streamed (kept outside the wasm heap) and
        /// whether they came from the network: hashed by WebCrypto at the end of the stream,
        /// then stored once the loader's verdict is in.
        pending: RefCell<HashMap<String, (Chunks, bool)>>,
        storage_error: Rc<RefCell<Option<String>>>,
        /// Cache writes still running: they overlap the next shard's download.
        writes: RefCell<Vec<js_sys::Promise>>,
    }

    fn caches() -> Result<web_sys::CacheStorage, SourceError> {
        let global = js_sys::global();
        let caches = if let Some(window) = global.dyn_ref::<web_sys::Window>() {
            window.caches()
        } else if let Some(worker) = global.dyn_ref::<web_sys::WorkerGlobalScope>() {
            worker.caches()
        } else {
            return Err(SourceError::new(
                "no Cache Storage in this JavaScript context",
            ));
        };
        caches.map_err(|e| SourceError::new(format!("Cache Storage: {}", js_message(&e))))
    }

    async fn open_cache(name: &str) -> Result<web_sys::Cache, SourceError> {
        let cache = JsFuture::from(caches()?.open(name))
            .await
            .map_err(|e| SourceError::new(format!("opening cache {name}: {}", js_message(&e))))?;
        Ok(cache.unchecked_into())
    }

    /// Delete a whole cache (the "clear model cache" control).
    pub async fn delete_cache(name: &str) -> Result<bool, SourceError> {
        let deleted = JsFuture::from(caches()?.delete(name))
            .await
            .map_err(|e| SourceError::new(js_message(&e)))?;
        Ok(deleted.as_bool().unwrap_or(false))
    }

    impl CachedFetchSource {
        pub fn new(network: super::FetchSource, cache_name: impl Into<String>) -> Self {
            Self {
                network,
                cache_name: cache_name.into(),
                pending: RefCell::new(HashMap::new()),
                storage_error: Rc::default(),
                writes: RefCell::default(),
            }
        }

        pub fn cache_name(&self) -> &str {
            &self.cache_name
        }

        /// Why shards could not be stored, if the browser refused (quota, private mode).
        pub fn storage_error(&self) -> Option<String> {
            self.storage_error.borrow().clone()
        }

        fn url(&self, file: &str) -> String {
            format!("{}{file}", self.network.base)
        }

        async fn cached(&self, file: &str) -> Option<web_sys::Response> {
            let cache = open_cache(&self.cache_name).await.ok()?;
            let found = JsFuture::from(cache.match_with_str(&self.url(file)))
                .await
                .ok()?;
            found.dyn_into::<web_sys::Response>().ok()
        }

        /// Store `response` under `file` in the background; [`Self::settle`] waits for it.
        fn put(&self, file: &str, response: web_sys::Response) {
            let (name, url) = (self.cache_name.clone(), self.url(file));
            let error = self.storage_error.clone();
            let write = wasm_bindgen_futures::future_to_promise(async move {
                let result = async {
                    let cache = open_cache(&name).await?;
                    JsFuture::from(cache.put_with_str(&url, &response))
                        .await
                        .map_err(|e| SourceError::new(js_message(&e)))
                }
                .await;
                if let Err(e) = result {
                    tracing::warn!("not caching {url}: {e}");
                    error.borrow_mut().get_or_insert(e.to_string());
                }
                Ok(JsValue::UNDEFINED)
            });
            self.writes.borrow_mut().push(write);
        }

        /// Wait for every cache write started so far (call before reporting a model ready, so
        /// that a reload right after finds it all in the cache).
        pub async fn settle(&self) {
            let writes: Vec<js_sys::Promise> = self.writes.borrow_mut().drain(..).collect();
            for write in writes {
                let _ = JsFuture::from(write).await;
            }
        }

        async fn delete(&self, file: &str) {
            if let Ok(cache) = open_cache(&self.cache_name).await {
                let _ = JsFuture::from(cache.delete_with_str(&self.url(file))).await;
            }
        }
    }

    fn bytes_response(bytes: &[u8]) -> Result<web_sys::Response, SourceError> {
        let mut copy = bytes.to_vec();
        web_sys::Response::new_with_opt_u8_array(Some(&mut copy))
            .map_err(|e| SourceError::new(js_message(&e)))
    }

    #[async_trait::async_trait(?Send)]
    impl ShardSource for CachedFetchSource {
        /// Network first (a newer model version wins); the cached index when offline.
        async fn read_index(&self) -> Result<Vec<u8>, SourceError> {
            match self.network.read_index().await {
                Ok(bytes)
                    if !looks_like_html(&bytes)
                        && serde_json::from_slice::<serde_json::Value>(&bytes).is_ok() =>
                {
                    if let Ok(response) = bytes_response(&bytes) {
                        self.put(INDEX_FILE, response);
                    }
                    Ok(bytes)
                }
                Ok(bytes) => Ok(bytes),
                Err(network) => {
                    let Some(response) = self.cached(INDEX_FILE).await else {
                        return Err(network);
                    };
                    let buffer = JsFuture::from(
                        response
                            .array_buffer()
                            .map_err(|e| SourceError::new(js_message(&e)))?,
                    )
                    .await
                    .map_err(|e| SourceError::new(js_message(&e)))?;
                    tracing::info!("offline ({network}); using the cached index");
                    Ok(js_sys::Uint8Array::new(&buffer).to_vec())
                }
            }
        }

        async fn open_shard(&self, file: &str) -> Result<ByteStream, SourceError> {
            let (response, from_network) = match self.cached(file).await {
                Some(response) => (response, false),
                None => (self.network.fetch(file).await?, true),
            };
            let body = response
                .body()
                .ok_or_else(|| SourceError::new(format!("{file}: response has no body")))?;
            let chunks: Chunks = Rc::default();
            self.pending
                .borrow_mut()
                .insert(file.to_string(), (chunks.clone(), from_network));
            let stream = wasm_streams::ReadableStream::from_raw(body)
                .into_stream()
                .map(move |chunk| match chunk {
                    Ok(value) => {
                        let array: js_sys::Uint8Array = value.unchecked_into();
                        let bytes = Bytes::from(array.to_vec());
                        chunks.borrow_mut().push(array);
                        Ok(bytes)
                    }
                    Err(e) => Err(SourceError::new(format!("connection: {}", js_message(&e)))),
                });
            Ok(Box::pin(stream))
        }

        fn digests_shards(&self) -> bool {
            true
        }

        /// SHA-256 of the bytes just streamed, by the browser's WebCrypto (native code).
        async fn shard_digest(&self, file: &str) -> Result<String, SourceError> {
            let chunks = self
                .pending
                .borrow()
                .get(file)
                .map(|(chunks, _)| chunks.clone())
                .ok_or_else(|| SourceError::new(format!("{file}: nothing streamed to hash")))?;
            let whole = {
                let chunks = chunks.borrow();
                let total = super::whole_length(file, chunks.iter().map(|c| c.length()))?;
                let whole = js_sys::Uint8Array::new_with_length(total);
                let mut at = 0;
                for chunk in chunks.iter() {
                    whole.set(chunk, at);
                    at += chunk.length();
                }
                whole
            };
            let js = |e: JsValue| SourceError::new(format!("WebCrypto: {}", js_message(&e)));
            let crypto = js_sys::Reflect::get(&js_sys::global(), &"crypto".into()).map_err(js)?;
            let subtle = js_sys::Reflect::get(&crypto, &"subtle".into()).map_err(js)?;
            let digest: js_sys::Function = js_sys::Reflect::get(&subtle, &"digest".into())
                .map_err(js)?
                .dyn_into()
                .map_err(js)?;
            let promise: js_sys::Promise = digest
                .call2(&subtle, &"SHA-256".into(), &whole)
                .map_err(js)?
                .dyn_into()
                .map_err(js)?;
            let buffer = JsFuture::from(promise).await.map_err(js)?;
            Ok(hex::encode(js_sys::Uint8Array::new(&buffer).to_vec()))
        }

        async fn is_cached(&self, file: &str) -> bool {
            self.cached(file).await.is_some()
        }

        async fn shard_verified(&self, file: &str) {
            let Some((chunks, from_network)) = self.pending.borrow_mut().remove(file) else {
                return;
            };
            if !from_network || self.storage_error.borrow().is_some() {
                return;
            }
            let parts = js_sys::Array::new();
            for chunk in chunks.borrow_mut().drain(..) {
                parts.push(&chunk);
            }
            let response = web_sys::Blob::new_with_u8_array_sequence(&parts)
                .and_then(|blob| web_sys::Response::new_with_opt_blob(Some(&blob)));
            match response {
                Ok(response) => self.put(file, response),
                Err(e) => {
                    self.storage_error
                        .borrow_mut()
                        .get_or_insert(js_message(&e));
                }
            }
        }

        async fn shard_failed(&self, file: &str) {
            self.pending.borrow_mut().remove(file);
            self.delete(file).await;
        }

        fn describe(&self) -> String {
            self.network.base.clone()
        }
    }
}

#[cfg(all(test, not(target_arch = "wasm32")))]
mod bounds {
    use super::*;
    use crate::weights::index::MAX_INDEX_BYTES;

    #[test]
    fn buffer_lengths_are_summed_in_64_bits() {
        assert_eq!(whole_length("s", [1u32, 2, 3].into_iter()), Ok(6));
        // Two 2.5 GiB chunks: 5 GiB, which a u32 sum wraps to 1 GiB.
        let wrapped = 5u32 << 29;
        let error = whole_length("s", [wrapped, wrapped].into_iter()).unwrap_err();
        assert!(error.to_string().contains("5368709120 bytes"), "{error}");
    }

    #[test]
    fn an_index_is_read_within_its_bound() {
        let chunks = |n: usize| {
            let stream = futures::stream::iter(
                (0..n).map(|_| Ok::<_, SourceError>(Bytes::from(vec![b' '; 1 << 20]))),
            );
            boxed(stream)
        };
        let run = |declared, n| futures::executor::block_on(read_index_body(declared, chunks(n)));
        assert_eq!(run(None, 2).unwrap().len(), 2 << 20);
        let over = MAX_INDEX_BYTES / (1 << 20) + 1;
        assert!(run(None, over).unwrap_err().to_string().contains("over"));
        // Declared too large: refused before a byte is read.
        let declared = Some(MAX_INDEX_BYTES as u64 + 1);
        assert!(run(declared, 0).unwrap_err().to_string().contains("over"));
    }
}
