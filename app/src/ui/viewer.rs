//! The viewer panel: a canvas handed to the viewer worker (wgpu, its own thread), pointer and
//! wheel input sent to it as camera deltas, mode buttons, the mesh's counts and label, and the
//! downloads. The worker starts with the first mesh, so pages without one never pay for it.

use std::cell::RefCell;
use std::collections::HashMap;

use leptos::prelude::*;
use orfeas_app::protocol::bulk::{self, get};
use orfeas_app::protocol::{FromViewer, MeshMeta, ToViewer, ViewMode};
use wasm_bindgen::JsCast;
use wasm_bindgen::prelude::*;

use super::Studio;

/// What the viewer shows and can hand out.
#[derive(Debug, Clone, PartialEq)]
pub struct MeshView {
    pub meta: MeshMeta,
    /// (extension, object URL) of each export.
    pub downloads: Vec<(&'static str, String)>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum ViewerState {
    Empty,
    Starting,
    Showing,
    Failed(String),
}

thread_local! {
    static VIEWER: RefCell<Option<web_sys::Worker>> = const { RefCell::new(None) };
    static CANVAS: RefCell<Option<web_sys::HtmlCanvasElement>> = const { RefCell::new(None) };
    /// What holds the canvas (and takes the pointer input): a canvas handed to a worker cannot
    /// be handed again, so a viewer restarted after a GPU reset gets a new one here.
    static HOLDER: RefCell<Option<web_sys::HtmlElement>> = const { RefCell::new(None) };
    /// The mesh on show, kept to show it again in a restarted viewer.
    static GEOMETRY: RefCell<Option<js_sys::Object>> = const { RefCell::new(None) };
    /// Viewers restarted after a GPU reset (at most [`MAX_RESTARTS`]).
    static RESTARTS: std::cell::Cell<u32> = const { std::cell::Cell::new(0) };
}

/// Where the probe's answer (draw straight to the canvas, or read frames back) is kept: the
/// probe presents a canvas, which on some browsers resets the GPU process — once is enough.
const OUTPUT_KEY: &str = "orfeas-viewer-output";
const MAX_RESTARTS: u32 = 2;

fn local_storage() -> Option<web_sys::Storage> {
    web_sys::window().and_then(|w| w.local_storage().ok().flatten())
}

/// `?viewer=direct|readback`, else what the probe found on an earlier visit, else "" (probe).
fn output_mode() -> String {
    super::page::query_params()
        .into_iter()
        .find(|(k, _)| k == "viewer")
        .map(|(_, v)| v)
        .or_else(|| local_storage().and_then(|s| s.get_item(OUTPUT_KEY).ok().flatten()))
        .unwrap_or_default()
}

/// A fresh canvas in the holder, replacing the one a lost viewer had.
fn mount_canvas() -> Option<web_sys::HtmlCanvasElement> {
    let holder = HOLDER.with(|h| h.borrow().clone())?;
    let canvas: web_sys::HtmlCanvasElement = web_sys::window()?
        .document()?
        .create_element("canvas")
        .ok()?
        .dyn_into()
        .ok()?;
    canvas.set_class_name("viewer-canvas");
    holder.set_inner_html("");
    holder.append_child(&canvas).ok()?;
    CANVAS.with(|c| *c.borrow_mut() = Some(canvas.clone()));
    Some(canvas)
}

/// The viewer lost its GPU device: start a new one on a new canvas and show the mesh again.
fn restart_viewer(studio: Studio) {
    let restarts = RESTARTS.with(|r| r.get()) + 1;
    RESTARTS.with(|r| r.set(restarts));
    if let Some(worker) = VIEWER.with(|v| v.borrow_mut().take()) {
        worker.terminate();
    }
    if restarts > MAX_RESTARTS || mount_canvas().is_none() {
        studio.viewer.set(ViewerState::Failed(format!(
            "the GPU was reset {restarts} times; reload the page"
        )));
        return;
    }
    ensure_viewer(studio);
    if let Some(geometry) = GEOMETRY.with(|g| g.borrow().clone()) {
        post_geometry(&geometry);
    }
}

/// Hand the viewer a copy of the geometry (structured clone): the page keeps its own.
fn post_geometry(geometry: &js_sys::Object) {
    VIEWER.with(|v| {
        if let Some(worker) = v.borrow().as_ref() {
            let _ = worker.post_message(geometry);
        }
    });
}

fn send(message: &ToViewer) {
    // The viewer's messages hold no integer beyond 2^53: they always serialise.
    let Ok(json) = super::json::to_string(message) else {
        return;
    };
    VIEWER.with(|v| {
        if let Some(worker) = v.borrow().as_ref() {
            let _ = worker.post_message(&JsValue::from_str(&json));
        }
    });
}

/// The canvas's size in device pixels (capped at 2× so a 4K screen does not quadruple the work).
fn canvas_size(canvas: &web_sys::HtmlCanvasElement) -> (u32, u32) {
    let ratio = web_sys::window()
        .map_or(1.0, |w| w.device_pixel_ratio())
        .min(2.0);
    let width = (f64::from(canvas.client_width()) * ratio).round().max(1.0) as u32;
    let height = (f64::from(canvas.client_height()) * ratio).round().max(1.0) as u32;
    (width, height)
}

/// Start the viewer worker on the canvas (once).
fn ensure_viewer(studio: Studio) {
    if VIEWER.with(|v| v.borrow().is_some()) {
        return;
    }
    let Some(canvas) = CANVAS.with(|c| c.borrow().clone()) else {
        return;
    };
    let started = (|| -> Result<web_sys::Worker, String> {
        let (width, height) = canvas_size(&canvas);
        canvas.set_width(width);
        canvas.set_height(height);
        let offscreen = canvas
            .transfer_control_to_offscreen()
            .map_err(|e| format!("{e:?}"))?;
        let worker = web_sys::Worker::new("viewer.js").map_err(|e| format!("{e:?}"))?;
        let init = js_sys::Object::new();
        let _ = js_sys::Reflect::set(&init, &"type".into(), &"init".into());
        // `?viewer=direct|readback`, or an earlier visit's probe, skips the probe (viewer.js).
        let _ = js_sys::Reflect::set(&init, &"output".into(), &output_mode().into());
        let _ = js_sys::Reflect::set(&init, &"canvas".into(), &offscreen);
        worker
            .post_message_with_transfer(&init, &js_sys::Array::of1(&offscreen))
            .map_err(|e| format!("{e:?}"))?;
        Ok(worker)
    })();
    let worker = match started {
        Ok(worker) => worker,
        Err(reason) => {
            studio.viewer.set(ViewerState::Failed(reason));
            return;
        }
    };
    studio.viewer.set(ViewerState::Starting);
    let on_message =
        Closure::<dyn Fn(web_sys::MessageEvent)>::new(move |event: web_sys::MessageEvent| {
            let data = event.data();
            if let Some(json) = data.as_string() {
                match super::json::parse::<FromViewer>(&json) {
                    Ok(FromViewer::Ready { direct, .. }) => {
                        // Only the probe's own answer is kept, not a mode a link forced.
                        let forced = super::page::query_params()
                            .iter()
                            .any(|(k, _)| k == "viewer");
                        if !forced && let Some(storage) = local_storage() {
                            let mode = if direct { "direct" } else { "readback" };
                            let _ = storage.set_item(OUTPUT_KEY, mode);
                        }
                    }
                    Ok(FromViewer::Showing { .. }) => studio.viewer.set(ViewerState::Showing),
                    Ok(FromViewer::Failed {
                        device_lost: true, ..
                    }) => {
                        studio.notify(
                            orfeas_app::protocol::NoticeLevel::Warning,
                            "GPU reset — the 3D viewer starts again".into(),
                        );
                        restart_viewer(studio)
                    }
                    Ok(FromViewer::Failed { reason, .. }) => {
                        studio.viewer.set(ViewerState::Failed(reason))
                    }
                    Ok(FromViewer::Error { message }) => {
                        studio.notify(orfeas_app::protocol::NoticeLevel::Warning, message)
                    }
                    Err(e) => leptos::logging::warn!("viewer: {e}"),
                }
            } else if bulk::kind(&data) == Ok(bulk::Kind::Snapshot) {
                let png: web_sys::Blob = get(&data, bulk::PNG).unchecked_into();
                if let Ok(url) = web_sys::Url::create_object_url_with_blob(&png) {
                    if let Some(old) = studio.snapshot.get_untracked() {
                        let _ = web_sys::Url::revoke_object_url(&old);
                    }
                    studio.snapshot.set(Some(url));
                }
            }
        });
    worker.set_onmessage(Some(on_message.as_ref().unchecked_ref()));
    on_message.forget();
    VIEWER.with(|v| *v.borrow_mut() = Some(worker));
    send(&ToViewer::Turntable {
        enabled: studio.turntable.get_untracked(),
    });
    send(&ToViewer::Mode {
        mode: studio.view_mode.get_untracked(),
    });
}

/// A mesh message from the engine: keep its exports as downloads, hand the geometry on.
pub fn show_mesh(studio: Studio, data: &JsValue) {
    let meta = match get(data, bulk::META)
        .as_string()
        .map(|json| super::json::parse::<MeshMeta>(&json))
    {
        Some(Ok(meta)) => meta,
        _ => return,
    };
    let mut downloads = Vec::new();
    for (ext, mime) in bulk::FILES {
        let parts = js_sys::Array::of1(&get(data, ext));
        let options = web_sys::BlobPropertyBag::new();
        options.set_type(mime);
        if let Ok(blob) = web_sys::Blob::new_with_u8_array_sequence_and_options(&parts, &options)
            && let Ok(url) = web_sys::Url::create_object_url_with_blob(&blob)
        {
            downloads.push((ext, url));
        }
    }
    if let Some(old) = studio.mesh.get_untracked() {
        for (_, url) in old.downloads {
            let _ = web_sys::Url::revoke_object_url(&url);
        }
    }
    studio.mesh.set(Some(MeshView { meta, downloads }));
    ensure_viewer(studio);
    let geometry = bulk::message(bulk::Kind::Mesh);
    for key in bulk::GEOMETRY {
        bulk::set(&geometry, key, &get(data, key));
    }
    post_geometry(&geometry);
    GEOMETRY.with(|g| *g.borrow_mut() = Some(geometry));
}

/// The debug button's GPU reset reaches the viewer's device too.
pub fn simulate_device_loss() {
    send(&ToViewer::SimulateDeviceLoss);
}

/// The download name: the image's stem plus the kind of mesh.
fn file_name(meta: &MeshMeta, ext: &str) -> String {
    let stem = meta
        .source
        .rsplit_once('.')
        .map_or(meta.source.as_str(), |(stem, _)| stem);
    let kind = if meta.preview { "preview" } else { "3d" };
    format!("{stem}-{kind}.{ext}")
}

#[component]
pub fn ViewerArea() -> impl IntoView {
    let studio = expect_context::<Studio>();
    let holder_ref = NodeRef::<leptos::html::Div>::new();
    holder_ref.on_load(|holder| {
        HOLDER.with(|h| *h.borrow_mut() = Some(holder.into()));
        mount_canvas();
    });
    let _resize = window_event_listener(leptos::ev::resize, move |_| {
        if let Some(canvas) = CANVAS.with(|c| c.borrow().clone()) {
            let (width, height) = canvas_size(&canvas);
            send(&ToViewer::Resize { width, height });
        }
    });
    // Pointers down on the canvas: id → last position.
    let pointers = StoredValue::new(HashMap::<i32, (f32, f32)>::new());
    let on_down = move |ev: leptos::ev::PointerEvent| {
        if let Some(holder) = HOLDER.with(|h| h.borrow().clone()) {
            let _ = holder.set_pointer_capture(ev.pointer_id());
        }
        pointers.update_value(|p| {
            p.insert(
                ev.pointer_id(),
                (ev.client_x() as f32, ev.client_y() as f32),
            );
        });
    };
    let on_move = move |ev: leptos::ev::PointerEvent| {
        let id = ev.pointer_id();
        let now = (ev.client_x() as f32, ev.client_y() as f32);
        let Some(before) = pointers.with_value(|p| p.get(&id).copied()) else {
            return;
        };
        let others: Vec<(f32, f32)> = pointers.with_value(|p| {
            p.iter()
                .filter(|(k, _)| **k != id)
                .map(|(_, v)| *v)
                .collect()
        });
        pointers.update_value(|p| {
            p.insert(id, now);
        });
        let (dx, dy) = (now.0 - before.0, now.1 - before.1);
        match others.as_slice() {
            [] if ev.buttons() & 1 == 1 && !ev.shift_key() => send(&ToViewer::Orbit { dx, dy }),
            [] => send(&ToViewer::Pan { dx, dy }),
            [other, ..] => {
                // Two fingers: the change of their distance zooms, their midpoint pans.
                let span =
                    |p: (f32, f32)| ((p.0 - other.0).powi(2) + (p.1 - other.1).powi(2)).sqrt();
                if span(before) > 1.0 {
                    send(&ToViewer::Zoom {
                        factor: span(now) / span(before),
                    });
                }
                send(&ToViewer::Pan {
                    dx: dx / 2.0,
                    dy: dy / 2.0,
                });
            }
        }
    };
    let on_up = move |ev: leptos::ev::PointerEvent| {
        pointers.update_value(|p| {
            p.remove(&ev.pointer_id());
        });
    };
    let on_wheel = move |ev: leptos::ev::WheelEvent| {
        ev.prevent_default();
        send(&ToViewer::Zoom {
            factor: (-ev.delta_y() as f32 * 0.0015).exp(),
        });
    };
    let set_mode = move |mode: ViewMode| {
        studio.view_mode.set(mode);
        send(&ToViewer::Mode { mode });
    };
    let state_name = move || match studio.viewer.get() {
        ViewerState::Empty => "empty",
        ViewerState::Starting => "starting",
        ViewerState::Showing => "showing",
        ViewerState::Failed(_) => "failed",
    };
    let mesh = move || studio.mesh.get();
    view! {
        <section
            class="viewer"
            data-testid="viewer"
            data-state=state_name
            data-mode=move || studio.view_mode.get().name()
            data-faces=move || mesh().map(|m| m.meta.faces.to_string()).unwrap_or_default()
            data-vertices=move || mesh().map(|m| m.meta.vertices.to_string()).unwrap_or_default()
            data-snapshot=move || studio.snapshot.get().unwrap_or_default()
        >
            <div class="viewer-bar">
                <span class="viewer-label" data-testid="mesh-label">
                    {move || match mesh() {
                        Some(m) => m.meta.label,
                        None => "The 3D result appears here; drop an image for an instant preview.".into(),
                    }}
                </span>
                <span class="viewer-counts">
                    {move || mesh().map(|m| format!("{} faces · {} vertices", m.meta.faces, m.meta.vertices))}
                </span>
            </div>
            <div
                node_ref=holder_ref
                class="viewer-canvas-holder"
                on:pointerdown=on_down
                on:pointermove=on_move
                on:pointerup=on_up
                on:pointercancel=on_up
                on:wheel=on_wheel
                on:dblclick=move |_| send(&ToViewer::Reset)
                on:contextmenu=|ev: leptos::ev::MouseEvent| ev.prevent_default()
            ></div>
            <Show when=move || matches!(studio.viewer.get(), ViewerState::Failed(_))>
                <p class="error">{move || match studio.viewer.get() {
                    ViewerState::Failed(reason) => format!("3D viewer unavailable: {reason}"),
                    _ => String::new(),
                }}</p>
            </Show>
            <div class="viewer-tools">
                {ViewMode::ALL.map(|mode| view! {
                    <button
                        data-mode=mode.name()
                        aria-pressed=move || (studio.view_mode.get() == mode).to_string()
                        on:click=move |_| set_mode(mode)
                    >{mode.name()}</button>
                })}
                <button data-action="reset" on:click=move |_| send(&ToViewer::Reset)>"reset view"</button>
                <label>
                    <input
                        type="checkbox"
                        data-action="turntable"
                        prop:checked=move || studio.turntable.get()
                        on:change=move |ev| {
                            let on = event_target_checked(&ev);
                            studio.turntable.set(on);
                            send(&ToViewer::Turntable { enabled: on });
                        }
                    />
                    "turntable"
                </label>
                <button data-action="snapshot" disabled=move || studio.mesh.get().is_none()
                    on:click=move |_| send(&ToViewer::Snapshot)>"snapshot"</button>
                {move || mesh().map(|m| {
                    m.downloads.iter().map(|(ext, url)| view! {
                        <a class="download" data-format=*ext href=url.clone() download=file_name(&m.meta, ext)>
                            {ext.to_ascii_uppercase()}
                        </a>
                    }).collect_view()
                })}
            </div>
        </section>
    }
}
