//! `/api/*`: the original studio's endpoints (`health`, `generate-3d`) and the job endpoints.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use axum::Json;
use axum::body::Body;
use axum::extract::{
    ConnectInfo, FromRequest, FromRequestParts, Multipart, Path, Query, Request, State,
};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use futures::StreamExt;
use orfeas_engine::weights::NotReadyKind;
use serde::Deserialize;
use serde_json::{Value, json};

use super::jobs::{
    Cause, Format, GenerateParams, JobInput, JobStatus, Lookup, MeshFile, Reservation, StopReason,
    SubmitError,
};
use super::models::{Aggregate, Retry};
use super::{AppState, EXCERPT_CHARS, RequestLimits, cut, excerpt};
use orfeas_engine::pipeline::{COMPONENTS, OCTREE_RESOLUTION, STEPS, View, out_of_range};

/// The largest image accepted, in pixels (64 MP), and its longest side.
pub use orfeas_engine::input::{MAX_PIXELS, MAX_SIDE};

/// A job's working copy of the image: the pipeline's inputs are 1024² (background removal) and
/// 512² (the shape model), so a larger picture is shrunk to this longer side before it waits
/// in the queue.
pub const WORKING_SIDE: u32 = 2048;

/// Every error the API answers with, in one place: its status, its JSON body (`error` and
/// `status`, which the original studio's clients read) and its headers (`Retry-After` on the
/// retryable ones; `Connection: close` where the rest of an upload is not read).
#[derive(Debug)]
pub enum ApiError {
    /// 400: malformed or out of range; the message names the problem.
    BadRequest(String),
    /// 413: an upload over the limit.
    TooLarge(String),
    /// 408: an upload slower than the timeout.
    UploadTimeout { seconds: u64 },
    /// 503 while the models load, retry after their ETA.
    ModelsLoading { retry_after_s: u32, models: Value },
    /// 503: a model the request needs failed or is absent.
    ModelsNotReady { model: String, reason: String },
    /// 429: the queue is full.
    QueueFull,
    /// 429: this client already holds its share of the queue.
    ClientShare { limit: usize },
    /// 429: the model was retried moments ago.
    RetryTooSoon { retry_after_s: u64 },
    /// 500: the queue is closed (the server is stopping).
    QueueClosed,
    /// 404: a job id never issued.
    UnknownJob(String),
    /// 410: a finished job whose result was evicted.
    EvictedJob(String),
    /// 500: the job failed, our fault.
    JobFailed(String),
    /// 422: the job failed on what was sent (e.g. no surface in the picture): the same
    /// request would fail again.
    Unprocessable(String),
    /// 503: the job was cancelled.
    JobCancelled(String),
    /// 409: the request conflicts with the model's state.
    Conflict(String),
    /// 409: the job is not in a state for this; the body is its status, with `error`.
    JobState { job: JobStatus, message: String },
    /// 404: no such model.
    UnknownModel(String),
    /// 503: this server cannot do it.
    Unavailable(String),
    /// 503: the fleet's job queue (NATS) cannot be reached now; retry.
    QueueUnreachable(String),
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Unprocessable(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::UploadTimeout { .. } => StatusCode::REQUEST_TIMEOUT,
            ApiError::ModelsLoading { .. }
            | ApiError::ModelsNotReady { .. }
            | ApiError::JobCancelled(_)
            | ApiError::Unavailable(_)
            | ApiError::QueueUnreachable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::QueueFull | ApiError::ClientShare { .. } | ApiError::RetryTooSoon { .. } => {
                StatusCode::TOO_MANY_REQUESTS
            }
            ApiError::QueueClosed | ApiError::JobFailed(_) => StatusCode::INTERNAL_SERVER_ERROR,
            ApiError::UnknownJob(_) | ApiError::UnknownModel(_) => StatusCode::NOT_FOUND,
            ApiError::EvictedJob(_) => StatusCode::GONE,
            ApiError::Conflict(_) | ApiError::JobState { .. } => StatusCode::CONFLICT,
        }
    }

    /// The `status` field: what a client switches on.
    fn kind(&self) -> &'static str {
        match self {
            ApiError::BadRequest(_) => "bad_request",
            ApiError::TooLarge(_) => "too_large",
            ApiError::UploadTimeout { .. } => "timeout",
            ApiError::ModelsLoading { .. } => "models_loading",
            ApiError::ModelsNotReady { .. } => "models_not_ready",
            ApiError::QueueFull => "queue_full",
            ApiError::ClientShare { .. } => "client_share",
            ApiError::RetryTooSoon { .. } => "too_soon",
            ApiError::QueueClosed => "queue_closed",
            ApiError::UnknownJob(_) => "not_found",
            ApiError::EvictedJob(_) => "gone",
            ApiError::JobFailed(_) => "failed",
            ApiError::Unprocessable(_) => "unprocessable",
            ApiError::JobCancelled(_) => "cancelled",
            ApiError::Conflict(_) | ApiError::JobState { .. } => "conflict",
            ApiError::UnknownModel(_) => "unknown_model",
            ApiError::Unavailable(_) => "unavailable",
            ApiError::QueueUnreachable(_) => "queue_unreachable",
        }
    }

    /// The `error` field: what a person reads.
    fn message(&self) -> String {
        match self {
            ApiError::BadRequest(m)
            | ApiError::TooLarge(m)
            | ApiError::JobFailed(m)
            | ApiError::Unprocessable(m)
            | ApiError::Conflict(m)
            | ApiError::UnknownModel(m)
            | ApiError::Unavailable(m)
            | ApiError::QueueUnreachable(m)
            | ApiError::JobState { message: m, .. } => m.clone(),
            ApiError::UploadTimeout { seconds } => {
                format!("the upload took longer than {seconds} s")
            }
            ApiError::ModelsLoading { .. } => {
                "AI models still loading, wait a few seconds...".into()
            }
            ApiError::ModelsNotReady { reason, .. } => format!("AI models not ready: {reason}"),
            ApiError::QueueFull => "the generation queue is full, try again shortly".into(),
            ApiError::ClientShare { limit } => format!(
                "this client already has {limit} job(s) queued or running, its share of the \
                 queue; try again when one has finished"
            ),
            ApiError::RetryTooSoon { retry_after_s } => format!(
                "the model was retried moments ago; a failed model is reloaded at most once \
                 in a while: try again in {retry_after_s} s"
            ),
            ApiError::QueueClosed => {
                "the generation queue is closed (the server is stopping)".into()
            }
            ApiError::UnknownJob(id) => format!("no job {}", excerpt(id)),
            ApiError::EvictedJob(id) => format!(
                "job {} finished and its result was discarded (results are kept for a while)",
                excerpt(id)
            ),
            ApiError::JobCancelled(reason) => format!("the job was cancelled: {reason}"),
        }
    }

    /// Seconds a client should wait before trying again, where trying again can work.
    fn retry_after_s(&self) -> Option<u32> {
        match self {
            ApiError::ModelsLoading { retry_after_s, .. } => Some((*retry_after_s).max(1)),
            ApiError::ModelsNotReady { .. } => Some(30),
            ApiError::QueueFull | ApiError::ClientShare { .. } => Some(5),
            ApiError::QueueUnreachable(_) => Some(2),
            ApiError::RetryTooSoon { retry_after_s } => {
                Some(u32::try_from(*retry_after_s).unwrap_or(u32::MAX).max(1))
            }
            _ => None,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut body = match &self {
            ApiError::JobState { job, .. } => serde_json::to_value(job).unwrap_or(Value::Null),
            _ => json!({ "status": self.kind() }),
        };
        body["error"] = json!(self.message());
        match &self {
            ApiError::ModelsLoading { models, .. } => body["models"] = models.clone(),
            ApiError::ModelsNotReady { model, .. } => body["model"] = json!(model),
            _ => {}
        }
        if let Some(seconds) = self.retry_after_s()
            && !matches!(self, ApiError::ModelsNotReady { .. })
        {
            body["retry_after"] = json!(seconds);
        }
        let mut response = (self.status(), Json(body)).into_response();
        let headers = response.headers_mut();
        if let Some(seconds) = self.retry_after_s() {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        // The rest of a refused upload is not read: say the connection ends here.
        if matches!(self, ApiError::TooLarge(_) | ApiError::UploadTimeout { .. }) {
            headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        response
    }
}

pub async fn health(State(state): State<Arc<AppState>>) -> Json<Value> {
    let aggregate = state.models.aggregate();
    let queue = state.jobs.overview().await;
    Json(json!({
        "status": "healthy",
        "models_status": aggregate.name(),
        "models_loading": aggregate == Aggregate::Loading,
        "models_ready": aggregate == Aggregate::Ready,
        "processor": state.models.processor(),
        "models": state.models.describe(),
        "shape_models": state.models.shapes.iter().map(|s| s.describe()).collect::<Vec<_>>(),
        "other_precisions": state.models.siblings.iter().map(|s| json!({
            "id": s.id,
            "precision": s.precision.name(),
            "bytes": s.bytes,
            "instead_of": s.instead_of,
        })).collect::<Vec<_>>(),
        "uptime_s": (state.started.elapsed().as_secs_f64() * 1000.0).round() / 1000.0,
        "queue": queue,
    }))
}

/// `GET /metrics`: the queue's figures in the Prometheus text format (this machine's, or the
/// whole fleet's as this instance has seen them).
pub async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    let text = state.jobs.metrics().await.render();
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
        )],
        text,
    )
        .into_response()
}

/// `/orfeas.json` for the app this server hosts, when its folder has none: the models under
/// `--models`, so the app loads what is installed and shows the rest as not installed instead
/// of guessing ids and meeting 404s. A shape model's parts are listed at every precision
/// installed, each with its precision and download size: the app picks one for its own GPU;
/// so are a stand-alone set's precision siblings (the one this server loads first).
pub async fn site_config(State(state): State<Arc<AppState>>) -> Json<Value> {
    let mut models: Vec<Value> = state
        .models
        .slots
        .iter()
        .filter(|slot| slot.part_of.is_none())
        .map(|slot| json!({ "id": slot.id }))
        .collect();
    // Precision siblings of a stand-alone set (e.g. ISNet's q8 set): the app picks one.
    models.extend(
        state
            .models
            .siblings
            .iter()
            .map(|s| json!({ "id": s.id, "precision": s.precision.name(), "bytes": s.bytes })),
    );
    for shape in &state.models.shapes {
        for install in &shape.installed {
            for (part, bytes) in COMPONENTS.iter().zip(install.part_bytes) {
                models.push(json!({
                    "id": format!("{}/{part}", install.folder),
                    "precision": install.precision_name(),
                    "bytes": bytes,
                }));
            }
        }
    }
    Json(json!({
        "models_base": "models/",
        "models": models,
        "generated_by": "orfeas serve",
    }))
}

#[derive(Debug, Default, Deserialize)]
pub struct WaitQuery {
    #[serde(default)]
    wait: Option<String>,
}

/// A request parameter as sent: a number, a string or a boolean. Anything else (an array, an
/// object) is refused while the JSON is parsed, before it is built in memory: a parameter
/// costs what its bytes cost, never a tree of values.
#[derive(Debug, Clone, PartialEq)]
enum Scalar {
    Text(String),
    Number(String),
    Bool(bool),
}

impl<'de> Deserialize<'de> for Scalar {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = Scalar;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a number, a string or a boolean")
            }
            fn visit_bool<E>(self, v: bool) -> Result<Scalar, E> {
                Ok(Scalar::Bool(v))
            }
            fn visit_i64<E>(self, v: i64) -> Result<Scalar, E> {
                Ok(Scalar::Number(v.to_string()))
            }
            fn visit_u64<E>(self, v: u64) -> Result<Scalar, E> {
                Ok(Scalar::Number(v.to_string()))
            }
            fn visit_f64<E>(self, v: f64) -> Result<Scalar, E> {
                Ok(Scalar::Number(v.to_string()))
            }
            fn visit_str<E>(self, v: &str) -> Result<Scalar, E> {
                Ok(Scalar::Text(v.trim().to_string()))
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

impl Scalar {
    /// What a person reads in an error: the value's start, never all of it.
    fn excerpt(&self) -> String {
        match self {
            Scalar::Text(text) => excerpt(text),
            Scalar::Number(text) => cut(text, EXCERPT_CHARS),
            Scalar::Bool(b) => b.to_string(),
        }
    }
}

/// Request fields before validation, typed as they are parsed.
#[derive(Debug, Default)]
struct RawParams {
    image: Option<String>,
    /// Base64 pictures of more views (JSON `left`, `back`, `right`), in the order given.
    views: Vec<(View, String)>,
    steps: Option<Scalar>,
    guidance: Option<Scalar>,
    octree_resolution: Option<Scalar>,
    seed: Option<Scalar>,
    face_count: Option<Scalar>,
    flashvdm: Option<Scalar>,
    colour: Option<Scalar>,
    remove_background: Option<Scalar>,
    format: Option<Scalar>,
}

impl RawParams {
    /// Where the scalar parameter `name` goes (JSON keys and form fields alike); `None` for
    /// the image and for names we do not take.
    fn slot(&mut self, name: &str) -> Option<&mut Option<Scalar>> {
        Some(match name {
            "steps" => &mut self.steps,
            "guidance" | "guidance_scale" => &mut self.guidance,
            "octree_resolution" => &mut self.octree_resolution,
            "seed" => &mut self.seed,
            "face_count" | "faces" => &mut self.face_count,
            "flashvdm" | "enable_flashvdm" => &mut self.flashvdm,
            "colour" | "color" => &mut self.colour,
            "remove_background" => &mut self.remove_background,
            "format" => &mut self.format,
            _ => return None,
        })
    }
}

/// Parsed field by field, so an error names the field it is about; unknown fields are skipped
/// without being built (forms and clients carry extras).
impl<'de> Deserialize<'de> for RawParams {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        use serde::de::{Error, IgnoredAny, MapAccess};
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = RawParams;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("an object of the request's fields")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RawParams, A::Error> {
                let mut raw = RawParams::default();
                while let Some(key) = map.next_key::<String>()? {
                    let named = |e: A::Error| A::Error::custom(format!("{}: {e}", excerpt(&key)));
                    if key == "image" || key == "front" {
                        if raw.image.is_some() {
                            return Err(A::Error::custom(
                                "the front view is given twice (image and front)",
                            ));
                        }
                        raw.image = Some(map.next_value::<String>().map_err(named)?);
                    } else if let Some(view) = View::parse(&key) {
                        raw.views
                            .push((view, map.next_value::<String>().map_err(named)?));
                    } else if let Some(slot) = raw.slot(&key) {
                        *slot = Some(map.next_value::<Scalar>().map_err(named)?);
                    } else {
                        map.next_value::<IgnoredAny>()?;
                    }
                }
                Ok(raw)
            }
        }
        deserializer.deserialize_map(Visitor)
    }
}

/// Admission to `generate-3d`: the models are ready, and a place in the queue is reserved for
/// this client within its share. Taken from the request's head, so axum checks it before
/// [`Upload`] reads a byte of the body: a loading server, a full queue or a client over its
/// share is answered at once, whatever the upload (as the original did), and every body that
/// is read has its place waiting. Dropped unused (a bad upload), the place is free again.
pub struct Admitted(pub Reservation);

impl FromRequestParts<Arc<AppState>> for Admitted {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &Arc<AppState>,
    ) -> Result<Self, ApiError> {
        if let Some(not_ready) = state
            .models
            .not_ready()
            .filter(|_| state.jobs.needs_local_models())
        {
            return Err(match not_ready.kind {
                NotReadyKind::Loading => ApiError::ModelsLoading {
                    retry_after_s: not_ready.retry_after_s,
                    models: state.models.describe(),
                },
                NotReadyKind::NotReady => ApiError::ModelsNotReady {
                    model: not_ready.model,
                    reason: not_ready.message,
                },
            });
        }
        let client = client_of(parts, &state.limits);
        state
            .jobs
            .reserve(client)
            .map(Admitted)
            .map_err(queue_refusal)
    }
}

/// Who sent the request, for its share of the queue: the peer's address, or behind a trusted
/// proxy (`--client-from-forwarded-for`) the last `X-Forwarded-For` address (the one the proxy
/// added; those before it are the client's own say).
fn client_of(parts: &Parts, limits: &RequestLimits) -> IpAddr {
    let forwarded = limits
        .client_from_forwarded_for
        .then(|| {
            let values = parts.headers.get_all("x-forwarded-for");
            let last = values.iter().next_back()?.to_str().ok()?;
            last.rsplit(',').next()?.trim().parse::<IpAddr>().ok()
        })
        .flatten();
    forwarded
        .or_else(|| {
            parts
                .extensions
                .get::<ConnectInfo<SocketAddr>>()
                .map(|info| info.0.ip())
        })
        .map_or(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED), |ip| {
            ip.to_canonical()
        })
}

/// The upload of a `generate-3d` request, read within the limits (size and time) and
/// validated: parameters in range, the image decoded.
pub struct Upload(pub JobInput);

impl FromRequest<Arc<AppState>> for Upload {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &Arc<AppState>) -> Result<Self, ApiError> {
        let read = tokio::time::timeout(state.limits.body_timeout, read_input(state, request));
        match read.await {
            Ok(input) => input.map(Upload),
            Err(_) => Err(ApiError::UploadTimeout {
                seconds: state.limits.body_timeout.as_secs(),
            }),
        }
    }
}

pub async fn generate(
    State(state): State<Arc<AppState>>,
    Admitted(reservation): Admitted,
    Query(query): Query<WaitQuery>,
    Upload(input): Upload,
) -> Response {
    // Loaded, but without a model this request needs (e.g. no shape model at all).
    if let Some((model, reason)) = state.jobs.unavailable(&input) {
        return ApiError::ModelsNotReady { model, reason }.into_response();
    }
    let format = input.params.format;
    let id = match state.jobs.submit(reservation, input).await {
        Ok(id) => id,
        Err(refused) => return queue_refusal(refused).into_response(),
    };
    let wait = matches!(query.wait.as_deref(), Some("true" | "1" | "yes"));
    if !wait {
        let mut response = (
            StatusCode::ACCEPTED,
            Json(json!({
                "job_id": id,
                "status": "queued",
                "status_url": format!("/api/jobs/{id}"),
                "result_url": format!("/api/jobs/{id}/result"),
            })),
        )
            .into_response();
        if let Ok(location) = HeaderValue::from_str(&format!("/api/jobs/{id}")) {
            response.headers_mut().insert(header::LOCATION, location);
        }
        return response;
    }
    match state.jobs.wait(&id).await {
        Some(JobStatus::Done) => match state.jobs.result(&id).await {
            Lookup::Found(Ok(file)) => mesh_response(&id, file),
            _ => ApiError::JobFailed("result missing".into()).into_response(),
        },
        Some(JobStatus::Failed { error, cause }) => match cause {
            Cause::Input => ApiError::Unprocessable(error).into_response(),
            Cause::Server => ApiError::JobFailed(error).into_response(),
        },
        Some(JobStatus::Cancelled { reason }) => ApiError::JobCancelled(reason).into_response(),
        _ => ApiError::JobFailed(format!("{id} vanished ({format:?})")).into_response(),
    }
}

/// 429 for a full queue or a client over its share (try again), 500 when the runner is gone
/// (the server's fault).
fn queue_refusal(refused: SubmitError) -> ApiError {
    match refused {
        SubmitError::Full => ApiError::QueueFull,
        SubmitError::ClientShare { limit } => ApiError::ClientShare { limit },
        SubmitError::Closed => ApiError::QueueClosed,
        SubmitError::Unreachable(reason) => ApiError::QueueUnreachable(reason),
    }
}

fn mesh_response(id: &str, file: MeshFile) -> Response {
    let disposition = format!("attachment; filename=\"{id}.{}\"", file.format.extension());
    let mut headers = HeaderMap::new();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(file.format.content_type()),
    );
    if let Ok(value) = HeaderValue::from_str(&disposition) {
        headers.insert(header::CONTENT_DISPOSITION, value);
    }
    (StatusCode::OK, headers, Body::from(file.bytes)).into_response()
}

pub async fn job(State(state): State<Arc<AppState>>, Path(id): Path<String>) -> Response {
    match state.jobs.describe(&id).await {
        Lookup::Found(value) => Json(value).into_response(),
        Lookup::Evicted => ApiError::EvictedJob(id).into_response(),
        Lookup::Unknown => ApiError::UnknownJob(id).into_response(),
    }
}

pub async fn job_result(State(state): State<Arc<AppState>>, Path(id): Path<String>) -> Response {
    match state.jobs.result(&id).await {
        Lookup::Found(Ok(file)) => mesh_response(&id, file),
        Lookup::Found(Err(job)) => {
            let message = match &job {
                JobStatus::Failed { error, .. } => format!("{id} failed: {error}"),
                JobStatus::Cancelled { reason } => format!("{id} was cancelled: {reason}"),
                _ => format!("{id} is not finished yet"),
            };
            ApiError::JobState { job, message }.into_response()
        }
        Lookup::Evicted => ApiError::EvictedJob(id).into_response(),
        Lookup::Unknown => ApiError::UnknownJob(id).into_response(),
    }
}

/// `DELETE /api/jobs/{id}`: a queued job is dropped, a running one stops at its next step.
pub async fn cancel_job(State(state): State<Arc<AppState>>, Path(id): Path<String>) -> Response {
    let cancelled = match state.jobs.cancel(&id, StopReason::Cancelled).await {
        Ok(cancelled) => cancelled,
        Err(refused) => return queue_refusal(refused).into_response(),
    };
    match cancelled {
        Lookup::Found(job) if job.finished() => {
            let message = format!("{id} has already finished");
            ApiError::JobState { job, message }.into_response()
        }
        Lookup::Found(JobStatus::Queued { .. }) => Json(json!({
            "id": id, "status": "cancelled", "reason": "cancelled by the client",
        }))
        .into_response(),
        Lookup::Found(_) => (
            StatusCode::ACCEPTED,
            Json(json!({
                "id": id, "status": "cancelling",
                "message": "the job stops at its next step",
            })),
        )
            .into_response(),
        Lookup::Evicted => ApiError::EvictedJob(id).into_response(),
        Lookup::Unknown => ApiError::UnknownJob(id).into_response(),
    }
}

#[derive(Deserialize)]
pub struct RetryQuery {
    model: Option<String>,
}

/// `POST /api/models/retry[?model=ID]`: load the failed models again (all, or the one named:
/// an id from health, or a shape model's name), without a restart — after a corrupt shard is
/// replaced, or a loader crashed.
pub async fn retry_models(
    State(state): State<Arc<AppState>>,
    Query(query): Query<RetryQuery>,
) -> Response {
    let Some(loader) = &state.loader else {
        return ApiError::Unavailable("this server cannot reload models".into()).into_response();
    };
    match state.models.retry(loader, query.model.as_deref()) {
        Retry::Started(models) => (
            StatusCode::ACCEPTED,
            Json(json!({ "status": "loading", "models": models })),
        )
            .into_response(),
        Retry::NothingFailed => ApiError::Conflict(match &query.model {
            Some(model) => format!("{} has not failed: nothing to retry", excerpt(model)),
            None => "no model has failed: nothing to retry".into(),
        })
        .into_response(),
        Retry::Unknown => ApiError::UnknownModel(format!(
            "no model {}",
            excerpt(&query.model.unwrap_or_default())
        ))
        .into_response(),
        Retry::TooSoon { retry_after_s } => {
            ApiError::RetryTooSoon { retry_after_s }.into_response()
        }
    }
}

/// Body → validated job input, or the 400/413 response that explains what is wrong. The body
/// is read within the upload limit whatever its framing (a chunked body is cut off at the
/// limit); the image is decoded off the async threads, a few at a time.
async fn read_input(state: &AppState, request: Request) -> Result<JobInput, ApiError> {
    let limit = state.limits.max_upload_bytes;
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    let expects_continue = request
        .headers()
        .get(header::EXPECT)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
    let (parts, body) = request.into_parts();
    let body: SharedBody = Arc::new(tokio::sync::Mutex::new(body.into_data_stream()));
    if let Some(declared) = declared.filter(|&n| n > limit) {
        // A client waiting for "100 Continue" has sent nothing: answer at once. Otherwise
        // read the rest (discarded) when it is not far over, so the client reads the answer.
        if !expects_continue && declared <= limit.saturating_mul(3) {
            linger(&body, declared).await;
        }
        return Err(too_large(limit));
    }
    let forwarded = futures::stream::unfold(body.clone(), |body| async move {
        let item = body.lock().await.next().await;
        item.map(|item| (item, body))
    });
    let request = Request::from_parts(parts, Body::from_stream(forwarded));
    let (raw, image_bytes, view_bytes) = match parse_body(request, limit).await {
        Ok(parsed) => parsed,
        Err(response) => {
            if response.status() == StatusCode::PAYLOAD_TOO_LARGE {
                linger(&body, limit.saturating_mul(2)).await;
            }
            return Err(response);
        }
    };
    let params = validate(&raw, &state.limits).map_err(ApiError::BadRequest)?;
    let image = decode_off_thread(&state.decoding, image_bytes)
        .await
        .map_err(ApiError::BadRequest)?;
    let mut views = Vec::with_capacity(view_bytes.len());
    for (view, bytes) in view_bytes {
        let picture = decode_off_thread(&state.decoding, bytes)
            .await
            .map_err(|e| ApiError::BadRequest(format!("the {} view: {e}", view.name())))?;
        views.push((view, picture));
    }
    Ok(JobInput {
        image,
        views,
        params,
    })
}

/// The picture bytes of each view, once each (`front` is the image).
type ViewBytes = Vec<(View, Vec<u8>)>;

fn add_view(views: &mut ViewBytes, view: View, bytes: Vec<u8>) -> Result<(), ApiError> {
    if views.iter().any(|(v, _)| *v == view) {
        return Err(ApiError::BadRequest(format!(
            "the {} view is given twice",
            view.name()
        )));
    }
    views.push((view, bytes));
    Ok(())
}

/// A base64 picture or a data: URL's payload.
fn base64_picture(encoded: &str, what: &str) -> Result<Vec<u8>, ApiError> {
    let payload = encoded
        .split_once(";base64,")
        .map(|(_, data)| data)
        .unwrap_or(encoded);
    base64::engine::general_purpose::STANDARD
        .decode(payload.trim())
        .map_err(|e| ApiError::BadRequest(format!("{what} is not base64: {e}")))
}

/// The request's form fields and image bytes, from a multipart or JSON body read within
/// `limit` bytes; or the 400/413 answer.
async fn parse_body(
    request: Request,
    limit: usize,
) -> Result<(RawParams, Vec<u8>, ViewBytes), ApiError> {
    let content_type = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_ascii_lowercase();
    let (raw, image_bytes, views) = if content_type.starts_with("multipart/form-data") {
        read_multipart(request, limit).await?
    } else if content_type.starts_with("application/json") {
        let (parts, body) = request.into_parts();
        drop(parts);
        let bytes = axum::body::to_bytes(body, limit)
            .await
            .map_err(|_| too_large(limit))?;
        let raw: RawParams = serde_json::from_slice(&bytes).map_err(|e| {
            ApiError::BadRequest(format!("malformed JSON: {}", cut(&e.to_string(), 200)))
        })?;
        let encoded = raw.image.clone().ok_or_else(|| {
            ApiError::BadRequest("missing \"image\" (base64 or a data: URL)".into())
        })?;
        let image = base64_picture(&encoded, "image")?;
        let mut views = ViewBytes::new();
        for (view, encoded) in &raw.views {
            let bytes = base64_picture(encoded, &format!("the {} view", view.name()))?;
            add_view(&mut views, *view, bytes)?;
        }
        (raw, image, views)
    } else {
        return Err(ApiError::BadRequest(
            "send multipart/form-data (field \"image\") or application/json ({\"image\": base64})"
                .into(),
        ));
    };
    Ok((raw, image_bytes, views))
}

/// A request body the parser reads through, which the handler can go on reading after it.
type SharedBody = Arc<tokio::sync::Mutex<axum::body::BodyDataStream>>;

/// How long a refused upload's remainder is read (and discarded) at most.
const LINGER: std::time::Duration = std::time::Duration::from_secs(2);

/// Read and discard up to `budget` more bytes of a refused body, for at most [`LINGER`]: a
/// client still sending then reads the 413 instead of a reset connection (closing a socket
/// with unread bytes resets it, and the reset can overtake the answer). Nothing is kept, and an
/// endless body is still cut off.
async fn linger(body: &SharedBody, budget: usize) {
    let deadline = tokio::time::Instant::now() + LINGER;
    let mut stream = body.lock().await;
    let mut drained = 0usize;
    while drained < budget {
        match tokio::time::timeout_at(deadline, stream.next()).await {
            Ok(Some(Ok(chunk))) => drained += chunk.len(),
            _ => break,
        }
    }
}

/// 413, closing the connection once the answer is sent.
fn too_large(limit: usize) -> ApiError {
    ApiError::TooLarge(format!("upload larger than {} MB", limit >> 20))
}

/// Decode on the blocking pool, at most as many at once as `permits` allows, shrunk to the
/// job's working size as it is decoded (so a waiting job holds ≤ 16 MB of pixels). The permit
/// moves into the blocking work and is released when the decode ends, not when the request
/// does: a client that leaves mid-decode does not free a place while its decode still runs.
async fn decode_off_thread(
    permits: &Arc<tokio::sync::Semaphore>,
    bytes: Vec<u8>,
) -> Result<image::RgbaImage, String> {
    let permit = permits
        .clone()
        .acquire_owned()
        .await
        .map_err(|_| "the server is stopping".to_string())?;
    tokio::task::spawn_blocking(move || {
        let _permit = permit;
        orfeas_engine::input::decode_image_within(&bytes, WORKING_SIDE).map_err(|e| e.to_string())
    })
    .await
    .map_err(|e| format!("decoding the image failed: {e}"))?
}

/// Form fields read from one multipart body at most (a form has seven).
pub const MAX_FORM_FIELDS: usize = 32;

async fn read_multipart(
    request: Request,
    limit: usize,
) -> Result<(RawParams, Vec<u8>, ViewBytes), ApiError> {
    let bad = ApiError::BadRequest;
    let mut multipart = Multipart::from_request(request, &())
        .await
        .map_err(|e| bad(format!("malformed multipart body: {e}")))?;
    let mut raw = RawParams::default();
    let mut image = None;
    let mut views = ViewBytes::new();
    let mut total = 0usize;
    let mut fields = 0usize;
    loop {
        let field = match multipart.next_field().await {
            Ok(Some(field)) => field,
            Ok(None) => break,
            Err(e) => {
                return Err(if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                    ApiError::TooLarge(e.body_text())
                } else {
                    bad(format!("malformed multipart body: {}", e.body_text()))
                });
            }
        };
        fields += 1;
        if fields > MAX_FORM_FIELDS {
            return Err(bad(format!(
                "more than {MAX_FORM_FIELDS} form fields (the form has seven)"
            )));
        }
        let name = field.name().unwrap_or_default().to_string();
        let bytes = field.bytes().await.map_err(|e| {
            if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::TooLarge(e.body_text())
            } else {
                bad(format!(
                    "reading field {}: {}",
                    excerpt(&name),
                    e.body_text()
                ))
            }
        })?;
        total += bytes.len();
        if total > limit {
            return Err(too_large(limit));
        }
        if matches!(name.as_str(), "image" | "file" | "front") {
            if image.is_some() {
                return Err(bad("the front view is given twice (image and front)".into()));
            }
            image = Some(bytes.to_vec());
        } else if let Some(view) = View::parse(&name) {
            add_view(&mut views, view, bytes.to_vec())?;
        } else if let Some(slot) = raw.slot(&name) {
            *slot = Some(Scalar::Text(
                String::from_utf8_lossy(&bytes).trim().to_string(),
            ));
        } // unknown fields are ignored, as forms carry extras
    }
    let image = image.ok_or_else(|| bad("missing the \"image\" file field".into()))?;
    Ok((raw, image, views))
}

fn number<T: std::str::FromStr>(value: &Option<Scalar>, name: &str) -> Result<Option<T>, String> {
    let text = match value {
        None => return Ok(None),
        Some(Scalar::Text(text) | Scalar::Number(text)) => text,
        Some(other @ Scalar::Bool(_)) => {
            return Err(format!(
                "{name}: expected a number, got {}",
                other.excerpt()
            ));
        }
    };
    text.parse::<T>()
        .map(Some)
        .map_err(|_| format!("{name}: {} is not a valid number", excerpt(text)))
}

/// A true/false field (JSON booleans, or the words forms send).
fn flag(value: &Option<Scalar>, name: &str) -> Result<Option<bool>, String> {
    Ok(match value {
        None => None,
        Some(Scalar::Bool(b)) => Some(*b),
        Some(Scalar::Text(s) | Scalar::Number(s))
            if matches!(s.as_str(), "true" | "1" | "yes" | "on") =>
        {
            Some(true)
        }
        Some(Scalar::Text(s) | Scalar::Number(s))
            if matches!(s.as_str(), "false" | "0" | "no" | "off") =>
        {
            Some(false)
        }
        Some(other) => {
            return Err(format!(
                "{name}: expected true/false, got {}",
                other.excerpt()
            ));
        }
    })
}

/// The request's parameters, checked against the engine's ranges and then this server's
/// narrower limits (`--max-steps`, `--max-octree`).
fn validate(raw: &RawParams, limits: &RequestLimits) -> Result<GenerateParams, String> {
    let mut params = GenerateParams::default();
    let options = &mut params.options;
    if let Some(steps) = number::<usize>(&raw.steps, "steps")? {
        options.steps = Some(steps);
    }
    if let Some(guidance) = number::<f32>(&raw.guidance, "guidance")? {
        options.guidance = guidance;
    }
    if let Some(resolution) = number::<usize>(&raw.octree_resolution, "octree_resolution")? {
        options.resolution = resolution;
    }
    if let Some(seed) = number::<u64>(&raw.seed, "seed")? {
        options.seed = seed;
    }
    if let Some(faces) = number::<usize>(&raw.face_count, "face_count")? {
        options.faces = faces;
    }
    if let Some(flashvdm) = flag(&raw.flashvdm, "flashvdm")? {
        options.flashvdm = flashvdm;
    }
    if let Some(colour) = flag(&raw.colour, "colour")? {
        options.colour = colour;
    }
    options.validate()?;
    let narrower = |name, range: std::ops::RangeInclusive<usize>, got| {
        Err(format!("{} on this server", out_of_range(name, range, got)))
    };
    let max_steps = limits.max_steps as usize;
    if let Some(steps) = options.steps.filter(|&s| s > max_steps) {
        return narrower("steps", *STEPS.start()..=max_steps, steps);
    }
    let max_octree = limits.max_octree as usize;
    if options.resolution > max_octree {
        let range = *OCTREE_RESOLUTION.start()..=max_octree;
        return narrower("octree_resolution", range, options.resolution);
    }
    if let Some(flag) = flag(&raw.remove_background, "remove_background")? {
        params.remove_background = flag;
    }
    if let Some(format) = &raw.format {
        let text = match format {
            Scalar::Text(text) => text.as_str(),
            _ => "",
        };
        params.format = Format::parse(text).ok_or_else(|| {
            format!(
                "format must be {}, got {}",
                Format::names(),
                format.excerpt()
            )
        })?;
    }
    Ok(params)
}

#[cfg(test)]
mod tests {
    use std::io::Cursor;

    use proptest::prelude::*;

    use super::*;

    /// The engine's decode with its error as the API words it.
    fn decode_image(bytes: &[u8]) -> Result<image::RgbaImage, String> {
        orfeas_engine::input::decode_image(bytes).map_err(|e| e.to_string())
    }

    #[test]
    fn parameters_are_range_checked_with_reasons() {
        let text = |t: &str| Some(Scalar::Text(t.into()));
        let raw = RawParams {
            steps: text("0"),
            ..Default::default()
        };
        let limits = RequestLimits::default();
        assert!(validate(&raw, &limits).unwrap_err().contains("steps"));
        let raw = RawParams {
            format: text("fbx"),
            ..Default::default()
        };
        assert!(
            validate(&raw, &limits)
                .unwrap_err()
                .contains("glb, obj, stl or ply")
        );
        let raw = RawParams {
            steps: Some(Scalar::Number("12".into())),
            guidance: text("7.5"),
            format: text("STL"),
            remove_background: text("false"),
            ..Default::default()
        };
        let params = validate(&raw, &limits).unwrap();
        let tight = RequestLimits {
            max_steps: 10,
            ..RequestLimits::default()
        };
        assert!(validate(&raw, &tight).unwrap_err().contains("1–10"));
        assert_eq!(params.options.steps, Some(12));
        assert_eq!(params.options.guidance, 7.5);
        assert_eq!(params.format, Format::Stl);
        assert!(!params.remove_background);
    }

    /// A multipart body with the form's fields, the image last.
    fn multipart(boundary: &str, fields: &[(&str, Vec<u8>)]) -> Vec<u8> {
        let mut body = Vec::new();
        for (name, value) in fields {
            body.extend_from_slice(format!("--{boundary}\r\n").as_bytes());
            let disposition = if *name == "image" {
                "form-data; name=\"image\"; filename=\"a.png\"\r\nContent-Type: image/png"
                    .to_string()
            } else {
                format!("form-data; name=\"{name}\"")
            };
            body.extend_from_slice(
                format!("Content-Disposition: {disposition}\r\n\r\n").as_bytes(),
            );
            body.extend_from_slice(value);
            body.extend_from_slice(b"\r\n");
        }
        body.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
        body
    }

    /// Parse one body as the server would, answering its status (200 for a parsed body).
    fn parse(content_type: &str, body: Vec<u8>, limit: usize) -> StatusCode {
        let request = axum::http::Request::builder()
            .method("POST")
            .header(header::CONTENT_TYPE, content_type)
            .body(axum::body::Body::from(body))
            .unwrap();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        match runtime.block_on(parse_body(request, limit)) {
            Ok((raw, image, _)) => {
                // Whatever parsed must validate or be refused by name, and decode or not,
                // without panicking.
                let _ = validate(&raw, &RequestLimits::default());
                let _ = decode_image(&image);
                StatusCode::OK
            }
            Err(response) => response.status(),
        }
    }

    #[derive(Debug, Clone)]
    enum Mutation {
        Truncate(usize),
        Flip(usize, u8),
        Insert(usize, Vec<u8>),
    }

    fn mutation() -> impl Strategy<Value = Mutation> {
        prop_oneof![
            any::<usize>().prop_map(Mutation::Truncate),
            (any::<usize>(), any::<u8>()).prop_map(|(at, bits)| Mutation::Flip(at, bits)),
            (
                any::<usize>(),
                prop_oneof![
                    Just(b"\r\n".to_vec()),
                    Just(b"--".to_vec()),
                    Just(b"\"".to_vec()),
                    Just(b"\\u0000".to_vec()),
                    proptest::collection::vec(any::<u8>(), 1..16),
                ]
            )
                .prop_map(|(at, bytes)| Mutation::Insert(at, bytes)),
        ]
    }

    fn mutate(mut body: Vec<u8>, mutations: &[Mutation]) -> Vec<u8> {
        for mutation in mutations {
            let len = body.len().max(1);
            match mutation {
                Mutation::Truncate(at) => body.truncate(at % len),
                Mutation::Flip(at, bits) => {
                    if let Some(byte) = body.get_mut(at % len) {
                        *byte ^= bits;
                    }
                }
                Mutation::Insert(at, bytes) => {
                    let at = (at % len).min(body.len());
                    body.splice(at..at, bytes.iter().copied());
                }
            }
        }
        body
    }

    fn field_value() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            Just(b"12".to_vec()),
            Just(b"-1".to_vec()),
            Just(b"1e309".to_vec()),
            Just(b"NaN".to_vec()),
            Just(b"glb".to_vec()),
            Just(b"true".to_vec()),
            Just(vec![0xff, 0xfe, 0x00]),
            proptest::collection::vec(any::<u8>(), 0..24),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

        /// Mutated multipart forms: every one parses or is answered 400/413, never a panic.
        #[test]
        fn mangled_multipart_forms_are_400_or_413(
            fields in proptest::collection::vec(
                (prop_oneof![
                    Just("steps"), Just("guidance"), Just("octree_resolution"), Just("seed"),
                    Just("remove_background"), Just("format"), Just("image"), Just("extra"),
                    Just("face_count"), Just("back"),
                ], field_value()),
                0..6,
            ),
            mutations in proptest::collection::vec(mutation(), 0..4),
            limit in prop_oneof![Just(64usize), Just(4096usize)],
        ) {
            let boundary = "orfeasBoundary7";
            let fields: Vec<(&str, Vec<u8>)> = fields;
            let body = mutate(multipart(boundary, &fields), &mutations);
            let status = parse(&format!("multipart/form-data; boundary={boundary}"), body, limit);
            prop_assert!(
                matches!(status, StatusCode::OK | StatusCode::BAD_REQUEST | StatusCode::PAYLOAD_TOO_LARGE),
                "answered {status}"
            );
        }

        /// Mutated JSON requests: parsed or 400/413, never a panic.
        #[test]
        fn mangled_json_requests_are_400_or_413(
            steps in field_value(),
            image in prop_oneof![
                Just("data:image/png;base64,iVBORw0KGgo=".to_string()),
                Just("!!!".to_string()),
                "[A-Za-z0-9+/=]{0,40}",
            ],
            mutations in proptest::collection::vec(mutation(), 0..4),
            limit in prop_oneof![Just(32usize), Just(4096usize)],
        ) {
            let steps = String::from_utf8_lossy(&steps).into_owned();
            let body = serde_json::to_vec(&json!({ "image": image, "steps": steps, "format": "obj" })).unwrap();
            let status = parse("application/json", mutate(body, &mutations), limit);
            prop_assert!(
                matches!(status, StatusCode::OK | StatusCode::BAD_REQUEST | StatusCode::PAYLOAD_TOO_LARGE),
                "answered {status}"
            );
        }
    }

    #[test]
    fn an_unmangled_form_parses_and_a_missing_image_is_named() {
        let boundary = "b0";
        let form = multipart(
            boundary,
            &[("steps", b"7".to_vec()), ("image", b"png".to_vec())],
        );
        assert_eq!(
            parse(
                &format!("multipart/form-data; boundary={boundary}"),
                form,
                4096
            ),
            StatusCode::OK
        );
        let form = multipart(boundary, &[("steps", b"7".to_vec())]);
        assert_eq!(
            parse(
                &format!("multipart/form-data; boundary={boundary}"),
                form,
                4096
            ),
            StatusCode::BAD_REQUEST
        );
        let form = multipart(boundary, &[("image", vec![0; 100])]);
        assert_eq!(
            parse(
                &format!("multipart/form-data; boundary={boundary}"),
                form,
                64
            ),
            StatusCode::PAYLOAD_TOO_LARGE
        );
    }

    #[test]
    fn the_client_is_the_peer_unless_a_trusted_proxy_says_otherwise() {
        let request = axum::http::Request::builder()
            .header("x-forwarded-for", "6.6.6.6, 10.0.0.7")
            .body(())
            .unwrap();
        let (mut parts, _) = request.into_parts();
        parts
            .extensions
            .insert(ConnectInfo(SocketAddr::from(([127, 0, 0, 1], 5000))));
        let plain = RequestLimits::default();
        assert_eq!(client_of(&parts, &plain), IpAddr::from([127, 0, 0, 1]));
        let proxied = RequestLimits {
            client_from_forwarded_for: true,
            ..plain
        };
        assert_eq!(client_of(&parts, &proxied), IpAddr::from([10, 0, 0, 7]));
    }

    #[test]
    fn parameters_arrive_typed_and_errors_quote_only_their_start() {
        let long = "7".repeat(1 << 20);
        let body = format!("{{\"image\": \"x\", \"steps\": \"{long}\", \"extra\": [[[]]]}}");
        let raw: RawParams = serde_json::from_str(&body).unwrap();
        let error = validate(&raw, &RequestLimits::default()).unwrap_err();
        assert!(error.starts_with("steps: ") && error.len() < 100, "{error}");
        let error = serde_json::from_str::<RawParams>("{\"seed\": [1, 2, 3]}").unwrap_err();
        assert!(error.to_string().contains("seed"), "{error}");
        let raw: RawParams =
            serde_json::from_str("{\"remove_background\": false, \"guidance_scale\": 7}").unwrap();
        let params = validate(&raw, &RequestLimits::default()).unwrap();
        assert!(!params.remove_background);
        assert_eq!(params.options.guidance, 7.0);
    }

    #[test]
    fn bad_images_are_named() {
        assert!(decode_image(b"").unwrap_err().contains("empty"));
        assert!(
            decode_image(b"<html>hello</html>")
                .unwrap_err()
                .contains("not an image")
        );
        let mut png = Vec::new();
        image::RgbaImage::new(4, 3)
            .write_to(&mut Cursor::new(&mut png), image::ImageFormat::Png)
            .unwrap();
        assert_eq!(decode_image(&png).unwrap().dimensions(), (4, 3));
        assert!(decode_image(&png[..png.len() / 2]).is_err());
    }
}
