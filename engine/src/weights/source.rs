//! Where shard bytes come from: a folder (native), an HTTP server (native), or the browser's
//! `fetch` (wasm). Every source hands the loader a stream of byte chunks of whatever size the
//! transport delivers; the loader never needs a whole shard in memory.

use bytes::Bytes;
use futures::stream::BoxStream;
#[cfg(target_arch = "wasm32")]
use futures::stream::LocalBoxStream;
use thiserror::Error;

#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("{0}")]
pub struct SourceError(pub String);

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
    /// Where the model comes from, for messages.
    fn describe(&self) -> String;
}

#[cfg(not(target_arch = "wasm32"))]
pub use native::{DirSource, HttpSource};

#[cfg(not(target_arch = "wasm32"))]
mod native {
    use std::path::PathBuf;

    use futures::TryStreamExt;

    use super::*;
    use crate::weights::index::INDEX_FILE;

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
            tokio::fs::read(&path)
                .await
                .map_err(|e| SourceError(format!("{}: {e}", path.display())))
        }

        async fn open_shard(&self, file: &str) -> Result<ByteStream, SourceError> {
            let path = self.dir.join(file);
            let handle = tokio::fs::File::open(&path)
                .await
                .map_err(|e| SourceError(format!("{}: {e}", path.display())))?;
            let stream = tokio_util::io::ReaderStream::with_capacity(handle, self.chunk_size)
                .map_err(|e| SourceError(e.to_string()));
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
                .map_err(|e| SourceError(format!("GET {url}: {e}")))?;
            if !response.status().is_success() {
                return Err(SourceError(format!(
                    "GET {url}: HTTP {}",
                    response.status()
                )));
            }
            Ok(response)
        }
    }

    #[async_trait::async_trait]
    impl ShardSource for HttpSource {
        async fn read_index(&self) -> Result<Vec<u8>, SourceError> {
            let response = self.get(INDEX_FILE).await?;
            let body = response
                .bytes()
                .await
                .map_err(|e| SourceError(format!("reading the index: {e}")))?;
            Ok(body.to_vec())
        }

        async fn open_shard(&self, file: &str) -> Result<ByteStream, SourceError> {
            let response = self.get(file).await?;
            let stream = response
                .bytes_stream()
                .map_err(|e| SourceError(format!("connection: {e}")));
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

        async fn fetch(&self, file: &str) -> Result<web_sys::Response, SourceError> {
            let url = format!("{}{file}", self.base);
            let global = js_sys::global();
            let promise = if let Some(window) = global.dyn_ref::<web_sys::Window>() {
                window.fetch_with_str(&url)
            } else if let Some(worker) = global.dyn_ref::<web_sys::WorkerGlobalScope>() {
                worker.fetch_with_str(&url)
            } else {
                return Err(SourceError("no fetch in this JavaScript context".into()));
            };
            let response: web_sys::Response = JsFuture::from(promise)
                .await
                .map_err(|e| SourceError(format!("fetch {url}: {}", js_message(&e))))?
                .unchecked_into();
            if !response.ok() {
                return Err(SourceError(format!(
                    "fetch {url}: HTTP {}",
                    response.status()
                )));
            }
            Ok(response)
        }
    }

    fn js_message(value: &JsValue) -> String {
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
            let buffer = JsFuture::from(
                response
                    .array_buffer()
                    .map_err(|e| SourceError(js_message(&e)))?,
            )
            .await
            .map_err(|e| SourceError(format!("reading the index: {}", js_message(&e))))?;
            Ok(js_sys::Uint8Array::new(&buffer).to_vec())
        }

        async fn open_shard(&self, file: &str) -> Result<ByteStream, SourceError> {
            let response = self.fetch(file).await?;
            let body = response
                .body()
                .ok_or_else(|| SourceError(format!("{file}: response has no body")))?;
            let stream = wasm_streams::ReadableStream::from_raw(body)
                .into_stream()
                .map(|chunk| match chunk {
                    Ok(value) => Ok(Bytes::from(
                        value.unchecked_into::<js_sys::Uint8Array>().to_vec(),
                    )),
                    Err(e) => Err(SourceError(format!("connection: {}", js_message(&e)))),
                });
            Ok(Box::pin(stream))
        }

        fn describe(&self) -> String {
            self.base.clone()
        }
    }
}
