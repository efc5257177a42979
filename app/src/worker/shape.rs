//! Shape generation in the worker. A converted shape model is three shard sets (the models
//! whose role is a part of it: `<name>/conditioner`, `<name>/denoiser`, `<name>/vae`); once all are on the GPU the first
//! Generate builds one `ShapeModel` from them, then every request runs the engine's
//! image-to-mesh job on it (reusing the cut-out already shown) and sends the mesh to the viewer.

use std::cell::{Cell, RefCell};
use std::rc::Rc;

use orfeas_engine::pipeline::{
    GenerateError, GenerateOptions, ImageToMesh, Note, Request, ShapeModel, Stage,
};

use super::Engine;
use super::outbox::{post, post_mesh};
use crate::protocol::{FromWorker, MeshMeta};

/// The shape model and the user's stop, changed only here (and dropped by the loader when the
/// models it was built from go).
#[derive(Default)]
pub(super) struct ShapeState {
    /// Built from its three shard sets at the first generation.
    model: RefCell<Option<Rc<ShapeModel>>>,
    /// The request the user asked to stop (see [`run`]).
    stop_requested: Cell<Option<u64>>,
}

impl ShapeState {
    /// The user's Stop for `request_id`, read by the generation at its next step.
    pub(super) fn stop(&self, request_id: u64) {
        self.stop_requested.set(Some(request_id));
    }

    /// `request_id` ended: its stop, if any, is spent.
    fn stopped(&self, request_id: u64) {
        if self.stop_requested.get() == Some(request_id) {
            self.stop_requested.set(None);
        }
    }

    /// The networks' weights went (a lost device, another precision): built again at the next
    /// generation.
    pub(super) fn forget_model(&self) {
        self.model.borrow_mut().take();
    }
}

fn build(engine: &Engine) -> Result<Rc<ShapeModel>, String> {
    let [conditioner, denoiser, vae] = engine.models.shape_parts()?;
    let device = engine.device.current()?;
    let model = ShapeModel::from_parts(
        [
            (&conditioner.0, conditioner.1),
            (&denoiser.0, denoiser.1),
            (&vae.0, vae.1),
        ],
        &device,
    )
    .map_err(|e| e.to_string())?;
    Ok(Rc::new(model))
}

/// Why a request gave no mesh.
enum Failure {
    /// The user stopped it (`ToWorker::Stop`): where it was.
    Stopped(String),
    Failed(String),
}

impl From<String> for Failure {
    fn from(reason: String) -> Self {
        Failure::Failed(reason)
    }
}

impl From<&str> for Failure {
    fn from(reason: &str) -> Self {
        Failure::Failed(reason.to_string())
    }
}

/// Run request `request_id` on the current image; answers `Result`, `Stopped` or `Error`, or
/// `NotReady` when the GPU was reset meanwhile (the UI asks again once the models are back).
pub(super) async fn run(
    engine: Rc<Engine>,
    request_id: u64,
    faces: Option<u32>,
    colour: Option<bool>,
) {
    let device_generation = engine.device.generation();
    let outcome = generate(&engine, request_id, faces, colour).await;
    engine.shape.stopped(request_id);
    let message = match outcome {
        Ok(message) => FromWorker::Result {
            request_id,
            message,
        },
        Err(Failure::Stopped(message)) => FromWorker::Stopped {
            request_id,
            message,
        },
        Err(Failure::Failed(reason)) if engine.device.generation() != device_generation => {
            FromWorker::NotReady {
                request_id,
                retry_after_s: 3,
                message: "GPU reset — running again once the models are back".into(),
                detail: Some(reason),
            }
        }
        Err(Failure::Failed(message)) => FromWorker::Error {
            request_id: Some(request_id),
            message,
        },
    };
    post(&message);
}

async fn generate(
    engine: &Rc<Engine>,
    request_id: u64,
    faces: Option<u32>,
    colour: Option<bool>,
) -> Result<String, Failure> {
    let started = web_time::Instant::now();
    let (name, image) = engine
        .image
        .borrow()
        .clone()
        .ok_or("pick an image first: drop one or choose a file")?;
    let cached = engine.shape.model.borrow().clone();
    let model = match cached {
        Some(model) => model,
        None => {
            let model = build(engine)?;
            *engine.shape.model.borrow_mut() = Some(model.clone());
            model
        }
    };
    super::device::check_attention(engine, model.dtype()).await;
    let device = engine.device.current()?;
    let chosen = engine.options.borrow().clone();
    let isnet = engine.background.isnet();
    let job = ImageToMesh {
        background_options: chosen.background_options(),
        ..ImageToMesh::new(&model, isnet.as_deref(), &device)
    };
    // The cut-out shown for this image, when background removal made it already: the job
    // uses it instead of running ISNet again.
    let mut options = chosen.generate_options();
    if let Some(faces) = faces {
        options = GenerateOptions {
            faces: faces as usize,
            ..options
        }
        .clamped();
    }
    if let Some(colour) = colour {
        options.colour = colour;
    }
    // The other views the user gave, in the official order (front, left, back, right).
    let mut views: Vec<_> = engine
        .views
        .borrow()
        .iter()
        .map(|(view, _, picture)| (*view, picture.clone()))
        .collect();
    views.sort_by_key(|(view, _)| view.index());
    let request = Request {
        cutout: engine.background.cutout(),
        views,
        ..Request::new(image, options)
    };
    // The sampler's pace so far gives the estimate of what is left of it.
    let mut sampling_started: Option<web_time::Instant> = None;
    // Where the job is, for the answer to a Stop.
    let last_stage: Cell<Option<Stage>> = Cell::new(None);
    let should_stop = || engine.shape.stop_requested.get() == Some(request_id);
    let on_stage = |stage: Stage| {
        last_stage.set(Some(stage));
        let left_s = match stage {
            Stage::Sampling { done, total } => {
                let since = *sampling_started.get_or_insert_with(web_time::Instant::now);
                (done > 1).then(|| {
                    // Step 1 is reported when it ends: time the steps after it.
                    let per_step = since.elapsed().as_secs_f64() / (done - 1) as f64;
                    per_step * (total - done) as f64
                })
            }
            _ => None,
        };
        post(&FromWorker::Generating {
            request_id,
            stage,
            elapsed_s: started.elapsed().as_secs_f64(),
            left_s,
        })
    };
    let generated = match job.run(&request, on_stage, should_stop).await {
        Ok(generated) => generated,
        Err(GenerateError::Stopped) => {
            let seconds = started.elapsed().as_secs_f64();
            let at = match last_stage.get() {
                Some(stage) => format!(" while {stage}"),
                // The first request builds the model and checks the device's kernels first.
                None => " while preparing the model".into(),
            };
            return Err(Failure::Stopped(format!(
                "stopped{at}, after {seconds:.1} s"
            )));
        }
        Err(e) => return Err(Failure::Failed(format!("{name}: {e}"))),
    };
    let mesh = &generated.mesh;
    let options = &request.options;
    let seconds = started.elapsed().as_secs_f64();
    let meta = MeshMeta {
        label: format!(
            "Shape: {} steps, octree {}, seed {}",
            generated.steps, options.resolution, options.seed
        ),
        preview: false,
        vertices: mesh.positions.len(),
        faces: mesh.triangles.len(),
        source: name,
        build_ms: seconds * 1000.0,
    };
    post_mesh(&meta, mesh, generated.colours.as_deref());
    let mut message = format!("{} faces in {seconds:.1} s", mesh.triangles.len());
    if !request.views.is_empty() {
        let names: Vec<&str> = request.views.iter().map(|(v, _)| v.name()).collect();
        message.push_str(&format!(" from the front, {} views", names.join(", ")));
    }
    for note in &generated.notes {
        if matches!(note, Note::WholePicture | Note::FacesAboveBudget { .. }) {
            message.push_str(&format!(" ({note})"));
        }
    }
    Ok(message)
}
