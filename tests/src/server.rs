//! A real HTTP/1.1 server for the browser tests: serves the trunk-built app and the model shard
//! sets, logs every request, and injects faults per shard: first-byte delay and throttling,
//! truncation, a corrupted byte, an HTML page with status 200, a connection dropped half-way,
//! refusing model requests, and going fully offline (every connection dropped).

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::broadcast;

type Body = BoxBody<Bytes, std::io::Error>;

/// What goes wrong with one shard's response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// A consistent but short response (Content-Length matches the bytes sent).
    Truncate,
    /// One byte in the middle flipped.
    CorruptByte,
    /// An HTML error page with status 200, as a misconfigured CDN serves.
    Html,
    /// The connection is reset after half the body.
    DropAtHalf,
    /// A plain HTTP error status.
    Status(u16),
    /// Half the body, then nothing more (the connection stays open): a load that never ends.
    Stall,
    /// Half the body, then the rest once [`Server::open_gate`] is called: a load that is
    /// certainly partway while a test looks, and then finishes.
    Gate,
}

/// Slow shard responses.
#[derive(Debug, Clone, Copy, Default)]
pub struct Throttle {
    /// Before the response headers.
    pub first_byte_delay: Duration,
    /// Body rate; `None` is as fast as possible.
    pub bytes_per_sec: Option<u64>,
}

#[derive(Debug, Clone)]
pub struct LogEntry {
    pub path: String,
    pub status: u16,
    pub started: Instant,
    /// When the whole body was handed to the connection (`None`: not (yet) complete).
    pub completed: Option<Instant>,
}

/// A file served from memory: its content type, bytes and any further headers.
#[derive(Clone)]
struct Extra {
    content_type: String,
    bytes: Bytes,
    headers: Vec<(String, String)>,
}

struct State {
    dist: PathBuf,
    models: PathBuf,
    extra: Mutex<HashMap<String, Extra>>,
    faults: Mutex<HashMap<String, Fault>>,
    throttle: Mutex<Throttle>,
    refuse_models: AtomicBool,
    offline: AtomicBool,
    kill: broadcast::Sender<()>,
    log: Mutex<Vec<LogEntry>>,
    /// Model files under this path prefix wait (before their headers) until released.
    held: Mutex<Option<String>>,
    released: tokio::sync::Notify,
    gate_open: AtomicBool,
    gate: tokio::sync::Notify,
}

pub struct Server {
    pub addr: SocketAddr,
    state: Arc<State>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
        let _ = self.state.kill.send(());
    }
}

impl Server {
    /// Serve `dist` at `/` and `models` at `/models/` on a free loopback port.
    pub async fn start(dist: &Path, models: &Path) -> anyhow::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (kill, _) = broadcast::channel(4);
        let state = Arc::new(State {
            dist: dist.to_path_buf(),
            models: models.to_path_buf(),
            extra: Mutex::new(HashMap::new()),
            faults: Mutex::new(HashMap::new()),
            throttle: Mutex::new(Throttle::default()),
            refuse_models: AtomicBool::new(false),
            offline: AtomicBool::new(false),
            kill,
            log: Mutex::new(Vec::new()),
            held: Mutex::new(None),
            released: tokio::sync::Notify::new(),
            gate_open: AtomicBool::new(false),
            gate: tokio::sync::Notify::new(),
        });
        let task = tokio::spawn(accept_loop(listener, state.clone()));
        Ok(Self { addr, state, task })
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}/{}", self.addr, path.trim_start_matches('/'))
    }

    /// Serve `bytes` at `path` (e.g. a config file).
    pub fn put_file(&self, path: &str, content_type: &str, bytes: impl Into<Bytes>) {
        self.put_file_with(path, content_type, bytes, &[]);
    }

    /// As [`Server::put_file`], with further response headers (say `Vary: *`).
    pub fn put_file_with(
        &self,
        path: &str,
        content_type: &str,
        bytes: impl Into<Bytes>,
        headers: &[(&str, &str)],
    ) {
        self.state.extra.lock().unwrap().insert(
            format!("/{}", path.trim_start_matches('/')),
            Extra {
                content_type: content_type.to_string(),
                bytes: bytes.into(),
                headers: headers
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            },
        );
    }

    pub fn set_fault(&self, shard_file: &str, fault: Fault) {
        self.state
            .faults
            .lock()
            .unwrap()
            .insert(shard_file.to_string(), fault);
    }

    /// Hold every model file whose path under `/models/` starts with `prefix` until
    /// [`Self::release`]: a load that is certainly not finished while the test looks.
    pub fn hold(&self, prefix: &str) {
        *self.state.held.lock().unwrap() = Some(prefix.to_string());
    }

    pub fn release(&self) {
        *self.state.held.lock().unwrap() = None;
        self.state.released.notify_waiters();
    }

    pub fn clear_faults(&self) {
        self.state.faults.lock().unwrap().clear();
    }

    /// Let every [`Fault::Gate`]d response finish (and later ones pass the gate at once).
    pub fn open_gate(&self) {
        self.state.gate_open.store(true, Ordering::SeqCst);
        self.state.gate.notify_waiters();
    }

    pub fn set_throttle(&self, throttle: Throttle) {
        *self.state.throttle.lock().unwrap() = throttle;
    }

    /// Answer every `/models/` request with 503.
    pub fn refuse_models(&self, refuse: bool) {
        self.state.refuse_models.store(refuse, Ordering::SeqCst);
    }

    /// Drop every open connection and every new one, as a dead network does.
    pub fn set_offline(&self, offline: bool) {
        self.state.offline.store(offline, Ordering::SeqCst);
        if offline {
            let _ = self.state.kill.send(());
        }
    }

    pub fn log(&self) -> Vec<LogEntry> {
        self.state.log.lock().unwrap().clone()
    }

    pub fn clear_log(&self) {
        self.state.log.lock().unwrap().clear();
    }

    /// Shard files (`*.safetensors`) whose whole body was sent with status 200, in order.
    pub fn completed_shards(&self) -> Vec<String> {
        self.log()
            .into_iter()
            .filter(|e| {
                e.status == 200 && e.completed.is_some() && e.path.ends_with(".safetensors")
            })
            .map(|e| e.path.rsplit('/').next().unwrap_or_default().to_string())
            .collect()
    }

    /// Shard requests of any outcome, in order.
    pub fn shard_requests(&self) -> Vec<String> {
        self.log()
            .into_iter()
            .filter(|e| e.path.ends_with(".safetensors"))
            .map(|e| e.path.rsplit('/').next().unwrap_or_default().to_string())
            .collect()
    }
}

async fn accept_loop(listener: TcpListener, state: Arc<State>) {
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            continue;
        };
        if state.offline.load(Ordering::SeqCst) {
            drop(tcp);
            continue;
        }
        let mut kill = state.kill.subscribe();
        let state = state.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request| handle(state.clone(), request));
            let connection = http1::Builder::new().serve_connection(TokioIo::new(tcp), service);
            tokio::select! {
                _ = connection => {}
                _ = kill.recv() => {} // dropping the connection closes the socket
            }
        });
    }
}

fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|e: Infallible| match e {})
        .boxed()
}

fn content_type(path: &str) -> &'static str {
    match path.rsplit('.').next().unwrap_or_default() {
        "html" => "text/html; charset=utf-8",
        "js" => "text/javascript",
        "wasm" => "application/wasm",
        "css" => "text/css",
        "json" => "application/json",
        _ => "application/octet-stream",
    }
}

fn record(state: &State, path: &str, status: u16, completed: bool) -> usize {
    let now = Instant::now();
    let mut log = state.log.lock().unwrap();
    log.push(LogEntry {
        path: path.to_string(),
        status,
        started: now,
        completed: completed.then_some(now),
    });
    log.len() - 1
}

fn respond(
    status: StatusCode,
    content_type: &str,
    body: Body,
    len: Option<usize>,
) -> Response<Body> {
    let mut builder = Response::builder()
        .status(status)
        .header("content-type", content_type)
        .header("cache-control", "no-store");
    if let Some(len) = len {
        builder = builder.header("content-length", len);
    }
    builder.body(body).expect("valid response")
}

async fn handle(
    state: Arc<State>,
    request: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let path = request.uri().path().to_string();
    if path.split('/').any(|part| part == "..") {
        record(&state, &path, 404, true);
        return Ok(respond(
            StatusCode::NOT_FOUND,
            "text/plain",
            full("not found"),
            None,
        ));
    }
    let extra = state.extra.lock().unwrap().get(&path).cloned();
    if let Some(extra) = extra {
        record(&state, &path, 200, true);
        let len = extra.bytes.len();
        let mut response = respond(
            StatusCode::OK,
            &extra.content_type,
            full(extra.bytes),
            Some(len),
        );
        for (name, value) in &extra.headers {
            if let (Ok(name), Ok(value)) = (
                hyper::header::HeaderName::from_bytes(name.as_bytes()),
                hyper::header::HeaderValue::from_str(value),
            ) {
                response.headers_mut().insert(name, value);
            }
        }
        return Ok(response);
    }
    if let Some(rest) = path.strip_prefix("/models/") {
        return Ok(serve_model_file(state.clone(), &path, rest).await);
    }
    let file = if path == "/" {
        "index.html"
    } else {
        path.trim_start_matches('/')
    };
    match tokio::fs::read(state.dist.join(file)).await {
        Ok(bytes) => {
            record(&state, &path, 200, true);
            let len = bytes.len();
            Ok(respond(
                StatusCode::OK,
                content_type(file),
                full(bytes),
                Some(len),
            ))
        }
        Err(_) => {
            record(&state, &path, 404, true);
            Ok(respond(
                StatusCode::NOT_FOUND,
                "text/plain",
                full("not found"),
                None,
            ))
        }
    }
}

async fn serve_model_file(state: Arc<State>, path: &str, rest: &str) -> Response<Body> {
    if state.refuse_models.load(Ordering::SeqCst) {
        record(&state, path, 503, true);
        return respond(
            StatusCode::SERVICE_UNAVAILABLE,
            "text/plain",
            full("refused"),
            None,
        );
    }
    loop {
        // Registered before the check, so a release in between is not missed.
        let released = state.released.notified();
        let held = state.held.lock().unwrap().clone();
        if !held.is_some_and(|prefix| rest.starts_with(&prefix)) {
            break;
        }
        released.await;
    }
    let Ok(bytes) = tokio::fs::read(state.models.join(rest)).await else {
        record(&state, path, 404, true);
        return respond(StatusCode::NOT_FOUND, "text/plain", full("not found"), None);
    };
    let file = rest.rsplit('/').next().unwrap_or_default().to_string();
    let is_shard = file.ends_with(".safetensors");
    let fault = state.faults.lock().unwrap().get(&file).copied();
    let throttle = *state.throttle.lock().unwrap();
    if is_shard && !throttle.first_byte_delay.is_zero() {
        tokio::time::sleep(throttle.first_byte_delay).await;
    }
    let mut bytes = bytes;
    match fault {
        Some(Fault::Status(code)) => {
            record(&state, path, code, true);
            let status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            return respond(status, "text/plain", full("injected error"), None);
        }
        Some(Fault::Html) => {
            record(&state, path, 200, true);
            let page = "<!DOCTYPE html><html><body><h1>Oops</h1>CDN error page</body></html>";
            return respond(StatusCode::OK, "text/html", full(page), Some(page.len()));
        }
        Some(Fault::Truncate) => bytes.truncate(bytes.len() * 3 / 4),
        Some(Fault::CorruptByte) => {
            let middle = bytes.len() / 2;
            bytes[middle] ^= 0x5a;
        }
        Some(Fault::DropAtHalf | Fault::Stall | Fault::Gate) | None => {}
    }
    let len = bytes.len();
    let entry = record(&state, path, 200, false);
    let drop_at = (fault == Some(Fault::DropAtHalf)).then_some(len / 2);
    let stall_at = (fault == Some(Fault::Stall)).then_some(len / 2);
    let gate_at = (fault == Some(Fault::Gate)).then_some(len / 2);
    let chunk = 64 << 10;
    let bytes = Bytes::from(bytes);
    let log_state = state.clone();
    let stream = futures::stream::unfold(0usize, move |at| {
        let bytes = bytes.clone();
        let state = log_state.clone();
        async move {
            if at == usize::MAX {
                return None; // after an injected reset
            }
            if at >= bytes.len() {
                return None;
            }
            if let Some(limit) = stall_at
                && at >= limit
            {
                futures::future::pending::<()>().await;
            }
            if gate_at == Some(at) {
                loop {
                    // Registered before the check, so an opening in between is not missed.
                    let opened = state.gate.notified();
                    if state.gate_open.load(Ordering::SeqCst) {
                        break;
                    }
                    opened.await;
                }
            }
            if let Some(limit) = drop_at
                && at >= limit
            {
                let reset = std::io::Error::new(std::io::ErrorKind::ConnectionReset, "injected");
                return Some((Err(reset), usize::MAX));
            }
            let end = (at + chunk).min(bytes.len());
            let end = drop_at
                .or(stall_at)
                .or(gate_at.filter(|&gate| at < gate))
                .map_or(end, |limit| end.min(limit.max(at + 1)));
            if let Some(rate) = throttle.bytes_per_sec.filter(|_| is_shard) {
                let secs = (end - at) as f64 / rate as f64;
                tokio::time::sleep(Duration::from_secs_f64(secs)).await;
            }
            if end == bytes.len() {
                // Hyper stops polling once Content-Length bytes are out: mark it here.
                state.log.lock().unwrap()[entry].completed = Some(Instant::now());
            }
            Some((Ok(Frame::data(bytes.slice(at..end))), end))
        }
    });
    let body = StreamBody::new(stream).boxed();
    respond(StatusCode::OK, content_type(&file), body, Some(len))
}
