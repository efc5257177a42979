//! Small components, each reading the [`Studio`] signals it shows.

use leptos::prelude::*;
use orfeas_app::config::Role;
use orfeas_app::protocol::{
    AttentionPath, DETAIL_PRESETS, ModelStatusReport, NoticeLevel, ToWorker, clamp_faces,
    detail_preset,
};
use orfeas_app::text::fixed;
use wasm_bindgen::JsCast;

use super::text::{download_size, megabytes, progress_line};
use super::{EngineState, GpuState, ModelView, RequestState, Studio, bridge};

fn studio() -> Studio {
    expect_context::<Studio>()
}

/// Where the user drops or picks an image; works before any model is loaded.
#[component]
pub fn ImageDrop() -> impl IntoView {
    let studio = studio();
    let (file_name, set_file_name) = signal(None::<String>);
    let (preview, set_preview) = signal(None::<String>);
    let take = move |file: web_sys::File| {
        set_file_name.set(Some(file.name()));
        bridge::send_image(studio, &file);
        if let Ok(url) = web_sys::Url::create_object_url_with_blob(&file) {
            if let Some(old) = preview.get_untracked() {
                let _ = web_sys::Url::revoke_object_url(&old);
            }
            set_preview.set(Some(url));
        }
    };
    let on_change = move |ev: leptos::ev::Event| {
        let input: web_sys::HtmlInputElement = event_target(&ev);
        if let Some(file) = input.files().and_then(|f| f.get(0)) {
            take(file);
        }
    };
    let on_drop = move |ev: leptos::ev::DragEvent| {
        ev.prevent_default();
        if let Some(file) = ev
            .data_transfer()
            .and_then(|d| d.files())
            .and_then(|f| f.get(0))
        {
            take(file);
        }
    };
    view! {
        <section
            class="drop"
            data-testid="drop-zone"
            on:dragover=|ev: leptos::ev::DragEvent| ev.prevent_default()
            on:drop=on_drop
        >
            <label>
                "Drop an image here or "
                <input type="file" accept="image/png,image/jpeg,image/webp" on:change=on_change />
            </label>
            <p class="chosen">{move || file_name.get().unwrap_or_else(|| "no image chosen".into())}</p>
            <Show when=move || studio.image_error.get().is_some()>
                <p class="error" data-testid="image-error">{move || studio.image_error.get().unwrap_or_default()}</p>
            </Show>
            <Show when=move || preview.get().is_some()>
                <img class="preview" alt="chosen image" src=move || preview.get().unwrap_or_default() />
            </Show>
        </section>
    }
}

/// A drop zone for each view of the object the shape model takes besides the front (a 2mv
/// model's left, back, right), shown only for such a model. Each picture goes to the engine,
/// which cuts it out as it does the front when a generation runs; a new front clears them.
#[component]
pub fn ViewDrops() -> impl IntoView {
    let studio = studio();
    let none = move || {
        studio
            .shape_quant
            .with(|q| q.as_ref().is_none_or(|q| q.views.is_empty()))
    };
    view! {
        <section class="drop views" data-testid="views" hidden=none>
            <p class="muted">"More views of the object (optional):"</p>
            {view_drop("left")}
            {view_drop("back")}
            {view_drop("right")}
        </section>
    }
}

/// One view's zone: hidden unless the model takes it; the picture's thumbnail once given.
fn view_drop(view: &'static str) -> impl IntoView {
    let studio = studio();
    let offered = move || {
        studio.shape_quant.with(|q| {
            q.as_ref()
                .is_some_and(|q| q.views.iter().any(|v| v == view))
        })
    };
    let url = move || {
        studio.view_files.with(|files| {
            files
                .iter()
                .find(|(v, _)| v == view)
                .map(|(_, url)| url.clone())
        })
    };
    let on_change = move |ev: leptos::ev::Event| {
        let input: web_sys::HtmlInputElement = event_target(&ev);
        if let Some(file) = input.files().and_then(|f| f.get(0)) {
            bridge::send_view(studio, &file, view);
        }
        input.set_value("");
    };
    view! {
        <div class="view" data-view=view hidden=move || !offered()>
            <label>
                {view} ": "
                <input type="file" accept="image/png,image/jpeg,image/webp" on:change=on_change />
            </label>
            <img class="thumb" alt=view src=move || url().unwrap_or_default() hidden=move || url().is_none() />
            <button on:click=move |_| bridge::drop_view(studio, view) hidden=move || url().is_none()>"×"</button>
        </div>
    }
}

/// The cut-out of the current image on a checkerboard (so transparency shows), with its state:
/// waiting for background removal to load, running, ready (with a download), kept, failed.
#[component]
pub fn CutoutPanel() -> impl IntoView {
    let studio = studio();
    let state = move || {
        studio
            .cutout
            .get()
            .map_or("none", |c| c.report.state.name())
    };
    let message = move || {
        studio
            .cutout
            .get()
            .map(|c| c.report.message)
            .unwrap_or_default()
    };
    let url = move || studio.cutout.get().and_then(|c| c.url);
    let progress = move || studio.cutout.get().and_then(|c| c.report.progress);
    let detail = move || studio.cutout.get().and_then(|c| c.report.detail);
    let device = move || {
        studio
            .cutout
            .get()
            .and_then(|c| c.report.device)
            .map_or("", |d| d.name())
    };
    let reduced = move || {
        studio
            .cutout
            .get()
            .is_some_and(|c| c.report.reduced && state() == "ready")
    };
    view! {
        <Show when=move || studio.cutout.get().is_some()>
            <section
                class="cutout"
                data-testid="cutout"
                data-state=state
                data-device=device
                data-progress=move || progress().map(|p| fixed(p, 4)).unwrap_or_default()
            >
                <h2>"Cut-out"</h2>
                <p class="muted" data-testid="cutout-status">{message}</p>
                <Show when=move || progress().is_some()>
                    <div class="bar">
                        <div class="fill" style:width=move || format!("{}%", fixed(progress().unwrap_or(0.0) * 100.0, 1))></div>
                    </div>
                </Show>
                <Details text=detail />
                <Show when=reduced>
                    <button
                        data-testid="cutout-full-size"
                        on:click=|_| bridge::send(&ToWorker::CutoutFullSize)
                        title="Run background removal at the reference's 1024² (about a minute on the CPU, minutes on a software renderer)"
                    >
                        "Cut out at full size"
                    </button>
                </Show>
                <Show when=move || url().is_some()>
                    <div class="checkerboard" data-testid="checkerboard">
                        <img
                            data-testid="cutout-image"
                            alt="the subject without its background"
                            src=move || url().unwrap_or_default()
                        />
                    </div>
                    <a class="download" href=move || url().unwrap_or_default() download="cutout.png">
                        "Download cut-out (PNG)"
                    </a>
                </Show>
            </section>
        </Show>
    }
}

/// The Generate button (enabled once every model is ready), the `g` shortcut, and the state
/// of the current request, including "still loading, retrying in N s".
#[component]
pub fn GenerateControl() -> impl IntoView {
    let studio = studio();
    let on_key = window_event_listener(leptos::ev::keydown, move |ev| {
        let typing = ev
            .target()
            .and_then(|t| t.dyn_into::<web_sys::HtmlInputElement>().ok())
            .is_some();
        if ev.key() == "g" && !typing && !ev.ctrl_key() && !ev.meta_key() {
            studio.request_generate();
        }
        if ev.key() == "Escape" {
            studio.stop_request();
        }
    });
    on_cleanup(move || on_key.remove());
    let state = move || match studio.request.get() {
        RequestState::Idle => ("idle", String::new()),
        RequestState::Waiting {
            retry_in_s, reason, ..
        } => ("waiting", format!("{reason}, retrying in {retry_in_s} s")),
        RequestState::Running {
            id, stopping: true, ..
        } => (
            "running",
            format!("request {id}: stopping at the next step…"),
        ),
        RequestState::Running { id, stage, .. } if stage.is_empty() => {
            ("running", format!("request {id} running…"))
        }
        RequestState::Running { id, stage, .. } => ("running", format!("request {id}: {stage}…")),
        RequestState::Finished { id, ok, message } => (
            if ok { "done" } else { "error" },
            format!("request {id}: {message}"),
        ),
        RequestState::Stopped { id, message } => ("stopped", format!("request {id}: {message}")),
    };
    let blocker = move || studio.generate_blocker();
    let detail = move || match studio.request.get() {
        RequestState::Waiting { detail, .. } => detail,
        _ => None,
    };
    view! {
        <section class="generate">
            <button
                data-testid="generate"
                disabled=move || blocker().is_some()
                on:click=move |_| studio.request_generate()
                title=move || match blocker() {
                    Some(reason) => format!("Generate 3D is unavailable: {reason}"),
                    None => "Generate a 3D model from the image (shortcut: g)".into(),
                }
            >
                "Generate 3D"
            </button>
            <button
                data-testid="stop"
                class="stop"
                disabled=move || !studio.can_stop()
                on:click=move |_| studio.stop_request()
                title="Stop the request at its next step (shortcut: Esc)"
            >
                "Stop"
            </button>
            <DetailControl />
            <label class="detail" title="Vertex colours from the photo on the surfaces it sees (GLB, OBJ and PLY carry them); off: a grey mesh">
                <input type="checkbox" data-testid="colour" prop:checked=move || studio.colour.get() on:change=move |ev| studio.colour.set(event_target_checked(&ev)) />
                " Colour"
            </label>
            <p class="reason" data-testid="generate-reason">{move || blocker()}</p>
            <p class="request" data-testid="request-status" data-state=move || state().0>
                {move || state().1}
            </p>
            <Details text=detail />
        </section>
    }
}

/// The finished mesh's detail: a face count, typed or picked from the presets (low-poly to
/// every face) the input lists, and the preset's name. Applies to the next Generate; works
/// before any model is loaded.
#[component]
pub fn DetailControl() -> impl IntoView {
    let faces = studio().faces;
    let type_in = move |ev: leptos::ev::Event| {
        match event_target_value(&ev).trim().parse::<u32>() {
            Ok(budget) => faces.set(clamp_faces(budget)),
            // Not a number: show the budget in force again.
            Err(_) => faces.update(|_| {}),
        }
    };
    view! {
        <label class="detail" title="Faces of the finished mesh: the clean-up decimates to this many (never opening a closed surface); 0 keeps every face">
            "Detail "
            <input
                type="number"
                list="detail-presets"
                data-testid="faces"
                min="0"
                max="1000000"
                step="100"
                prop:value=move || faces.get().to_string()
                on:change=type_in
            />
            <datalist id="detail-presets">
                {DETAIL_PRESETS
                    .iter()
                    .map(|(name, budget)| view! { <option value=budget.to_string() label=*name /> })
                    .collect_view()}
            </datalist>
            " faces: "
            <span data-testid="detail">{move || detail_preset(faces.get()).unwrap_or("Custom")}</span>
        </label>
    }
}

/// The engine bundle's download and the GPU it found.
#[component]
pub fn EnginePanel() -> impl IntoView {
    let studio = studio();
    let engine_attr = move || match studio.engine.get() {
        EngineState::Idle => "idle",
        EngineState::Fetching { .. } => "fetching",
        EngineState::Loaded => "loaded",
        EngineState::Failed(_) => "failed",
    };
    let engine_text = move || match studio.engine.get() {
        EngineState::Idle => "Engine: waiting".to_string(),
        EngineState::Fetching { received, total } => match total {
            Some(total) => format!("Engine: {} / {}", megabytes(received), megabytes(total)),
            None => format!("Engine: {}", megabytes(received)),
        },
        EngineState::Loaded => match studio.engine_bytes.get() {
            Some(bytes) => format!("Engine: loaded ({})", megabytes(bytes)),
            None => "Engine: loaded".into(),
        },
        EngineState::Failed(reason) => format!("Engine failed: {reason}"),
    };
    let gpu_attr = move || match studio.gpu.get() {
        GpuState::Pending => "pending",
        GpuState::Ready(_) => "ok",
        GpuState::Unavailable(_) => "unavailable",
    };
    let gpu_text = move || match studio.gpu.get() {
        GpuState::Pending => String::new(),
        GpuState::Ready(info) => format!(
            "GPU: {} ({}{}), models in {}{}",
            info.adapter,
            info.backend,
            if info.software { ", software" } else { "" },
            info.dtype,
            match &info.attention {
                None => String::new(),
                Some(AttentionPath::Fused) => ", fused attention".into(),
                Some(AttentionPath::Sliced { reason }) => {
                    format!(", attention in slices ({reason})")
                }
            }
        ),
        GpuState::Unavailable(reason) => format!("WebGPU unavailable: {reason}"),
    };
    let attention_attr = move || match studio.gpu.get() {
        GpuState::Ready(info) => match info.attention {
            Some(AttentionPath::Fused) => "fused",
            Some(AttentionPath::Sliced { .. }) => "sliced",
            None => "",
        },
        _ => "",
    };
    let heap = move || {
        studio
            .wasm_heap
            .get()
            .map(|b| b.to_string())
            .unwrap_or_default()
    };
    view! {
        <div class="engine" data-testid="engine" data-engine=engine_attr data-gpu=gpu_attr data-wasm-heap=heap>
            <p>{engine_text}</p>
            <p class=move || if gpu_attr() == "unavailable" { "error" } else { "" } data-testid="gpu" data-attention=attention_attr>
                {gpu_text}
            </p>
            <div class="cache-controls">
                <button data-testid="verify-cache" on:click=|_| bridge::send(&ToWorker::VerifyCache)>
                    "Verify model cache"
                </button>
                <button data-testid="clear-cache" on:click=|_| bridge::send(&ToWorker::ClearCache)>
                    "Clear model cache"
                </button>
                <Show when=move || studio.debug>
                    <button
                        data-testid="simulate-gpu-loss"
                        on:click=|_| {
                            bridge::send(&ToWorker::SimulateDeviceLoss);
                            super::viewer::simulate_device_loss();
                        }
                    >
                        "Simulate GPU reset"
                    </button>
                </Show>
            </div>
            <pre class="cache-report" data-testid="cache-report">
                {move || studio.cache_report.get().unwrap_or_default()}
            </pre>
        </div>
    }
}

/// One model: status, streamed progress, and Retry when it failed.
#[component]
pub fn ModelPanel(model: ModelView) -> impl IntoView {
    let spec = model.spec.get_value();
    let id = spec.id.clone();
    let status_name = move || model.status.get().name();
    let fraction = move || match model.status.get() {
        ModelStatusReport::Ready { .. } => 1.0,
        _ => model.progress.get().map(|p| p.fraction()).unwrap_or(0.0),
    };
    let status_text = move || match model.status.get() {
        ModelStatusReport::Waiting => "waiting".to_string(),
        ModelStatusReport::Loading => "loading".into(),
        ModelStatusReport::Ready {
            tensors,
            from_cache,
            precision,
        } => format!(
            "ready · {precision} · {tensors} tensors{}",
            if from_cache { " · from cache" } else { "" }
        ),
        ModelStatusReport::Failed { .. } => "failed".into(),
        ModelStatusReport::NotInstalled { .. } => "not installed".into(),
        ModelStatusReport::Standby { instead } => format!("not in use: {instead} is"),
    };
    let missing = move || match model.status.get() {
        ModelStatusReport::NotInstalled { url } => Some(url),
        _ => None,
    };
    // A shape model's missing parts are told once, by the shape model's card.
    let shape_part = matches!(spec.role, Role::ShapePart { .. });
    let reason = move || match model.status.get() {
        ModelStatusReport::Failed { reason } => Some(reason),
        _ => None,
    };
    let retry_id = id.clone();
    let retry = move |_| {
        model.status.set(ModelStatusReport::Loading);
        bridge::send(&ToWorker::Retry {
            model: retry_id.clone(),
        });
    };
    view! {
        <div
            class="model"
            hidden=move || shape_part && missing().is_some()
            data-model=id
            data-status=status_name
            data-progress=move || fixed(fraction(), 4)
            data-warm-s=move || model.warmed_s.get().map(|s| fixed(s, 1)).unwrap_or_default()
            data-load-s=move || model.progress.get().map(|p| fixed(p.elapsed_s, 3)).unwrap_or_default()
            data-bytes=move || model.progress.get().map(|p| p.bytes_total.to_string()).unwrap_or_default()
            data-tensors=move || match model.status.get() {
                ModelStatusReport::Ready { tensors, .. } => tensors.to_string(),
                _ => String::new(),
            }
            data-precision=move || match model.status.get() {
                ModelStatusReport::Ready { precision, .. } => precision,
                _ => String::new(),
            }
        >
            <div class="model-head">
                <strong>{spec.label.clone()}</strong>
                <span class=move || format!("status {}", status_name())>{status_text}</span>
            </div>
            <div class="bar"><div class="fill" style:width=move || format!("{}%", fixed(fraction() * 100.0, 1))></div></div>
            <p class="detail" data-testid="progress-detail">
                {move || model.progress.get().map(|p| progress_line(&p)).unwrap_or_default()}
            </p>
            {move || missing().map(|url| view! {
                <p class="detail" data-testid="not-installed">{format!("nothing installed at {url}")}</p>
            })}
            {move || reason().map(|reason| view! {
                <p class="error" data-testid="model-error">{reason}</p>
                <button data-testid="retry" on:click=retry.clone()>"Retry"</button>
            })}
        </div>
    }
}

/// The shape model's installed precisions with their download sizes: the one loaded and why,
/// and a choice of the others (one that cannot fit this GPU is disabled, with the reason).
/// Drawn whole from each report (one closure: the UI bundle's size is a budget).
#[component]
pub fn ShapeQuantCard() -> impl IntoView {
    let studio = studio();
    move || {
        studio.shape_quant.get().map(|report| {
            let chosen = report
                .options
                .iter()
                .find(|o| o.folder == report.chosen)
                .map(|o| o.precision.clone())
                .unwrap_or_default();
            let because = format!("{chosen} loaded: {}", report.because);
            let options = report
                .options
                .into_iter()
                .map(|option| {
                    let precision = option.precision;
                    let checked = precision == chosen;
                    let size = download_size(option.bytes);
                    let (title, text) = match option.refused {
                        Some(reason) => (reason, format!(" {precision} · {size} · does not fit this GPU")),
                        None => (
                            "download and GPU memory: about this much".to_string(),
                            format!(" {precision} · {size}"),
                        ),
                    };
                    let id = format!("quant-{precision}");
                    let shown = precision.clone();
                    let on_change = move |_| {
                        bridge::remember_quant(&precision);
                        bridge::send(&ToWorker::ChooseQuant {
                            precision: precision.clone(),
                        });
                    };
                    view! {
                        <label title=title data-precision=shown data-bytes=option.bytes.to_string()>
                            <input type="radio" name="shape-quant" data-testid=id checked=checked on:change=on_change />
                            {text}
                        </label>
                    }
                })
                .collect::<Vec<_>>();
            view! {
                <div class="model shape-quant" data-testid="shape-quant" data-chosen=chosen.clone()>
                    <strong>{format!("Shape model: {}", report.model)}</strong>
                    <p class="detail" data-testid="shape-quant-because">{because}</p>
                    {options}
                </div>
            }
        })
    }
}

/// A raw error, collapsed under "details" (nothing when there is none).
#[component]
pub fn Details(text: impl Fn() -> Option<String> + Send + Sync + 'static) -> impl IntoView {
    move || {
        text().map(|text| {
            view! {
                <details class="raw" data-testid="details">
                    <summary>"details"</summary>
                    <code>{text}</code>
                </details>
            }
        })
    }
}

/// The one calm card for a shape model that is not installed: what it is for, how to get one,
/// and what works without it.
#[component]
pub fn ShapeModelMissing() -> impl IntoView {
    view! {
        <div class="model not-installed" data-testid="shape-missing">
            <div class="model-head">
                <strong>"Shape model"</strong>
                <span class="status">"not installed"</span>
            </div>
            <p class="detail">
                "Turns the cut-out into a 3D mesh (Hunyuan3D-2). Background removal and the \
                 instant preview work without it."
            </p>
            <p class="detail">
                "To add one, convert an official checkpoint and restart the server: "
                <code>"orfeas convert model.fp16.ckpt --config config.yaml -o <models>/hunyuan3d"</code>
                " (the folder given to "<code>"orfeas serve --models"</code>"). Checkpoints: \
                 2mini 3.8 GB, 2.0 4.9 GB, 2.1 7.4 GB; the GPU needs about as much memory."
            </p>
        </div>
    }
}

#[component]
pub fn Notices() -> impl IntoView {
    let studio = studio();
    view! {
        <section class="notices" data-testid="notices">
            <For
                each=move || studio.notices.get().into_iter().enumerate()
                key=|(i, _)| *i
                children=|(_, (level, message))| {
                    let class = match level {
                        NoticeLevel::Info => "notice info",
                        NoticeLevel::Warning => "notice warning",
                    };
                    view! { <p class=class>{message}</p> }
                }
            />
        </section>
    }
}
