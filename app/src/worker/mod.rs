//! The engine worker: owns the GPU device and the models, streams each model's shards through
//! the browser's Cache Storage onto the GPU, and talks to the UI only through
//! [`crate::protocol`] messages. Everything here runs on the worker's single thread, so state
//! lives in `Rc<RefCell<…>>` and long work runs as `spawn_local` tasks.
//!
//! - [`device`]: acquiring the GPU, forgetting it when it is lost;
//! - [`loading`]: each model's slot, the fit check, shard streaming, the cache, and the
//!   models' reload on a new device after a loss;
//! - [`placement`]: where each model runs (ISNet on the CPU or the GPU);
//! - [`cutout`] and [`shape`]: the two jobs, background removal and shape generation;
//! - [`outbox`]: what goes back to the UI; [`js`]: the browser's timer and memory figure.

use std::cell::RefCell;
use std::rc::Rc;

use orfeas_engine::mesh::preview::inflate;
use orfeas_engine::models::dinov2::View;
use wasm_bindgen_futures::spawn_local;

use crate::config::{ModelSpec, Role};
use crate::protocol::{EngineOptions, FromWorker, MeshMeta, ToWorker};
use outbox::post_mesh;
pub use outbox::{post, wasm_heap_bytes};

mod cutout;
mod device;
mod js;
mod loading;
mod outbox;
mod placement;
mod shape;

pub use loading::MODEL_CACHE;

/// Which slot plays which part, resolved once from the models' roles when they start.
#[derive(Default)]
struct Roles {
    /// The background-removal model: of the first one named and its precision siblings
    /// (`isnet-medium`, `isnet-medium-q8`), the narrowest by folder name (a small download
    /// that fits any GPU: ISNet q8 is 47 MB, and cuts out as f16 does, IoU 0.9999).
    background: Option<usize>,
    /// Its siblings: not loaded.
    idle_background: Vec<usize>,
    /// The first shape model named, at each precision configured (its sibling folders
    /// `<name>`, `<name>-q8`, `<name>-q4`: see `fit::precision_of_folder`): each set's folder
    /// name and its slots in `COMPONENTS` order.
    shape_sets: Vec<(String, [usize; 3])>,
    /// The set in use (an index into `shape_sets`), decided by the fit check or the user.
    chosen: usize,
}

impl Roles {
    fn of(models: &[ModelSpec]) -> Roles {
        let base = |folder: &str| {
            orfeas_engine::fit::precision_of_folder(folder)
                .0
                .to_string()
        };
        let first_background = models
            .iter()
            .find(|m| m.role == Role::BackgroundRemoval)
            .map(|m| base(&m.id));
        let backgrounds: Vec<usize> = (0..models.len())
            .filter(|&i| {
                models[i].role == Role::BackgroundRemoval
                    && first_background.as_deref() == Some(base(&models[i].id).as_str())
            })
            .collect();
        let named = |i: usize| {
            orfeas_engine::fit::precision_of_folder(&models[i].id)
                .1
                .unwrap_or(orfeas_engine::weights::Precision::F16)
        };
        let narrowest =
            orfeas_engine::weights::Precision::narrowest(backgrounds.iter().map(|&i| named(i)));
        let background = backgrounds
            .iter()
            .copied()
            .find(|&i| Some(named(i)) == narrowest);
        let idle_background = backgrounds
            .iter()
            .copied()
            .filter(|&i| Some(i) != background)
            .collect();
        let slot_of = |name: &str, part: usize| {
            models.iter().position(|m| {
                matches!(&m.role, Role::ShapePart { model, part: p } if model == name && *p == part)
            })
        };
        let complete = |model: &String| -> Option<(String, [usize; 3])> {
            Some((
                model.clone(),
                [slot_of(model, 0)?, slot_of(model, 1)?, slot_of(model, 2)?],
            ))
        };
        let folders: Vec<&String> = models
            .iter()
            .filter_map(|m| match &m.role {
                Role::ShapePart { model, .. } => Some(model),
                _ => None,
            })
            .collect();
        let mut shape_sets: Vec<(String, [usize; 3])> = Vec::new();
        if let Some(first) = folders.iter().find_map(|f| complete(f)) {
            let name = base(&first.0);
            for folder in folders {
                if base(folder) == name
                    && !shape_sets.iter().any(|(f, _)| f == folder)
                    && let Some(set) = complete(folder)
                {
                    shape_sets.push(set);
                }
            }
        }
        Roles {
            background,
            idle_background,
            shape_sets,
            chosen: 0,
        }
    }

    /// The shape model's set in use: its folder name and its slots.
    fn shape(&self) -> Option<&(String, [usize; 3])> {
        self.shape_sets.get(self.chosen)
    }

    /// Slot `i` is a part of the shape model, at any precision.
    fn is_shape_part(&self, i: usize) -> bool {
        self.shape_sets.iter().any(|(_, parts)| parts.contains(&i))
    }

    /// Slot `i` is a precision not in use (of the shape model, or of background removal): it
    /// is not loaded.
    fn is_idle(&self, i: usize) -> bool {
        self.idle_background.contains(&i)
            || self.is_shape_part(i) && !self.shape().is_some_and(|(_, parts)| parts.contains(&i))
    }
}

/// The worker's state, by owner: each part is changed by its module (the device's by
/// [`device`], background removal's by [`cutout`], the shape model's by [`shape`], the model
/// slots by [`loading`]) and read by the others through its methods; the image and the page's
/// options by the messages that bring them.
#[derive(Default)]
struct Engine {
    /// Every configured model's slot and role (see [`loading::ModelSlots`]).
    models: loading::ModelSlots,
    /// The GPU device and what happened to it (see [`device::DeviceState`]).
    device: device::DeviceState,
    /// The user's image, upright RGBA, for generation.
    image: RefCell<Option<(String, image::RgbaImage)>>,
    /// The object's other views the user gave (for a 2mv model), each with its file name; a
    /// new front picture drops them, as they showed another object.
    views: RefCell<Vec<(View, String, image::RgbaImage)>>,
    options: RefCell<EngineOptions>,
    /// Background removal: ISNet and the current image's cut-out (see
    /// [`cutout::BackgroundState`]).
    background: cutout::BackgroundState,
    /// The shape model and the stop the user asked for (see [`shape::ShapeState`]).
    shape: shape::ShapeState,
}

thread_local! {
    static ENGINE: Rc<Engine> = Rc::new(Engine::default());
}

fn engine() -> Rc<Engine> {
    ENGINE.with(Rc::clone)
}

/// Entry point for every message from the UI (called by the bootstrap script).
pub fn on_message(json: &str) {
    let message = match serde_json::from_str::<ToWorker>(json) {
        Ok(message) => message,
        Err(e) => {
            post(&FromWorker::Error {
                request_id: None,
                message: format!("malformed message to the engine worker: {e}"),
            });
            return;
        }
    };
    let engine = engine();
    match message {
        ToWorker::Start { models, options } => {
            *engine.options.borrow_mut() = options;
            spawn_local(loading::start(engine, models))
        }
        ToWorker::Retry { model } => {
            match engine.models.position(&model) {
                Some(i) => spawn_local(async move {
                    let needs_gpu = !placement::isnet_on_cpu(&engine, i);
                    if needs_gpu && !engine.device.is_up() {
                        // A retry after the GPU failed to come up tries the GPU again too.
                        if let Err(reason) = device::acquire_gpu(&engine).await {
                            loading::fail_without_gpu(&engine, &reason);
                            return;
                        }
                    }
                    loading::load_model(engine, i).await;
                }),
                None => post(&FromWorker::Error {
                    request_id: None,
                    message: format!("no model {model:?} to retry"),
                }),
            }
        }
        ToWorker::Generate {
            request_id,
            faces,
            colour,
        } => generate(engine, request_id, faces, colour),
        // Read by the running generation at its next step: the sampler and the field decoding
        // await the GPU between steps, so this message is handled while it runs.
        ToWorker::Stop { request_id } => engine.shape.stop(request_id),
        ToWorker::DropView { view } => engine
            .views
            .borrow_mut()
            .retain(|(v, _, _)| v.name() != view),
        ToWorker::ClearCache => spawn_local(loading::clear_cache()),
        ToWorker::VerifyCache => spawn_local(loading::verify_cache(engine)),
        ToWorker::CutoutFullSize => cutout::full_size(&engine),
        ToWorker::ChooseQuant { precision } => {
            spawn_local(loading::choose_quant(engine, precision))
        }
        ToWorker::SimulateDeviceLoss => {
            if let Err(message) = engine.device.destroy() {
                post(&FromWorker::Error {
                    request_id: None,
                    message,
                });
            }
        }
    }
}

/// Longer side of the image the preview is built from, and of its grid.
const PREVIEW_IMAGE_SIDE: u32 = 384;
const PREVIEW_GRID: usize = 128;

/// A new image from the UI (its bytes) as the object's `view`. The front: decode it, keep it
/// for generation, and answer at once with the instant preview mesh (the silhouette
/// inflated), which needs no model. Another view: decode it and keep it beside the front (it
/// is cut out with the front's settings when a generation runs).
pub fn on_image(name: &str, bytes: &[u8], view: &str) {
    let started = web_time::Instant::now();
    let failed = |name: String, reason: String| post(&FromWorker::ImageFailed { name, reason });
    let Some(view) = View::parse(view) else {
        return failed(
            name.into(),
            format!("no view {view:?} (front, left, back, right)"),
        );
    };
    let image = match orfeas_engine::input::decode_image(bytes) {
        Ok(image) => image,
        Err(e) if view == View::Front => return failed(name.into(), e.to_string()),
        Err(e) => return failed(format!("{name} ({} view)", view.name()), e.to_string()),
    };
    let engine = engine();
    if view != View::Front {
        let mut views = engine.views.borrow_mut();
        views.retain(|(v, _, _)| *v != view);
        views.push((view, name.to_string(), image));
        return;
    }
    engine.views.borrow_mut().clear();
    let small = orfeas_engine::input::fit_within(&image, PREVIEW_IMAGE_SIDE);
    let (width, height) = small.dimensions();
    let preview = inflate(
        small.as_raw(),
        width as usize,
        height as usize,
        PREVIEW_GRID,
    );
    engine.image.replace(Some((name.to_string(), image)));
    cutout::request(&engine);
    if preview.mesh.triangles.is_empty() {
        post(&FromWorker::ImageFailed {
            name: name.to_string(),
            reason: "no subject found: the image is one flat colour".into(),
        });
        return;
    }
    let meta = MeshMeta {
        label: "Preview: the silhouette inflated (not the model's shape)".into(),
        preview: true,
        vertices: preview.mesh.positions.len(),
        faces: preview.mesh.triangles.len(),
        source: name.to_string(),
        build_ms: started.elapsed().as_secs_f64() * 1000.0,
    };
    post_mesh(&meta, &preview.mesh, Some(&preview.colors));
}

fn generate(engine: Rc<Engine>, request_id: u64, faces: Option<u32>, colour: Option<bool>) {
    match engine.models.generation_blocker(request_id) {
        Some(answer) => post(&answer),
        None => spawn_local(shape::run(engine, request_id, faces, colour)),
    }
}
