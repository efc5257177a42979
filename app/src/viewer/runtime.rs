//! The viewer worker's state and frame loop: messages change the camera or the mode and mark
//! the view dirty; each animation frame draws when something changed or the turntable turns.

use std::cell::RefCell;
use std::rc::Rc;

use wasm_bindgen::JsCast;
use wasm_bindgen::prelude::*;

use super::camera::OrbitCamera;
use super::render::{DeviceEvents, MeshData, Renderer};
use crate::protocol::{FromViewer, ToViewer, ViewMode};

struct Viewer {
    renderer: Renderer,
    camera: OrbitCamera,
    mode: ViewMode,
    turntable: bool,
    dirty: bool,
    last_frame_s: Option<f64>,
}

thread_local! {
    static VIEWER: RefCell<Option<Viewer>> = const { RefCell::new(None) };
    /// A read-back frame is on its way to the canvas.
    static FRAME_IN_FLIGHT: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

#[wasm_bindgen]
extern "C" {
    /// Defined by `viewer.js` in read-back mode: draws RGBA rows on the canvas's 2D context.
    #[wasm_bindgen(js_name = orfeas_present)]
    fn present(rgba: &[u8], width: u32, height: u32);
}

fn scope() -> web_sys::DedicatedWorkerGlobalScope {
    js_sys::global().unchecked_into()
}

fn now_s() -> f64 {
    scope().performance().map_or(0.0, |p| p.now() / 1000.0)
}

pub fn post(message: &FromViewer) {
    let _ = scope().post_message(&JsValue::from_str(&message.to_json()));
}

/// Acquire the GPU for the canvas and start the frame loop (`direct`: see [`Renderer::new`]).
pub async fn start(canvas: web_sys::OffscreenCanvas, direct: bool) {
    let events = DeviceEvents {
        error: |message| post(&FromViewer::Error { message }),
        lost: |reason| {
            post(&FromViewer::Failed {
                reason,
                device_lost: true,
            })
        },
    };
    match Renderer::new(canvas, direct, events).await {
        Ok(renderer) => {
            let adapter = renderer.adapter_name.clone();
            VIEWER.with(|v| {
                *v.borrow_mut() = Some(Viewer {
                    renderer,
                    camera: OrbitCamera::default(),
                    mode: ViewMode::Shaded,
                    turntable: true,
                    dirty: true,
                    last_frame_s: None,
                })
            });
            post(&FromViewer::Ready { adapter, direct });
            run_frames();
        }
        Err(reason) => post(&FromViewer::Failed {
            reason,
            device_lost: false,
        }),
    }
}

fn with_viewer<R>(f: impl FnOnce(&mut Viewer) -> R) -> Option<R> {
    VIEWER.with(|v| v.borrow_mut().as_mut().map(f))
}

pub fn on_message(json: &str) {
    let message = match serde_json::from_str::<ToViewer>(json) {
        Ok(message) => message,
        Err(e) => {
            post(&FromViewer::Error {
                message: format!("viewer: bad message: {e}"),
            });
            return;
        }
    };
    let now = now_s();
    with_viewer(|viewer| {
        let camera = &mut viewer.camera;
        match message {
            ToViewer::Orbit { dx, dy } => camera.orbit(dx, dy, now),
            ToViewer::Pan { dx, dy } => {
                let height = viewer.renderer.size().1 as f32;
                camera.pan(dx, dy, height, now)
            }
            ToViewer::Zoom { factor } => camera.zoom(factor, now),
            ToViewer::Reset => camera.reset(now),
            ToViewer::Mode { mode } => viewer.mode = mode,
            ToViewer::Turntable { enabled } => viewer.turntable = enabled,
            ToViewer::Resize { width, height } => viewer.renderer.resize(width, height),
            ToViewer::Clear => viewer.renderer.clear_mesh(),
            ToViewer::SimulateDeviceLoss => viewer.renderer.destroy_device(),
            // Answered by `snapshot()`, which the bootstrap script calls.
            ToViewer::Snapshot => {}
        }
        viewer.dirty = true;
    });
}

pub fn set_mesh(mesh: MeshData) {
    let result = with_viewer(|viewer| {
        viewer.renderer.set_mesh(&mesh)?;
        viewer.dirty = true;
        Ok::<_, String>(())
    });
    match result {
        Some(Ok(())) => post(&FromViewer::Showing {
            vertices: mesh.vertex_count(),
            faces: mesh.indices.len() / 3,
        }),
        Some(Err(message)) => post(&FromViewer::Error { message }),
        None => post(&FromViewer::Error {
            message: "viewer: no GPU, cannot show the mesh".into(),
        }),
    }
}

/// The current view as `(width, height, RGBA rows)`.
pub async fn snapshot() -> Result<(u32, u32, Vec<u8>), String> {
    let pending =
        with_viewer(|v| v.renderer.draw_to_buffer(&v.camera, v.mode)).ok_or("viewer: no GPU")?;
    pending.read().await
}

fn draw(now: f64) {
    with_viewer(|viewer| {
        let dt = viewer
            .last_frame_s
            .map_or(0.0, |last| (now - last).min(0.1));
        viewer.last_frame_s = Some(now);
        let turning =
            viewer.turntable && viewer.renderer.has_mesh() && viewer.camera.turntable(now);
        if turning {
            viewer.camera.tick(now, dt);
        }
        if !(viewer.dirty || turning) {
            return;
        }
        if viewer.renderer.reads_back() {
            // One frame in flight at a time; a change meanwhile is drawn by a later frame.
            if FRAME_IN_FLIGHT.get() {
                return;
            }
            viewer.dirty = false;
            FRAME_IN_FLIGHT.set(true);
            let pending = viewer.renderer.draw_to_buffer(&viewer.camera, viewer.mode);
            wasm_bindgen_futures::spawn_local(async move {
                match pending.read().await {
                    Ok((width, height, rgba)) => present(&rgba, width, height),
                    Err(message) => post(&FromViewer::Error { message }),
                }
                FRAME_IN_FLIGHT.set(false);
            });
        } else {
            viewer.dirty = false;
            if let Err(message) = viewer.renderer.render(&viewer.camera, viewer.mode) {
                post(&FromViewer::Error { message });
            }
        }
    });
}

/// requestAnimationFrame for ever (a worker with an OffscreenCanvas has its own).
fn run_frames() {
    type FrameCallback = Closure<dyn FnMut(f64)>;
    let callback: Rc<RefCell<Option<FrameCallback>>> = Rc::new(RefCell::new(None));
    let again = callback.clone();
    *callback.borrow_mut() = Some(Closure::new(move |_timestamp: f64| {
        draw(now_s());
        if let Some(cb) = again.borrow().as_ref() {
            let _ = scope().request_animation_frame(cb.as_ref().unchecked_ref());
        }
    }));
    if let Some(cb) = callback.borrow().as_ref() {
        let _ = scope().request_animation_frame(cb.as_ref().unchecked_ref());
    }
}
