//! The UI side of the worker protocol: starts the engine worker after first paint, sends it
//! [`ToWorker`] messages, and applies each [`FromWorker`] message to the [`Studio`] signals.
//! Also the page-level chores that must not delay first paint: service worker, persistent
//! storage, the model config.

use std::cell::RefCell;

use leptos::prelude::*;
use orfeas_app::config::{self, ConfigFile};
use orfeas_app::protocol::{
    CutoutReport, EngineOptions, FromWorker, ModelStatusReport, NoticeLevel, ToWorker, bulk,
};
use orfeas_app::text::time_so_far;
use wasm_bindgen::prelude::*;
use wasm_bindgen_futures::{JsFuture, spawn_local};

use super::json::js_text;
use super::page::query_params;
use super::{CutoutView, EngineState, GpuState, ModelView, RequestState, Studio};

thread_local! {
    static STUDIO: RefCell<Option<Studio>> = const { RefCell::new(None) };
    static WORKER: RefCell<Option<web_sys::Worker>> = const { RefCell::new(None) };
}

pub fn install(studio: Studio) {
    STUDIO.with(|s| *s.borrow_mut() = Some(studio));
}

fn studio() -> Option<Studio> {
    STUDIO.with(|s| *s.borrow())
}

pub fn send(message: &ToWorker) {
    let json = match super::json::to_string(message) {
        Ok(json) => json,
        Err(e) => {
            if let Some(studio) = studio() {
                studio.notify(NoticeLevel::Warning, format!("not sent to the engine: {e}"));
            }
            return;
        }
    };
    WORKER.with(|w| {
        if let Some(worker) = w.borrow().as_ref() {
            let _ = worker.post_message(&JsValue::from_str(&json));
        }
    });
}

/// After first paint: service worker, storage persistence, config, then the engine worker.
pub fn start() {
    let Some(studio) = studio() else { return };
    let window = web_sys::window().expect("a window");
    let navigator = window.navigator();
    if js_sys::Reflect::has(&navigator, &JsValue::from_str("serviceWorker")).unwrap_or(false) {
        let registration = navigator.service_worker().register("sw.js");
        spawn_local(async move {
            if let Err(e) = JsFuture::from(registration).await {
                leptos::logging::warn!("service worker: {}", js_text(&e));
            }
        });
    }
    if let Ok(persist) = navigator.storage().persist() {
        spawn_local(async move {
            let _ = JsFuture::from(persist).await;
        });
    }
    let params = query_params();
    spawn_local(async move {
        let file = load_config(&studio, &params).await;
        let origin = web_sys::window()
            .and_then(|w| w.location().origin().ok())
            .unwrap_or_default();
        let resolved = config::resolve_for(file.as_ref(), &params, &origin);
        for spec in &resolved.refused {
            studio.notify(
                NoticeLevel::Warning,
                format!(
                    "not loading {} from {}: another site's models load only when this site's \
                     orfeas.json lists that origin in allow_origins",
                    spec.id, spec.url
                ),
            );
        }
        let models = resolved.models;
        studio.models.set(
            models
                .iter()
                .map(|spec| ModelView {
                    spec: StoredValue::new(spec.clone()),
                    status: RwSignal::new(ModelStatusReport::Waiting),
                    progress: RwSignal::new(None),
                    warmed_s: RwSignal::new(None),
                })
                .collect(),
        );
        studio.configured.set(true);
        if models.is_empty() {
            return;
        }
        if ensure_worker(studio) {
            let mut options = EngineOptions::from_params(&params);
            if options.quant.is_none() {
                options.quant = remembered_quant();
                options.quant_remembered = options.quant.is_some();
            }
            send(&ToWorker::Start { models, options });
        }
        if params.iter().any(|(k, v)| k == "generate" && v == "1") {
            studio.request_generate();
        }
    });
}

/// Where the user's choice of the shape model's precision is kept between visits.
const QUANT_KEY: &str = "orfeas.quant";

fn local_storage() -> Option<web_sys::Storage> {
    web_sys::window().and_then(|w| w.local_storage().ok().flatten())
}

/// The precision the user chose on an earlier visit (`?quant=` wins over it).
fn remembered_quant() -> Option<String> {
    local_storage().and_then(|s| s.get_item(QUANT_KEY).ok().flatten())
}

/// Keep the user's choice for the next visit (where storage is refused, for this one only).
pub fn remember_quant(precision: &str) {
    if let Some(storage) = local_storage() {
        let _ = storage.set_item(QUANT_KEY, precision);
    }
}

/// `?config=<url>` (an error if it cannot be read), else `orfeas.json` next to the app (optional).
async fn load_config(studio: &Studio, params: &[(String, String)]) -> Option<ConfigFile> {
    let explicit = params
        .iter()
        .find(|(k, _)| k == "config")
        .map(|(_, v)| v.clone());
    let url = explicit.clone().unwrap_or_else(|| "orfeas.json".into());
    let origin = web_sys::window()
        .and_then(|w| w.location().origin().ok())
        .unwrap_or_default();
    let result: Result<ConfigFile, String> = async {
        // The config decides where weights come from: only this site's own is read.
        if !config::allowed(&url, &origin, None) {
            return Err("a model config is only read from this site".to_string());
        }
        let window = web_sys::window().ok_or("no window")?;
        let response: web_sys::Response = JsFuture::from(window.fetch_with_str(&url))
            .await
            .map_err(|e| js_text(&e))?
            .unchecked_into();
        if !response.ok() {
            return Err(format!("HTTP {}", response.status()));
        }
        let text = JsFuture::from(response.text().map_err(|e| js_text(&e))?)
            .await
            .map_err(|e| js_text(&e))?
            .as_string()
            .unwrap_or_default();
        super::json::parse(&text)
    }
    .await;
    match result {
        Ok(file) => Some(file),
        Err(e) => {
            if explicit.is_some() {
                studio.notify(
                    NoticeLevel::Warning,
                    format!("could not read the model config {url}: {e}; using the defaults"),
                );
            }
            None
        }
    }
}

/// Start the engine worker unless it runs; whether it does now.
fn ensure_worker(studio: Studio) -> bool {
    if WORKER.with(|w| w.borrow().is_some()) {
        return true;
    }
    match spawn_worker(studio) {
        Ok(()) => true,
        Err(reason) => {
            studio.engine.set(EngineState::Failed(reason));
            false
        }
    }
}

/// Hand the user's image to the engine (started now if no model made it start): it answers
/// with the instant preview mesh, and keeps the image for generation.
pub fn send_image(studio: Studio, file: &web_sys::File) {
    // The other views showed the object of the old front: the engine drops them too.
    for (view, _) in studio.view_files.get_untracked() {
        forget_view_file(studio, &view);
    }
    post_image(studio, file, None);
}

/// Another view of the object (`left`, `back`, `right`) for a 2mv model, replacing the one
/// given before.
pub fn send_view(studio: Studio, file: &web_sys::File, view: &str) {
    forget_view_file(studio, view);
    if let Ok(url) = web_sys::Url::create_object_url_with_blob(file) {
        studio
            .view_files
            .update(|f| f.push((view.to_string(), url)));
    }
    post_image(studio, file, Some(view));
}

/// The user took a view away.
pub fn drop_view(studio: Studio, view: &str) {
    forget_view_file(studio, view);
    send(&ToWorker::DropView {
        view: view.to_string(),
    });
}

fn forget_view_file(studio: Studio, view: &str) {
    studio.view_files.update(|files| {
        files.retain(|(v, url)| {
            let keep = v != view;
            if !keep {
                let _ = web_sys::Url::revoke_object_url(url);
            }
            keep
        })
    });
}

fn post_image(studio: Studio, file: &web_sys::File, view: Option<&str>) {
    studio.image_error.set(None);
    if !ensure_worker(studio) {
        return;
    }
    let message = bulk::message(bulk::Kind::Image);
    bulk::set(&message, bulk::NAME, &file.name().into());
    bulk::set(&message, bulk::FILE, file);
    if let Some(view) = view {
        bulk::set(&message, bulk::VIEW, &view.into());
    }
    WORKER.with(|w| {
        if let Some(worker) = w.borrow().as_ref() {
            let _ = worker.post_message(&message);
        }
    });
}

fn spawn_worker(studio: Studio) -> Result<(), String> {
    let worker = web_sys::Worker::new("worker.js").map_err(|e| js_text(&e))?;
    studio.engine.set(EngineState::Fetching {
        received: 0,
        total: None,
    });
    let on_message =
        Closure::<dyn Fn(web_sys::MessageEvent)>::new(move |event: web_sys::MessageEvent| {
            let data = event.data();
            let Some(json) = data.as_string() else {
                // Objects carry bulk data beside their JSON: a cut-out or a mesh.
                match bulk::kind(&data) {
                    Ok(bulk::Kind::Cutout) => show_cutout(studio, &data),
                    Ok(bulk::Kind::Mesh) => super::viewer::show_mesh(studio, &data),
                    Ok(other) => studio.notify(
                        NoticeLevel::Warning,
                        format!(
                            "the engine sent a '{}' message, which goes the other way",
                            other.name()
                        ),
                    ),
                    Err(e) => studio.notify(NoticeLevel::Warning, format!("from the engine: {e}")),
                }
                return;
            };
            match super::json::parse::<FromWorker>(&json) {
                Ok(message) => apply(studio, message),
                Err(e) => studio.notify(
                    NoticeLevel::Warning,
                    format!("bad message from the engine: {e}"),
                ),
            }
        });
    worker.set_onmessage(Some(on_message.as_ref().unchecked_ref()));
    on_message.forget();
    let on_error = Closure::<dyn Fn(web_sys::Event)>::new(move |event: web_sys::Event| {
        let message = js_sys::Reflect::get(&event, &JsValue::from_str("message"))
            .ok()
            .and_then(|m| m.as_string())
            .unwrap_or_else(|| "the engine worker failed to start".into());
        // A panic report from the engine says more than the trap that follows it.
        if !matches!(studio.engine.get_untracked(), EngineState::Failed(_)) {
            studio.engine.set(EngineState::Failed(message));
        }
    });
    worker.set_onerror(Some(on_error.as_ref().unchecked_ref()));
    on_error.forget();
    WORKER.with(|w| *w.borrow_mut() = Some(worker));
    Ok(())
}

fn model(studio: Studio, id: &str) -> Option<ModelView> {
    studio
        .models
        .get_untracked()
        .into_iter()
        .find(|m| m.spec.with_value(|s| s.id == id))
}

/// A User Timing mark, for benchmarks and the browser's performance panel.
fn mark(name: &str) {
    if let Some(performance) = web_sys::window().and_then(|w| w.performance()) {
        let _ = performance.mark(name);
    }
}

fn apply(studio: Studio, message: FromWorker) {
    match message {
        FromWorker::EngineFetch { received, total } => {
            studio.engine_bytes.set(Some(received));
            studio.engine.set(EngineState::Fetching { received, total });
        }
        FromWorker::EngineLoaded => {
            mark("orfeas-engine-loaded");
            studio.engine.set(EngineState::Loaded);
        }
        FromWorker::EngineFailed { reason } => studio.engine.set(EngineState::Failed(reason)),
        FromWorker::Gpu { info } => studio.gpu.set(GpuState::Ready(info)),
        FromWorker::GpuUnavailable { reason } => studio.gpu.set(GpuState::Unavailable(reason)),
        FromWorker::Progress(progress) => {
            if let Some(m) = model(studio, &progress.model) {
                m.progress.set(Some(progress));
            }
        }
        FromWorker::Status { model: id, status } => {
            if matches!(status, ModelStatusReport::Ready { .. }) {
                mark(&format!("orfeas-ready:{id}"));
            }
            if let Some(m) = model(studio, &id) {
                m.status.set(status);
            }
            studio.models_changed();
        }
        FromWorker::Notice { level, message } => studio.notify(level, message),
        FromWorker::NotReady {
            request_id,
            retry_after_s,
            message,
            detail,
        } => studio.request.set(RequestState::Waiting {
            id: request_id,
            retry_in_s: retry_after_s,
            reason: message,
            detail,
        }),
        FromWorker::Result {
            request_id,
            message,
        } => studio.request.set(RequestState::Finished {
            id: request_id,
            ok: true,
            message,
        }),
        FromWorker::Error {
            request_id: Some(id),
            message,
        } => studio.request.set(RequestState::Finished {
            id,
            ok: false,
            message,
        }),
        FromWorker::Error {
            request_id: None,
            message,
        } => studio.notify(NoticeLevel::Warning, message),
        FromWorker::Stopped {
            request_id,
            message,
        } => studio.request.set(RequestState::Stopped {
            id: request_id,
            message,
        }),
        FromWorker::Warmed { model: id, seconds } => {
            if let Some(m) = model(studio, &id) {
                m.warmed_s.set(Some(seconds));
            }
        }
        FromWorker::Memory { wasm_heap_bytes } => studio.wasm_heap.set(Some(wasm_heap_bytes)),
        FromWorker::CacheReport { message } => studio.cache_report.set(Some(message)),
        FromWorker::ImageFailed { name, reason } => {
            studio.image_error.set(Some(format!("{name}: {reason}")))
        }
        FromWorker::Cutout(report) => set_cutout(studio, report, None),
        FromWorker::ShapeQuant(report) => {
            studio.shape_quant.set(Some(report));
            studio.models_changed();
        }
        FromWorker::Generating {
            request_id,
            stage,
            elapsed_s,
            left_s,
        } => {
            let stage = format!("{stage} · {}", time_so_far(elapsed_s, left_s));
            // A stop asked for stays asked for while the request runs on to its next step.
            let stopping = matches!(
                studio.request.get_untracked(),
                RequestState::Running { id, stopping: true, .. } if id == request_id
            );
            studio.request.set(RequestState::Running {
                id: request_id,
                stage,
                stopping,
            });
        }
    }
}

/// A finished cut-out (see [`bulk::CUTOUT`]).
fn show_cutout(studio: Studio, data: &JsValue) {
    let field = |key: &str| Some(bulk::get(data, key)).filter(|v| !v.is_undefined());
    let report = field(bulk::REPORT)
        .and_then(|r| r.as_string())
        .and_then(|json| super::json::parse::<FromWorker>(&json).ok());
    let Some(FromWorker::Cutout(report)) = report else {
        studio.notify(
            NoticeLevel::Warning,
            "a malformed cut-out from the engine".into(),
        );
        return;
    };
    let url = field(bulk::PNG).and_then(|png| {
        let parts = js_sys::Array::of1(&png);
        let options = web_sys::BlobPropertyBag::new();
        options.set_type("image/png");
        let blob = web_sys::Blob::new_with_u8_array_sequence_and_options(&parts, &options).ok()?;
        web_sys::Url::create_object_url_with_blob(&blob).ok()
    });
    set_cutout(studio, report, url);
}

fn set_cutout(studio: Studio, report: CutoutReport, url: Option<String>) {
    let previous = studio.cutout.get_untracked();
    // A status for the same image keeps its picture until a new one arrives.
    let url = match (url, previous) {
        (Some(url), Some(old)) => {
            if let Some(old_url) = old.url {
                let _ = web_sys::Url::revoke_object_url(&old_url);
            }
            Some(url)
        }
        (Some(url), None) => Some(url),
        (None, Some(old)) if old.report.name == report.name => old.url,
        (None, Some(old)) => {
            if let Some(old_url) = old.url {
                let _ = web_sys::Url::revoke_object_url(&old_url);
            }
            None
        }
        (None, None) => None,
    };
    studio.cutout.set(Some(CutoutView { report, url }));
}
