//! The engine worker: owns the GPU device and the models, streams each model's shards through
//! the browser's Cache Storage onto the GPU, and talks to the UI only through
//! [`crate::protocol`] messages. Everything here runs on the worker's single thread, so state
//! lives in `Rc<RefCell<…>>` and long work runs as `spawn_local` tasks.

use std::cell::{Cell, RefCell};
use std::rc::Rc;

use futures::StreamExt;
use futures::channel::mpsc;
use orfeas_engine::gpu::{self, Gpu};
use orfeas_engine::weights::loader::{initial_progress, read_index};
use orfeas_engine::weights::source::{CachedFetchSource, FetchSource, delete_cache};
use orfeas_engine::weights::{
    LoadProgress, Phase, ProgressTracker, ShardIndex, WeightSet, load_weights, verify_cached,
};
use wasm_bindgen::{JsCast, JsValue};
use wasm_bindgen_futures::{JsFuture, spawn_local};

use orfeas_engine::mesh::Mesh;
use orfeas_engine::mesh::export::{
    to_glb_colored, to_obj_colored, to_ply_colored, to_stl, vertex_normals,
};
use orfeas_engine::mesh::preview::inflate;

use crate::config::ModelSpec;
use crate::protocol::{
    EngineOptions, FromWorker, GpuReport, MeshMeta, ModelStatusReport, NoticeLevel, ProgressReport,
    ToWorker, bulk, retry_after_s,
};

mod cutout;
mod shape;

/// Cache Storage name for model shards; bump the suffix if the stored format ever changes.
pub const MODEL_CACHE: &str = "orfeas-models-v1";
/// How many times a lost GPU device is rebuilt before the worker gives up.
const MAX_GPU_RESETS: u32 = 2;

/// Send a message to the UI thread.
pub fn post(message: &FromWorker) {
    let scope: web_sys::DedicatedWorkerGlobalScope = js_sys::global().unchecked_into();
    let _ = scope.post_message(&JsValue::from_str(&message.to_json()));
}

/// Size of the wasm linear memory. It never shrinks, so at the end of a load it is the peak.
pub fn wasm_heap_bytes() -> u64 {
    let memory: js_sys::WebAssembly::Memory = wasm_bindgen::memory().unchecked_into();
    memory
        .buffer()
        .unchecked_into::<js_sys::ArrayBuffer>()
        .byte_length() as u64
}

struct ModelSlot {
    spec: ModelSpec,
    source: Rc<CachedFetchSource>,
    index: Option<ShardIndex>,
    /// `None` while a load task holds it.
    weights: Option<WeightSet>,
    status: ModelStatusReport,
    progress: Option<ProgressReport>,
    /// Why the model cannot run on this device (decided from its index before any shard is
    /// fetched); such a model is never loaded.
    refused: Option<String>,
    /// Its load was cut short by a device loss: the device's rebuild reloads it.
    awaiting_device: bool,
}

#[derive(Default)]
struct Engine {
    models: RefCell<Vec<ModelSlot>>,
    gpu: RefCell<Option<Gpu>>,
    /// Bumped each time the device is rebuilt; a load that started on an older device redoes
    /// its work.
    device_generation: Cell<u32>,
    gpu_resets: Cell<u32>,
    /// A lost device is being replaced: loads cut short wait for the new one.
    rebuilding: Cell<bool>,
    lost: RefCell<Option<mpsc::UnboundedSender<String>>>,
    /// The user's image, upright RGBA, for generation.
    image: RefCell<Option<(String, image::RgbaImage)>>,
    options: RefCell<EngineOptions>,
    /// Background removal, once its weights are on the current device.
    isnet: RefCell<Option<Rc<orfeas_engine::models::isnet::IsNet>>>,
    /// Bumped per image, so a cut-out of an older image is not shown.
    cutout_generation: Cell<u64>,
    /// The current image's cut-out (the shape model's input).
    cutout: RefCell<Option<image::RgbaImage>>,
    /// The shape model, built from its three shard sets at the first generation.
    shape: RefCell<Option<Rc<orfeas_engine::pipeline::ShapeModel>>>,
}

impl Engine {
    /// The current GPU device.
    fn device(&self) -> Result<burn::tensor::Device, String> {
        self.gpu
            .borrow()
            .as_ref()
            .map(|gpu| gpu.device.clone())
            .ok_or_else(|| "no GPU device".to_string())
    }
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
            spawn_local(start(engine, models))
        }
        ToWorker::Retry { model } => {
            let position = engine
                .models
                .borrow()
                .iter()
                .position(|slot| slot.spec.id == model);
            match position {
                Some(i) => spawn_local(async move {
                    if engine.gpu.borrow().is_none() {
                        // A retry after the GPU failed to come up tries the GPU again too.
                        if !acquire_gpu(&engine).await {
                            return;
                        }
                    }
                    load_model(engine, i).await;
                }),
                None => post(&FromWorker::Error {
                    request_id: None,
                    message: format!("no model {model:?} to retry"),
                }),
            }
        }
        ToWorker::Generate { request_id } => generate(engine, request_id),
        ToWorker::ClearCache => spawn_local(async {
            let message = match delete_cache(MODEL_CACHE).await {
                Ok(true) => "model cache cleared: the next visit downloads the models again".into(),
                Ok(false) => "the model cache was already empty".into(),
                Err(e) => format!("could not clear the model cache: {e}"),
            };
            post(&FromWorker::CacheReport { message });
        }),
        ToWorker::VerifyCache => spawn_local(verify_cache(engine)),
        ToWorker::SimulateDeviceLoss => match engine.gpu.borrow().as_ref() {
            Some(gpu) => gpu.destroy(),
            None => post(&FromWorker::Error {
                request_id: None,
                message: "no GPU device to lose".into(),
            }),
        },
    }
}

/// Longer side of the image the preview is built from, and of its grid.
const PREVIEW_IMAGE_SIDE: u32 = 384;
const PREVIEW_GRID: usize = 128;

/// A new image from the UI (its bytes): decode it, keep it for generation, and answer at once
/// with the instant preview mesh (the silhouette inflated), which needs no model.
pub fn on_image(name: &str, bytes: &[u8]) {
    let started = web_time::Instant::now();
    let image = match orfeas_engine::input::decode_image(bytes) {
        Ok(image) => image,
        Err(e) => {
            post(&FromWorker::ImageFailed {
                name: name.to_string(),
                reason: e.to_string(),
            });
            return;
        }
    };
    let small = orfeas_engine::input::fit_within(&image, PREVIEW_IMAGE_SIDE);
    let (width, height) = small.dimensions();
    let preview = inflate(
        small.as_raw(),
        width as usize,
        height as usize,
        PREVIEW_GRID,
    );
    let engine = engine();
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

/// Send a mesh with its exports as transferred typed arrays (see [`crate::protocol`]).
fn post_mesh(meta: &MeshMeta, mesh: &Mesh, colors: Option<&[[u8; 3]]>) {
    let normals = vertex_normals(mesh);
    let flat = |v: &[[f32; 3]]| js_sys::Float32Array::from(v.as_flattened());
    let positions = flat(&mesh.positions);
    let normals = flat(&normals);
    let rgba: Vec<u8> = colors
        .map(|c| c.iter().flat_map(|&[r, g, b]| [r, g, b, 255]).collect())
        .unwrap_or_default();
    let colors_js = js_sys::Uint8Array::from(rgba.as_slice());
    let indices = js_sys::Uint32Array::from(mesh.triangles.as_flattened());
    let bytes = |b: &[u8]| js_sys::Uint8Array::from(b);
    let glb = bytes(&to_glb_colored(mesh, colors));
    let obj = bytes(to_obj_colored(mesh, colors).as_bytes());
    let stl = bytes(&to_stl(mesh, 1.0));
    let ply = bytes(&to_ply_colored(mesh, colors));
    let message = bulk::message(bulk::Kind::Mesh);
    let transfer = js_sys::Array::new();
    let set = |key: &str, value: &JsValue| bulk::set(&message, key, value);
    set(
        bulk::META,
        &JsValue::from_str(&serde_json::to_string(meta).expect("meta serialises")),
    );
    // The typed arrays themselves go in the message; their buffers are transferred, not copied.
    let [positions_key, normals_key, colors_key, indices_key] = bulk::GEOMETRY;
    let [glb_key, obj_key, stl_key, ply_key] = bulk::FILES.map(|(ext, _)| ext);
    let arrays: [(&str, JsValue, js_sys::ArrayBuffer); 8] = [
        (positions_key, positions.clone().into(), positions.buffer()),
        (normals_key, normals.clone().into(), normals.buffer()),
        (colors_key, colors_js.clone().into(), colors_js.buffer()),
        (indices_key, indices.clone().into(), indices.buffer()),
        (glb_key, glb.clone().into(), glb.buffer()),
        (obj_key, obj.clone().into(), obj.buffer()),
        (stl_key, stl.clone().into(), stl.buffer()),
        (ply_key, ply.clone().into(), ply.buffer()),
    ];
    for (key, array, buffer) in arrays {
        set(key, &array);
        transfer.push(&buffer);
    }
    let scope: web_sys::DedicatedWorkerGlobalScope = js_sys::global().unchecked_into();
    let _ = scope.post_message_with_transfer(&message, &transfer);
}

async fn start(engine: Rc<Engine>, models: Vec<ModelSpec>) {
    {
        let mut slots = engine.models.borrow_mut();
        if !slots.is_empty() {
            return; // a second Start (e.g. a UI re-mount) changes nothing
        }
        for spec in models {
            let source = CachedFetchSource::new(FetchSource::new(spec.url.clone()), MODEL_CACHE);
            post(&FromWorker::Status {
                model: spec.id.clone(),
                status: ModelStatusReport::Waiting,
            });
            slots.push(ModelSlot {
                spec,
                source: Rc::new(source),
                index: None,
                weights: Some(WeightSet::new()),
                status: ModelStatusReport::Waiting,
                progress: None,
                refused: None,
                awaiting_device: false,
            });
        }
    }
    let (sender, receiver) = mpsc::unbounded();
    *engine.lost.borrow_mut() = Some(sender);
    spawn_local(watch_device_loss(engine.clone(), receiver));
    if !acquire_gpu(&engine).await {
        return;
    }
    check_fit(&engine).await;
    let count = engine.models.borrow().len();
    for i in 0..count {
        load_model(engine.clone(), i).await;
    }
}

/// Before anything large is fetched: read every model's index (small) and check that the
/// model — a shape model's three sets together — fits this GPU in the dtype it will run in;
/// one that does not is refused with the reason (what is missing, what would fit).
async fn check_fit(engine: &Rc<Engine>) {
    let Some((capacity, dtype)) = engine.gpu.borrow().as_ref().map(|gpu| {
        let memory = engine
            .options
            .borrow()
            .gpu_memory_gib
            .map(|gib| (gib * (1u64 << 30) as f64) as u64);
        let capacity = gpu.info.capacity(memory, device_memory());
        let dtype = gpu.info.model_dtype();
        (capacity, dtype)
    }) else {
        return;
    };
    let count = engine.models.borrow().len();
    for i in 0..count {
        let source = engine.models.borrow()[i].source.clone();
        if engine.models.borrow()[i].index.is_none()
            && let Ok(index) = read_index(source.as_ref()).await
        {
            engine.models.borrow_mut()[i].index = Some(index);
        }
    }
    let groups: Vec<(String, Vec<usize>)> = {
        let slots = engine.models.borrow();
        let shape = shape::parts(engine);
        let mut groups = Vec::new();
        if let Some(parts) = shape {
            let name = slots[parts[1]]
                .spec
                .id
                .trim_end_matches("/denoiser")
                .to_string();
            groups.push((name, parts.to_vec()));
        }
        for (i, slot) in slots.iter().enumerate() {
            if !shape.is_some_and(|p| p.contains(&i)) {
                groups.push((slot.spec.id.clone(), vec![i]));
            }
        }
        groups
    };
    for (name, members) in groups {
        let verdict = {
            let slots = engine.models.borrow();
            let indexes: Option<Vec<&ShardIndex>> =
                members.iter().map(|&i| slots[i].index.as_ref()).collect();
            // An index that cannot be read is reported by the load itself.
            indexes.map(|indexes| {
                let name = indexes
                    .iter()
                    .find_map(|i| i.config["variant"].as_str())
                    .map_or(name.clone(), |v| format!("Hunyuan3D-{v}"));
                orfeas_engine::fit::check(
                    &name,
                    &orfeas_engine::fit::Footprint::of(&indexes),
                    &capacity,
                    dtype,
                )
            })
        };
        if let Some(Err(reason)) = verdict {
            for &i in &members {
                engine.models.borrow_mut()[i].refused = Some(reason.clone());
            }
        }
    }
}

/// `navigator.deviceMemory` in bytes (the browser's rounded figure of the host's RAM), where
/// the browser says.
fn device_memory() -> Option<u64> {
    let scope: web_sys::WorkerGlobalScope = js_sys::global().unchecked_into();
    let gib = js_sys::Reflect::get(&scope.navigator(), &JsValue::from_str("deviceMemory"))
        .ok()?
        .as_f64()?;
    Some((gib * (1u64 << 30) as f64) as u64)
}

/// Acquire the GPU and tell the UI what it is; on failure mark every model failed with the
/// reason (so their panels say why, and Retry tries again).
async fn acquire_gpu(engine: &Rc<Engine>) -> bool {
    let result = match webgpu_missing() {
        Some(reason) => Err(reason),
        None => {
            // The browser's GPU process may be restarting (another context lost its device a
            // moment ago): then the first requests fail, and a later one succeeds.
            let mut attempt = 0;
            loop {
                let lost = engine.lost.borrow().clone();
                let result = gpu::acquire(move |reason| {
                    if let Some(lost) = &lost {
                        let _ = lost.unbounded_send(reason);
                    }
                })
                .await
                .map_err(|e| e.to_string());
                attempt += 1;
                if result.is_ok() || attempt == GPU_ATTEMPTS {
                    break result;
                }
                sleep_ms(500 * attempt).await;
            }
        }
    };
    match result {
        Ok(gpu) => {
            let info = &gpu.info;
            // No activation outgrows one storage binding of this device.
            orfeas_engine::models::set_buffer_budget(info.buffer_budget());
            post(&FromWorker::Gpu {
                info: GpuReport {
                    adapter: if info.adapter.is_empty() {
                        "unnamed adapter".into()
                    } else {
                        info.adapter.clone()
                    },
                    backend: info.backend.clone(),
                    software: info.software,
                    shader_f16: info.shader_f16,
                    max_storage_buffer_binding_size: info.max_storage_buffer_binding_size,
                    max_buffer_size: info.max_buffer_size,
                    dtype: if info.shader_f16 { "f16" } else { "f32" }.into(),
                },
            });
            *engine.gpu.borrow_mut() = Some(gpu);
            true
        }
        Err(reason) => {
            post(&FromWorker::GpuUnavailable {
                reason: reason.clone(),
            });
            let ids: Vec<String> = engine
                .models
                .borrow_mut()
                .iter_mut()
                .map(|s| {
                    s.awaiting_device = false; // Retry reloads it
                    s.spec.id.clone()
                })
                .collect();
            for id in ids {
                set_status(
                    engine,
                    &id,
                    ModelStatusReport::Failed {
                        reason: format!("no GPU: {reason}"),
                    },
                );
            }
            false
        }
    }
}

/// Tries at acquiring the GPU before reporting it unavailable.
const GPU_ATTEMPTS: i32 = 3;

async fn sleep_ms(ms: i32) {
    let promise = js_sys::Promise::new(&mut |resolve, _| {
        let scope: web_sys::WorkerGlobalScope = js_sys::global().unchecked_into();
        let _ = scope.set_timeout_with_callback_and_timeout_and_arguments_0(&resolve, ms);
    });
    let _ = JsFuture::from(promise).await;
}

/// `Some(reason)` when this browser has no WebGPU at all.
fn webgpu_missing() -> Option<String> {
    let scope: web_sys::WorkerGlobalScope = js_sys::global().unchecked_into();
    let gpu = js_sys::Reflect::get(&scope.navigator(), &JsValue::from_str("gpu")).ok();
    match gpu {
        Some(value) if !value.is_undefined() && !value.is_null() => None,
        _ => Some(
            "this browser has no WebGPU (navigator.gpu is missing): use a current Chrome or \
             Edge; on Linux, start Chrome with --enable-unsafe-webgpu"
                .into(),
        ),
    }
}

fn set_status(engine: &Engine, id: &str, status: ModelStatusReport) {
    if let Some(slot) = engine
        .models
        .borrow_mut()
        .iter_mut()
        .find(|s| s.spec.id == id)
    {
        slot.status = status.clone();
    }
    post(&FromWorker::Status {
        model: id.to_string(),
        status,
    });
}

fn report(progress: &LoadProgress) -> ProgressReport {
    ProgressReport {
        model: progress.model.clone(),
        phase: progress.phase.into(),
        bytes_done: progress.bytes_done,
        bytes_total: progress.bytes_total,
        shards_done: progress.shards_done,
        shards_total: progress.shards_total,
        tensors_done: progress.tensors_done,
        tensors_total: progress.tensors_total,
        bytes_per_sec: progress.bytes_per_sec,
        eta_s: progress.eta_s,
        elapsed_s: progress.elapsed_s,
        from_cache: progress.from_cache,
    }
}

/// Load (or resume) model `i` on the current device. Re-runs itself if the device is rebuilt
/// meanwhile, since tensors on a lost device are gone.
async fn load_model(engine: Rc<Engine>, i: usize) {
    let (id, source, weights) = {
        let mut slots = engine.models.borrow_mut();
        let slot = &mut slots[i];
        let Some(weights) = slot.weights.take() else {
            return; // already loading
        };
        (slot.spec.id.clone(), slot.source.clone(), weights)
    };
    let mut weights = weights;
    if shape::is_part(&engine, i) {
        engine.shape.borrow_mut().take();
    }
    let refused = engine.models.borrow()[i].refused.clone();
    if let Some(reason) = refused {
        engine.models.borrow_mut()[i].weights = Some(weights);
        set_status(&engine, &id, ModelStatusReport::Failed { reason });
        return;
    }
    set_status(&engine, &id, ModelStatusReport::Loading);
    loop {
        let generation = engine.device_generation.get();
        let outcome = load_once(&engine, i, &id, &source, &mut weights).await;
        let mut outcome = outcome;
        if engine.device_generation.get() != generation || engine.gpu.borrow().is_none() {
            // The device was lost under this load: whatever happened here happened to tensors
            // that are gone.
            weights = WeightSet::new();
            if engine.rebuilding.get() {
                // The rebuild reloads this model once the new device is up (or fails it).
                let mut slots = engine.models.borrow_mut();
                slots[i].weights = Some(weights);
                slots[i].awaiting_device = true;
                return;
            }
            if engine.gpu.borrow().is_some() {
                continue;
            }
            outcome = Err("the GPU device was lost and could not be rebuilt".into());
        }
        let tensors = weights.len();
        engine.models.borrow_mut()[i].weights = Some(weights);
        let isnet = cutout::is_isnet(&engine, i);
        let outcome = outcome.and_then(|from_cache| {
            if isnet {
                cutout::adopt(&engine, i)?;
            }
            Ok(from_cache)
        });
        match outcome {
            Ok(from_cache) => set_status(
                &engine,
                &id,
                ModelStatusReport::Ready {
                    tensors,
                    from_cache,
                },
            ),
            Err(reason) => set_status(&engine, &id, ModelStatusReport::Failed { reason }),
        }
        // Background removal ready (or failed): the current image's cut-out follows (or says so).
        if isnet {
            cutout::request(&engine);
        }
        post(&FromWorker::Memory {
            wasm_heap_bytes: wasm_heap_bytes(),
        });
        if let Some(error) = source.storage_error() {
            post(&FromWorker::Notice {
                level: NoticeLevel::Warning,
                message: format!(
                    "the browser would not store {id} ({error}): it is kept in memory for this \
                     session and downloaded again on the next visit"
                ),
            });
        }
        return;
    }
}

/// One attempt: index, storage check, stream every missing shard. `Ok(from_cache)`.
async fn load_once(
    engine: &Rc<Engine>,
    i: usize,
    id: &str,
    source: &CachedFetchSource,
    weights: &mut WeightSet,
) -> Result<bool, String> {
    let Some((device, dtype)) = engine
        .gpu
        .borrow()
        .as_ref()
        .map(|gpu| (gpu.device.clone(), gpu.info.model_dtype()))
    else {
        return Err("no GPU device".into());
    };
    let known = engine.models.borrow()[i].index.clone();
    let index = match known {
        Some(index) => index,
        None => {
            let index = read_index(source).await.map_err(|e| e.to_string())?;
            engine.models.borrow_mut()[i].index = Some(index.clone());
            index
        }
    };
    check_storage(id, source, &index).await;

    let mut all_from_cache = true;
    let mut tracker = ProgressTracker::new(initial_progress(&index), |progress: &LoadProgress| {
        all_from_cache &= progress.from_cache;
        let report = report(progress);
        post(&FromWorker::Progress(report));
    });
    let result = load_weights(source, &index, &device, dtype, weights, &mut tracker).await;
    source.settle().await;
    match result {
        Ok(()) => {
            tracker.set_phase(Phase::Ready);
            tracker.flush();
            let last = report(tracker.progress());
            drop(tracker);
            engine.models.borrow_mut()[i].progress = Some(last);
            Ok(all_from_cache)
        }
        Err(e) => {
            tracker.set_phase(Phase::Failed);
            let last = report(tracker.progress());
            drop(tracker);
            engine.models.borrow_mut()[i].progress = Some(last);
            Err(e.to_string())
        }
    }
}

/// Compare free storage with what still has to be stored; say so when it will not fit.
async fn check_storage(id: &str, source: &CachedFetchSource, index: &ShardIndex) {
    let mut to_store = 0u64;
    for shard in &index.shards {
        if !orfeas_engine::weights::ShardSource::is_cached(source, &shard.file).await {
            to_store += shard.size;
        }
    }
    if to_store == 0 {
        return;
    }
    let scope: web_sys::WorkerGlobalScope = js_sys::global().unchecked_into();
    let Ok(estimate) = scope.navigator().storage().estimate() else {
        return;
    };
    let Ok(estimate) = JsFuture::from(estimate).await else {
        return;
    };
    let estimate: web_sys::StorageEstimate = estimate.unchecked_into();
    let (Some(quota), Some(usage)) = (estimate.get_quota(), estimate.get_usage()) else {
        return;
    };
    let free = (quota - usage).max(0.0) as u64;
    if free < to_store {
        post(&FromWorker::Notice {
            level: NoticeLevel::Warning,
            message: format!(
                "{id}: {} MB to store but only {} MB of browser storage free; what does not fit \
                 stays in memory for this session",
                to_store >> 20,
                free >> 20
            ),
        });
    }
}

fn generate(engine: Rc<Engine>, request_id: u64) {
    let slots = engine.models.borrow();
    if slots.is_empty() {
        post(&FromWorker::Error {
            request_id: Some(request_id),
            message: "no models are configured".into(),
        });
        return;
    }
    if let Some(failed) = slots
        .iter()
        .find(|s| matches!(s.status, ModelStatusReport::Failed { .. }))
    {
        post(&FromWorker::Error {
            request_id: Some(request_id),
            message: format!(
                "{} is not ready (it failed to load): retry it first",
                failed.spec.label
            ),
        });
        return;
    }
    let loading: Vec<&ModelSlot> = slots
        .iter()
        .filter(|s| !matches!(s.status, ModelStatusReport::Ready { .. }))
        .collect();
    if !loading.is_empty() {
        let eta = loading
            .iter()
            .filter_map(|s| s.progress.as_ref().and_then(|p| p.eta_s))
            .fold(None, |acc: Option<f64>, eta| {
                Some(acc.map_or(eta, |a| a.max(eta)))
            });
        let names: Vec<&str> = loading.iter().map(|s| s.spec.label.as_str()).collect();
        post(&FromWorker::NotReady {
            request_id,
            retry_after_s: retry_after_s(eta),
            message: format!("models still loading: {}", names.join(", ")),
        });
        return;
    }
    drop(slots);
    spawn_local(shape::run(engine, request_id));
}

async fn verify_cache(engine: Rc<Engine>) {
    let targets: Vec<(String, Rc<CachedFetchSource>, Option<ShardIndex>)> = engine
        .models
        .borrow()
        .iter()
        .map(|s| (s.spec.id.clone(), s.source.clone(), s.index.clone()))
        .collect();
    let mut lines = Vec::new();
    for (id, source, index) in targets {
        let index = match index {
            Some(index) => index,
            None => match read_index(&*source).await {
                Ok(index) => index,
                Err(e) => {
                    lines.push(format!("{id}: no index ({e})"));
                    continue;
                }
            },
        };
        let check = verify_cached(&*source, &index).await;
        let mut line = format!(
            "{id}: {} of {} shards cached and verified",
            check.verified.len(),
            index.shards.len()
        );
        for (file, error) in &check.dropped {
            line.push_str(&format!("; dropped {file} ({error})"));
        }
        lines.push(line);
    }
    post(&FromWorker::CacheReport {
        message: if lines.is_empty() {
            "no models configured".into()
        } else {
            lines.join("\n")
        },
    });
}

/// Rebuild the device after a loss (at most [`MAX_GPU_RESETS`] times) and reload every model
/// that was on it, from the cache when it is there.
async fn watch_device_loss(engine: Rc<Engine>, mut lost: mpsc::UnboundedReceiver<String>) {
    while let Some(reason) = lost.next().await {
        engine.gpu.borrow_mut().take();
        engine.isnet.borrow_mut().take();
        engine.shape.borrow_mut().take();
        engine
            .device_generation
            .set(engine.device_generation.get() + 1);
        let resets = engine.gpu_resets.get() + 1;
        engine.gpu_resets.set(resets);
        if resets > MAX_GPU_RESETS {
            post(&FromWorker::GpuUnavailable {
                reason: format!(
                    "the GPU device was lost {resets} times (last: {reason}); reload the page"
                ),
            });
            continue;
        }
        post(&FromWorker::Notice {
            level: NoticeLevel::Warning,
            message: format!("GPU reset ({reason}), restoring…"),
        });
        engine.rebuilding.set(true);
        let hold = engine.options.borrow().debug_gpu_rebuild_ms;
        if let Some(ms) = hold {
            sleep_ms(ms as i32).await;
        }
        // Their tensors went with the device: nothing may use them until they are back. A
        // model still loading marks itself when its load notices the loss.
        let lost_models: Vec<String> = {
            let mut slots = engine.models.borrow_mut();
            slots
                .iter_mut()
                .filter(|s| s.weights.is_some())
                .filter(|s| !matches!(s.status, ModelStatusReport::Failed { .. }))
                .map(|s| {
                    s.weights = Some(WeightSet::new());
                    s.awaiting_device = true;
                    s.spec.id.clone()
                })
                .collect()
        };
        for id in lost_models {
            set_status(&engine, &id, ModelStatusReport::Loading);
        }
        let acquired = acquire_gpu(&engine).await;
        engine.rebuilding.set(false);
        if !acquired {
            continue;
        }
        let reload: Vec<usize> = {
            let mut slots = engine.models.borrow_mut();
            slots
                .iter_mut()
                .enumerate()
                .filter_map(|(i, s)| std::mem::take(&mut s.awaiting_device).then_some(i))
                .collect()
        };
        for i in reload {
            load_model(engine.clone(), i).await;
        }
        post(&FromWorker::Notice {
            level: NoticeLevel::Info,
            message: "GPU restored".into(),
        });
    }
}
