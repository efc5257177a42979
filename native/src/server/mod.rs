//! `orfeas serve`: the original studio's HTTP API over the engine, for kiosks and scripts.
//!
//! It listens first and loads models after, on a thread of its own: `/api/health` answers
//! within milliseconds of start, whatever the model size, and generation requests get 503 with
//! `Retry-After` until the models are ready (`models`), then run as queued jobs (`jobs`). The
//! built web app and the shard sets are served as static files (`files`).

pub mod api;
pub mod connections;
pub mod files;
pub mod guard;
pub mod jobs;
pub mod models;
pub mod pipeline;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::routing::{get, post};
use burn::tensor::{DType, Device};

use jobs::{JobQueue, Jobs};
use models::Models;

pub struct AppState {
    pub models: Arc<Models>,
    pub jobs: Arc<dyn JobQueue>,
    pub limits: RequestLimits,
    /// Images decoded at once (decoding runs on the blocking pool, behind this; each decode
    /// holds its permit until it ends, whether or not its client is still there).
    pub decoding: Arc<tokio::sync::Semaphore>,
    pub started: Instant,
    /// How models are loaded, for `POST /api/models/retry` (`None`: retry unavailable).
    pub loader: Option<models::Loader>,
}

impl AppState {
    pub fn new(models: Arc<Models>, jobs: Arc<dyn JobQueue>, limits: RequestLimits) -> Self {
        Self {
            models,
            jobs,
            limits,
            decoding: Arc::new(tokio::sync::Semaphore::new(DECODERS)),
            started: Instant::now(),
            loader: None,
        }
    }
}

/// How much of a sent value (a parameter, a header, an id) an error message repeats.
pub const EXCERPT_CHARS: usize = 32;

/// `text` cut to its first `chars` characters, with `…` when it was longer.
pub fn cut(text: &str, chars: usize) -> String {
    let mut start: String = text.chars().take(chars).collect();
    if start.len() < text.len() {
        start.push('…');
    }
    start
}

/// `text` quoted, cut to its first [`EXCERPT_CHARS`] characters: an answer never repeats more
/// of a request than this.
pub fn excerpt(text: &str) -> String {
    format!("{:?}", cut(text, EXCERPT_CHARS))
}

/// Uploads decoded at the same time: each may hold a 64 MP image (256 MB) for a moment.
pub const DECODERS: usize = 2;

/// What one request may ask for.
#[derive(Debug, Clone)]
pub struct RequestLimits {
    pub max_upload_bytes: usize,
    pub max_steps: u32,
    pub max_octree: u32,
    /// The whole upload must arrive within this.
    pub body_timeout: Duration,
    /// Behind a trusted reverse proxy: the client (for its share of the queue) is the last
    /// address of `X-Forwarded-For`, which the proxy appends, not the proxy's own address.
    pub client_from_forwarded_for: bool,
}

impl Default for RequestLimits {
    fn default() -> Self {
        Self {
            max_upload_bytes: 32 << 20,
            max_steps: 100,
            max_octree: 512,
            body_timeout: Duration::from_secs(60),
            client_from_forwarded_for: false,
        }
    }
}

pub struct ServeOptions {
    pub bind: SocketAddr,
    pub models: Option<PathBuf>,
    /// Which installed precision of a shape model to load (`--quant`); `None`: the finest that
    /// fits the device.
    pub quant: Option<orfeas_engine::weights::Precision>,
    pub web: Option<PathBuf>,
    pub device: Device,
    pub dtype: DType,
    /// What the device can hold: a model that does not fit is refused before it loads.
    pub capacity: orfeas_engine::fit::Capacity,
    pub limits: RequestLimits,
    pub jobs: jobs::JobLimits,
    /// Hosts and origins let in beyond loopback and the server's own.
    pub access: guard::Access,
    /// Read model shards at most this fast (bytes/s): a stand-in for a slow disk or a far
    /// larger model, to see and test the loading state.
    pub load_throttle: Option<u64>,
    /// While this file exists, models wait to load (tests and demos of the loading state).
    pub hold_loading_while: Option<std::path::PathBuf>,
    /// Connections: how many, their timeouts, the grace period at shutdown.
    pub connections: connections::ConnectionLimits,
    /// A failed model is reloaded at most once in this long (`POST /api/models/retry`).
    pub retry_interval: Duration,
    /// Share the jobs with a fleet through NATS JetStream (`--queue nats://…`); `None`: this
    /// machine alone, its jobs in this process.
    pub fleet: Option<jobs::nats::FleetOptions>,
    /// While this file exists, a job taken waits before it runs (tests and demos of a worker
    /// stopping mid-job).
    pub hold_jobs_while: Option<PathBuf>,
}

/// The API and static routes over `state`, behind the Host/Origin guard.
pub fn router(
    state: Arc<AppState>,
    web: Option<&std::path::Path>,
    models: Option<&std::path::Path>,
    access: guard::Access,
) -> Router {
    let limit = state.limits.max_upload_bytes;
    let mut app = Router::new();
    if web.is_some_and(|web| !web.join("orfeas.json").exists()) && models.is_some() {
        app = app.route("/orfeas.json", get(api::site_config));
    }
    let mut app = app
        .route("/api/health", get(api::health))
        .route("/api/generate-3d", post(api::generate))
        .route("/api/jobs/{id}", get(api::job).delete(api::cancel_job))
        .route("/api/jobs/{id}/result", get(api::job_result))
        .route("/api/models/retry", post(api::retry_models))
        .route("/metrics", get(api::metrics))
        // Every extractor stops reading at the upload limit, whatever the framing; the
        // handler checks the declared length first and says so (413, Connection: close).
        .layer(axum::extract::DefaultBodyLimit::max(limit))
        .with_state(state);
    if let Some(models) = models {
        app = app.nest_service("/models", files::serve_dir(models, None));
    }
    if let Some(web) = web {
        app = app.fallback_service(files::serve_dir(web, Some(files::shell_policy(web))));
    }
    app.layer(axum::middleware::from_fn_with_state(
        Arc::new(access),
        guard::guard,
    ))
}

/// Listen on `options.bind`, print the address, load models in the background, serve until
/// SIGINT/SIGTERM.
pub async fn serve(options: ServeOptions) -> anyhow::Result<()> {
    let started = Instant::now();
    let descriptors = connections::raise_descriptor_limit();
    let mut connection_limits = options.connections.clone();
    connection_limits.max_connections =
        connections::connection_cap(connection_limits.max_connections, descriptors);
    let listener = tokio::net::TcpListener::bind(options.bind)
        .await
        .map_err(|e| anyhow::anyhow!("binding {}: {e}", options.bind))?;
    let address = listener.local_addr()?;
    let choice = models::PrecisionChoice {
        precision: options.quant,
        fit: Some((options.capacity.clone(), options.dtype)),
    };
    let models = Arc::new(Models::discover_with(options.models.as_deref(), &choice)?);
    let pipeline = Arc::new(pipeline::ModelPipeline::new(
        models.clone(),
        options.device.clone(),
    ));
    let runner = jobs::runner::RunnerOptions {
        timeout: options.jobs.timeout,
        hold_while: options.hold_jobs_while.clone(),
        ..Default::default()
    };
    let front_end_only = options.fleet.as_ref().is_some_and(|fleet| !fleet.worker);
    let jobs: Arc<dyn JobQueue> = match &options.fleet {
        None => Jobs::start_with(options.jobs.clone(), pipeline, runner),
        Some(fleet) => {
            jobs::nats::FleetQueue::start(fleet.clone(), options.jobs.clone(), pipeline, runner)
                .await?
        }
    };
    let mut state = AppState::new(models.clone(), jobs.clone(), options.limits.clone());
    state.started = started;
    let loader = models::Loader {
        throttle: options.load_throttle,
        hold_while: options.hold_loading_while.clone(),
        retry_interval: options.retry_interval,
        ..models::Loader::new(
            options.device.clone(),
            options.dtype,
            options.capacity.clone(),
        )
    };
    state.loader = Some(loader.clone());
    let mut access = options.access.clone();
    access.hosts.push(options.bind.ip().to_string());
    let app = router(
        Arc::new(state),
        options.web.as_deref(),
        options.models.as_deref(),
        access,
    );
    {
        use std::io::Write;
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "orfeas: listening on http://{address}");
        let _ = out.flush();
    }
    tracing::info!(
        "at most {} connection(s) at once (descriptor limit {})",
        connection_limits.max_connections,
        descriptors.map_or("unknown".into(), |d| d.to_string())
    );
    tracing::info!(
        "{} model(s) to load: {}",
        models.slots.len(),
        models
            .slots
            .iter()
            .map(|s| s.id.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    );
    // A front end only accepts and answers: its models (if any) are served, never loaded.
    let _loading = (!front_end_only).then(|| models::load_in_background(models, loader));
    let grace = connection_limits.shutdown_grace;
    let signal = shutdown_signal(jobs.clone(), options.fleet.is_some());
    let since = connections::serve_connections(listener, app, connection_limits, signal).await;
    // The running job was asked to stop at its next step: wait for that, within what is left
    // of the grace period, then go.
    let deadline = since + grace;
    while jobs.running_here() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    if jobs.running_here() {
        eprintln!("orfeas: the running job did not stop within the grace period");
    }
    eprintln!("orfeas: stopped");
    Ok(())
}

/// Wait for SIGINT or SIGTERM, then stop the jobs: this machine's are cancelled, a fleet's
/// (`shared`) go back to the queue for another worker.
async fn shutdown_signal(jobs: Arc<dyn JobQueue>, shared: bool) {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = interrupt => {}
        _ = terminate => {}
    }
    let stopped = jobs.shut_down();
    let what = if shared {
        "stopped and handed back to the queue"
    } else {
        "cancelled"
    };
    eprintln!("orfeas: shutting down ({stopped} job(s) {what})");
}
