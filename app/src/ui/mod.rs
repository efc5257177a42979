//! The studio page: image input, one panel per model, the engine's state, and the viewer.
//! State lives in [`Studio`] (signals); [`bridge`] turns worker messages into signal updates.

mod bridge;
mod json;
mod page;
mod panels;
mod text;
mod viewer;

use std::time::Duration;

use leptos::prelude::*;
use orfeas_app::config::{ModelSpec, Role, SHAPE_PARTS};
use orfeas_app::protocol::{
    CutoutReport, DEFAULT_FACES, EngineOptions, GpuReport, LoadProgress, ModelStatusReport,
    NoticeLevel, ShapeQuantReport, ToWorker, ViewMode,
};
use orfeas_app::text::{fixed, retry_after_s};

use panels::{
    CutoutPanel, EnginePanel, GenerateControl, ImageDrop, ModelPanel, Notices, ShapeModelMissing,
    ShapeQuantCard, ViewDrops,
};
use viewer::{MeshView, ViewerArea, ViewerState};

/// One model's panel state.
#[derive(Clone, Copy)]
pub struct ModelView {
    pub spec: StoredValue<ModelSpec>,
    pub status: RwSignal<ModelStatusReport>,
    pub progress: RwSignal<Option<LoadProgress>>,
    /// Seconds its warm-up pass took on this GPU, once done.
    pub warmed_s: RwSignal<Option<f64>>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum EngineState {
    /// The UI has not started the worker yet (it waits for first paint).
    Idle,
    Fetching {
        received: u64,
        total: Option<u64>,
    },
    Loaded,
    Failed(String),
}

#[derive(Debug, Clone, PartialEq)]
pub enum GpuState {
    Pending,
    Ready(GpuReport),
    Unavailable(String),
}

#[derive(Debug, Clone, PartialEq)]
pub enum RequestState {
    Idle,
    /// Asked early: runs by itself when the models are ready (checked every second).
    Waiting {
        id: u64,
        retry_in_s: u32,
        reason: String,
        /// The raw error behind the wait, if any (shown collapsed).
        detail: Option<String>,
    },
    Running {
        id: u64,
        /// What the engine is doing, e.g. "sampling: step 3 of 30".
        stage: String,
        /// The user asked it to stop; it will at its next step.
        stopping: bool,
    },
    Finished {
        id: u64,
        ok: bool,
        message: String,
    },
    /// Stopped by the user: `message` says where.
    Stopped {
        id: u64,
        message: String,
    },
}

/// The current image's background removal: its state and, once done, the PNG's object URL.
#[derive(Debug, Clone, PartialEq)]
pub struct CutoutView {
    pub report: CutoutReport,
    pub url: Option<String>,
}

/// Everything the page shows, as signals, shared through context.
#[derive(Clone, Copy)]
pub struct Studio {
    pub models: RwSignal<Vec<ModelView>>,
    /// The model list is known (config resolved).
    pub configured: RwSignal<bool>,
    pub engine: RwSignal<EngineState>,
    /// Bytes of the engine bundle received so far (kept once it is loaded).
    pub engine_bytes: RwSignal<Option<u64>>,
    pub gpu: RwSignal<GpuState>,
    pub notices: RwSignal<Vec<(NoticeLevel, String)>>,
    pub request: RwSignal<RequestState>,
    pub next_request: RwSignal<u64>,
    pub cache_report: RwSignal<Option<String>>,
    pub wasm_heap: RwSignal<Option<u64>>,
    /// Why the chosen image was refused.
    pub image_error: RwSignal<Option<String>>,
    pub cutout: RwSignal<Option<CutoutView>>,
    /// The mesh on show (the preview, later the model's) with its downloads.
    pub mesh: RwSignal<Option<MeshView>>,
    pub viewer: RwSignal<ViewerState>,
    pub view_mode: RwSignal<ViewMode>,
    pub turntable: RwSignal<bool>,
    /// Object URL of the last snapshot PNG.
    pub snapshot: RwSignal<Option<String>>,
    /// The shape model's installed precisions and the one in use (from the worker's fit
    /// check).
    pub shape_quant: RwSignal<Option<ShapeQuantReport>>,
    /// The detail the user chose: the finished mesh's face budget (0: every face), sent with
    /// each Generate.
    pub faces: RwSignal<u32>,
    /// Vertex colours from the photo, sent with each Generate (the colour switch).
    pub colour: RwSignal<bool>,
    /// The other views of the object the user gave (a 2mv model): view, object URL.
    pub view_files: RwSignal<Vec<(String, String)>>,
    pub debug: bool,
}

impl Studio {
    fn new() -> Self {
        Self {
            models: RwSignal::new(Vec::new()),
            configured: RwSignal::new(false),
            engine: RwSignal::new(EngineState::Idle),
            engine_bytes: RwSignal::new(None),
            gpu: RwSignal::new(GpuState::Pending),
            notices: RwSignal::new(Vec::new()),
            request: RwSignal::new(RequestState::Idle),
            next_request: RwSignal::new(1),
            cache_report: RwSignal::new(None),
            wasm_heap: RwSignal::new(None),
            image_error: RwSignal::new(None),
            cutout: RwSignal::new(None),
            mesh: RwSignal::new(None),
            viewer: RwSignal::new(ViewerState::Empty),
            view_mode: RwSignal::new(ViewMode::Shaded),
            turntable: RwSignal::new(
                !page::query_params()
                    .iter()
                    .any(|(k, v)| k == "turntable" && v == "0"),
            ),
            snapshot: RwSignal::new(None),
            shape_quant: RwSignal::new(None),
            faces: RwSignal::new(
                EngineOptions::from_params(&page::query_params())
                    .faces
                    .unwrap_or(DEFAULT_FACES),
            ),
            view_files: RwSignal::new(Vec::new()),
            colour: RwSignal::new(!EngineOptions::from_params(&page::query_params()).grey),
            debug: page::query_params()
                .iter()
                .any(|(k, v)| k == "debug" && v == "1"),
        }
    }

    /// The shape model's parts in use: those of the precision the worker chose, else of the
    /// first shape model named.
    pub fn shape_parts(&self) -> Vec<ModelView> {
        self.models
            .get()
            .into_iter()
            .filter(|m| self.in_use_shape_part(m) == Some(true))
            .collect()
    }

    /// For a part of the shape model: whether it is of the set in use (`None`: not a part).
    fn in_use_shape_part(&self, view: &ModelView) -> Option<bool> {
        let Role::ShapePart { model, .. } = view.spec.get_value().role else {
            return None;
        };
        let chosen = self
            .shape_quant
            .with(|q| q.as_ref().map(|q| q.chosen.clone()));
        let chosen = chosen.or_else(|| {
            self.models
                .get()
                .iter()
                .find_map(|m| match m.spec.get_value().role {
                    Role::ShapePart { model, .. } => Some(model),
                    _ => None,
                })
        });
        Some(chosen.as_ref() == Some(&model))
    }

    /// The models that count: all but the precisions not in use (the shape model's, and
    /// background removal's on standby), which are not loaded, and neither shown nor waited
    /// for.
    pub fn models_in_use(&self) -> Vec<ModelView> {
        self.models
            .get()
            .into_iter()
            .filter(|m| {
                self.in_use_shape_part(m) != Some(false)
                    && !matches!(m.status.get(), ModelStatusReport::Standby { .. })
            })
            .collect()
    }

    /// No shape model can run here: none is configured (all three parts), or a part is not
    /// installed at its URL.
    pub fn shape_missing(&self) -> bool {
        let parts = self.shape_parts();
        parts.len() < SHAPE_PARTS.len()
            || parts
                .iter()
                .any(|m| matches!(m.status.get(), ModelStatusReport::NotInstalled { .. }))
    }

    /// What stands between the user and a generation now.
    fn blockers(&self) -> Blockers {
        let models = self.models_in_use();
        let loading: Vec<&ModelView> = models
            .iter()
            .filter(|m| {
                matches!(
                    m.status.get(),
                    ModelStatusReport::Waiting | ModelStatusReport::Loading
                )
            })
            .collect();
        Blockers {
            configured: self.configured.get(),
            shape_missing: self.shape_missing(),
            failed: models.iter().find_map(|m| match m.status.get() {
                ModelStatusReport::Failed { .. } => Some(m.spec.get_value().label),
                _ => None,
            }),
            eta: loading
                .iter()
                .filter_map(|m| m.progress.get().and_then(|p| p.eta_s))
                .fold(None, |acc: Option<f64>, e| {
                    Some(acc.map_or(e, |a| a.max(e)))
                }),
            loading: loading.iter().map(|m| m.spec.get_value().label).collect(),
        }
    }

    /// Why Generate cannot run now (`None`: it can): which model is missing, failed or still
    /// loading (with its ETA), every reason that applies.
    pub fn generate_blocker(&self) -> Option<String> {
        self.blockers().reason()
    }

    pub fn notify(&self, level: NoticeLevel, message: String) {
        self.notices.update(|n| n.push((level, message)));
    }

    /// Ask for a generation now: sent at once when ready, otherwise queued with a countdown.
    pub fn request_generate(&self) {
        if matches!(
            self.request.get_untracked(),
            RequestState::Waiting { .. } | RequestState::Running { .. }
        ) {
            return;
        }
        let id = self.next_request.get_untracked();
        self.next_request.set(id + 1);
        self.try_send(id);
    }

    /// The user's Stop: a running request stops at its next sampler step or field chunk (the
    /// worker answers `Stopped`); a waiting one is dropped here, as nothing runs yet.
    pub fn stop_request(&self) {
        match self.request.get_untracked() {
            RequestState::Running {
                id,
                stage,
                stopping: false,
            } => {
                bridge::send(&ToWorker::Stop { request_id: id });
                self.request.set(RequestState::Running {
                    id,
                    stage,
                    stopping: true,
                });
            }
            RequestState::Waiting { id, .. } => self.request.set(RequestState::Stopped {
                id,
                message: "stopped before it started".into(),
            }),
            _ => {}
        }
    }

    /// A request is running or waiting to: Stop applies.
    pub fn can_stop(&self) -> bool {
        matches!(
            self.request.get(),
            RequestState::Waiting { .. }
                | RequestState::Running {
                    stopping: false,
                    ..
                }
        )
    }

    fn try_send(&self, id: u64) {
        let blockers = self.blockers();
        let Some(reason) = blockers.reason() else {
            self.request.set(RequestState::Running {
                id,
                stage: String::new(),
                stopping: false,
            });
            bridge::send(&ToWorker::Generate {
                request_id: id,
                faces: Some(self.faces.get_untracked()),
                colour: Some(self.colour.get_untracked()),
            });
            return;
        };
        if !blockers.will_change() {
            // Nothing will change by waiting (no shape model): say so now.
            self.request.set(RequestState::Finished {
                id,
                ok: false,
                message: reason,
            });
            return;
        }
        let (retry_in_s, reason) = match blockers.failed {
            Some(_) => (5, reason),
            None => (
                retry_after_s(blockers.eta),
                "models still loading".to_string(),
            ),
        };
        self.request.set(RequestState::Waiting {
            id,
            retry_in_s,
            reason,
            detail: None,
        });
    }

    /// Once a second: count a waiting request down, and send it when its time comes.
    fn tick(&self) {
        if let RequestState::Waiting {
            id,
            retry_in_s,
            reason,
            detail,
        } = self.request.get_untracked()
        {
            if retry_in_s <= 1 || self.generate_blocker().is_none() {
                self.try_send(id);
            } else {
                self.request.set(RequestState::Waiting {
                    id,
                    retry_in_s: retry_in_s - 1,
                    reason,
                    detail,
                });
            }
        }
    }

    /// A model became ready: a waiting request need not wait for its countdown.
    pub fn models_changed(&self) {
        if let RequestState::Waiting { id, .. } = self.request.get_untracked() {
            let blockers = self.blockers();
            if blockers.reason().is_none() || blockers.loading.is_empty() {
                self.try_send(id);
            }
        }
    }
}

/// What keeps Generate from running (see [`Studio::generate_blocker`]).
struct Blockers {
    /// The model list is known.
    configured: bool,
    shape_missing: bool,
    /// The label of a model that failed to load.
    failed: Option<String>,
    /// The labels of the models still on their way, and the longest ETA among them.
    loading: Vec<String>,
    eta: Option<f64>,
}

impl Blockers {
    fn reason(&self) -> Option<String> {
        if !self.configured {
            return Some("reading the model list…".into());
        }
        let mut reasons = Vec::new();
        if self.shape_missing {
            reasons.push(
                "no shape model installed: see “Shape model” under Models for how to add one"
                    .to_string(),
            );
        }
        if let Some(label) = &self.failed {
            reasons.push(format!("{label} failed to load: press Retry on its panel"));
        }
        if !self.loading.is_empty() {
            let eta = self.eta.map_or(String::new(), |e| {
                format!(", about {} s left", fixed(e.ceil(), 0))
            });
            reasons.push(format!(
                "waiting for {} to load{eta}",
                self.loading.join(", ")
            ));
        }
        (!reasons.is_empty()).then(|| reasons.join("; "))
    }

    /// Whether waiting can change the answer: the list is being read, a model is loading, or
    /// a failed one can be retried.
    fn will_change(&self) -> bool {
        !self.configured || !self.loading.is_empty() || self.failed.is_some()
    }
}

#[component]
pub fn App() -> impl IntoView {
    let studio = Studio::new();
    provide_context(studio);
    bridge::install(studio);
    set_interval(move || studio.tick(), Duration::from_secs(1));
    view! {
        <header class="top">
            <h1>"Orfeas"</h1>
            <span class="tagline">"image to 3D, on your own GPU"</span>
        </header>
        <main class="studio">
            <div class="side">
                <ImageDrop />
                <ViewDrops />
                <CutoutPanel />
                <GenerateControl />
                <section class="models" data-testid="model-panel">
                    <h2>"Models"</h2>
                    <EnginePanel />
                    <Show
                        when=move || !studio.models.get().is_empty() || !studio.configured.get()
                        fallback=|| view! { <p class="muted">"No models configured."</p> }
                    >
                        <ShapeQuantCard />
                        <For
                            each=move || studio.models_in_use()
                            key=|m| m.spec.get_value().id
                            children=|m| view! { <ModelPanel model=m /> }
                        />
                        <Show when=move || studio.configured.get() && studio.shape_missing()>
                            <ShapeModelMissing />
                        </Show>
                    </Show>
                </section>
                <Notices />
            </div>
            <ViewerArea />
        </main>
    }
}

/// Start the engine only once the shell is on screen: the frame after mounting has painted
/// when the next task runs.
pub fn after_first_paint() {
    let _ = web_sys::window()
        .and_then(|w| w.performance())
        .map(|p| p.mark("orfeas-interactive"));
    request_animation_frame(|| set_timeout(bridge::start, Duration::ZERO));
}
