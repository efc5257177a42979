//! Shape generation in the worker. A converted shape model is three shard sets (models
//! `<name>/conditioner`, `<name>/denoiser`, `<name>/vae`); once all are on the GPU the first
//! Generate builds one `ShapeModel` from them, then every request runs cut-out → the shape
//! pre-processor → sampler → surface → the official clean-up, and sends the mesh to the viewer.

use std::rc::Rc;

use orfeas_engine::background::{Options, has_alpha, remove_background};
use orfeas_engine::mesh::cleanup;
use orfeas_engine::pipeline::{COMPONENTS, GenerateOptions, Progress, ShapeConfig, ShapeModel};

use super::{Engine, post, post_mesh};
use crate::protocol::{FromWorker, MeshMeta};

/// The slots of the first shape model, in [`COMPONENTS`] order.
pub(super) fn parts(engine: &Engine) -> Option<[usize; 3]> {
    let slots = engine.models.borrow();
    let name = slots
        .iter()
        .find_map(|s| s.spec.id.strip_suffix(&format!("/{}", COMPONENTS[0])))?
        .to_string();
    let find = |part: &str| {
        let id = format!("{name}/{part}");
        slots.iter().position(|s| s.spec.id == id)
    };
    Some([
        find(COMPONENTS[0])?,
        find(COMPONENTS[1])?,
        find(COMPONENTS[2])?,
    ])
}

/// Whether slot `i` belongs to a shape model (its network must be rebuilt when it reloads).
pub(super) fn is_part(engine: &Engine, i: usize) -> bool {
    parts(engine).is_some_and(|p| p.contains(&i))
}

fn build(engine: &Engine) -> Result<Rc<ShapeModel>, String> {
    let parts = parts(engine).ok_or(
        "no shape model is configured (models <name>/conditioner, <name>/denoiser, <name>/vae)",
    )?;
    let device = engine.device()?;
    let [conditioner, denoiser, vae] = parts.map(|i| {
        let slots = engine.models.borrow();
        let slot = &slots[i];
        match (&slot.index, &slot.weights) {
            (Some(index), Some(weights)) => Ok((index.config.clone(), weights.clone())),
            _ => Err(format!("{} is not loaded", slot.spec.label)),
        }
    });
    let (conditioner, denoiser, vae) = (conditioner?, denoiser?, vae?);
    let config = ShapeConfig::from_values(&conditioner.0, &denoiser.0, &vae.0)?;
    let model = ShapeModel::new(&config, conditioner.1, denoiser.1, vae.1, &device)?;
    Ok(Rc::new(model))
}

/// Run request `request_id` on the current image; answers `Result` or `Error`, or `NotReady`
/// when the GPU was reset meanwhile (the UI asks again once the models are back).
pub(super) async fn run(engine: Rc<Engine>, request_id: u64) {
    let device_generation = engine.device_generation.get();
    let message = match generate(&engine, request_id).await {
        Ok(message) => FromWorker::Result {
            request_id,
            message,
        },
        Err(reason) if engine.device_generation.get() != device_generation => {
            FromWorker::NotReady {
                request_id,
                retry_after_s: 3,
                message: format!(
                    "the GPU was reset during generation ({reason}); running again once the \
                     models are back"
                ),
            }
        }
        Err(message) => FromWorker::Error {
            request_id: Some(request_id),
            message,
        },
    };
    post(&message);
}

async fn generate(engine: &Rc<Engine>, request_id: u64) -> Result<String, String> {
    let started = web_time::Instant::now();
    let (name, image) = engine
        .image
        .borrow()
        .clone()
        .ok_or("pick an image first: drop one or choose a file")?;
    let cached = engine.shape.borrow().clone();
    let model = match cached {
        Some(model) => model,
        None => {
            let model = build(engine)?;
            *engine.shape.borrow_mut() = Some(model.clone());
            model
        }
    };
    let device = engine.device()?;
    // The cut-out of this image if background removal made it; else make it (or use the
    // picture whole when it has transparency, or there is no background removal).
    let mut notes = Vec::new();
    let cutout = engine.cutout.borrow().clone();
    let isnet = engine.isnet.borrow().clone();
    let cutout = match cutout {
        Some(cutout) => cutout,
        None if has_alpha(&image) => image,
        None => match isnet {
            Some(isnet) => remove_background(&isnet, &image, &device, &Options::default())
                .await
                .map_err(|e| e.to_string())?,
            None => {
                notes.push("no background removal: the whole picture is the object");
                image
            }
        },
    };
    let input = model
        .preprocess(&cutout)
        .map_err(|e| format!("{name}: {e}"))?;
    let chosen = engine.options.borrow().clone();
    let defaults = GenerateOptions::default();
    let options = GenerateOptions {
        steps: chosen.steps.map(|s| s as usize),
        guidance: chosen.guidance.unwrap_or(defaults.guidance),
        resolution: chosen
            .octree_resolution
            .map_or(defaults.resolution, |r| r as usize),
        seed: chosen.seed.unwrap_or(defaults.seed),
        ..defaults
    };
    let steps = options.steps.unwrap_or(model.default_steps);
    let report = |stage: &str, done: usize, total: usize| {
        post(&FromWorker::Generating {
            request_id,
            stage: stage.into(),
            done: done as u32,
            total: total as u32,
        })
    };
    let surface = model
        .generate(
            &input.image,
            input.size,
            input.size,
            &options,
            |progress| match progress {
                Progress::Encoding => report("encoding", 0, steps),
                Progress::Sampling { done, total } => report("sampling", done, total),
                Progress::Decoding { .. } => report("decoding", steps, steps),
                Progress::Meshing => report("meshing", steps, steps),
            },
        )
        .await?;
    if surface.mesh.triangles.is_empty() {
        return Err("the model's field has no surface at level 0 (nothing to mesh)".into());
    }
    let mesh = cleanup::official(surface.mesh, cleanup::MAX_FACES);
    let seconds = started.elapsed().as_secs_f64();
    let meta = MeshMeta {
        label: format!(
            "Shape: {} steps, octree {}, seed {}",
            steps, options.resolution, options.seed
        ),
        preview: false,
        vertices: mesh.positions.len(),
        faces: mesh.triangles.len(),
        source: name,
        build_ms: seconds * 1000.0,
    };
    post_mesh(&meta, &mesh, None);
    let mut message = format!("{} faces in {seconds:.1} s", mesh.triangles.len());
    for note in notes {
        message.push_str(&format!(" ({note})"));
    }
    Ok(message)
}
