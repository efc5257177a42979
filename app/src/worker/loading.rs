//! Models from the network (through the browser's Cache Storage) onto the GPU: each model's
//! slot, the fit check before anything large is fetched, loads that survive a device loss,
//! and the cache's verification.

use std::cell::RefCell;
use std::rc::Rc;

use futures::StreamExt;
use futures::channel::mpsc;
use orfeas_engine::pipeline::ConditionerConfig;
use orfeas_engine::weights::loader::{initial_progress, read_index};
use orfeas_engine::weights::source::{CachedFetchSource, FetchSource, delete_cache};
use orfeas_engine::weights::{
    LoadError, Precision, ProgressTracker, ShardIndex, WeightSet, load_weights, verify_cached,
};
use serde::Deserialize;
use wasm_bindgen::JsCast;
use wasm_bindgen_futures::{JsFuture, spawn_local};

use super::device::{self, acquire_gpu};
use super::js::device_memory;
use super::placement::{isnet_device, isnet_device_kind, isnet_on_cpu};
use super::{Engine, Roles, cutout, post, wasm_heap_bytes};
use crate::config::ModelSpec;
use crate::protocol::{
    ComputeDevice, FromWorker, LoadProgress, ModelStatusReport, NoticeLevel, Phase, QuantOption,
    ShapeQuantReport,
};
use crate::text::retry_after_s;

/// Cache Storage name for model shards; bump the suffix if the stored format ever changes.
pub const MODEL_CACHE: &str = "orfeas-models-v1";

/// Every configured model's slot and the part each plays: filled and changed only here (the
/// loader), read by the others through these methods.
#[derive(Default)]
pub(super) struct ModelSlots {
    /// One per configured model, in the config's order.
    slots: RefCell<Vec<ModelSlot>>,
    roles: RefCell<Roles>,
}

impl ModelSlots {
    /// The slot of the model with this id.
    pub(super) fn position(&self, id: &str) -> Option<usize> {
        self.slots
            .borrow()
            .iter()
            .position(|slot| slot.spec.id == id)
    }

    /// Background removal's slot, the one in use of its precisions.
    pub(super) fn background(&self) -> Option<usize> {
        self.roles.borrow().background
    }

    /// Slot `i`'s label and status.
    pub(super) fn label_and_status(&self, i: usize) -> (String, ModelStatusReport) {
        let slots = self.slots.borrow();
        (slots[i].spec.label.clone(), slots[i].status.clone())
    }

    /// Slot `i`'s weights once loaded, and its id.
    pub(super) fn weights(&self, i: usize) -> (Option<WeightSet>, String) {
        let slots = self.slots.borrow();
        (slots[i].weights.clone(), slots[i].spec.id.clone())
    }

    /// The shape model in use: each of its three sets' config and weights (in `COMPONENTS`
    /// order), or what is missing.
    pub(super) fn shape_parts(&self) -> Result<[(serde_json::Value, WeightSet); 3], String> {
        let parts = self.roles.borrow().shape().map(|(_, parts)| *parts).ok_or(
            "no shape model is configured (models <name>/conditioner, <name>/denoiser, <name>/vae)",
        )?;
        let slots = self.slots.borrow();
        let [conditioner, denoiser, vae] = parts.map(|i| {
            let slot = &slots[i];
            match (&slot.index, &slot.weights) {
                (Some(index), Some(weights)) => Ok((index.config.clone(), weights.clone())),
                _ => Err(format!("{} is not loaded", slot.spec.label)),
            }
        });
        Ok([conditioner?, denoiser?, vae?])
    }

    /// Why a generation cannot run now, as the answer to request `request_id`: no shape
    /// model installed, a model in use that failed, or models still loading (with when to
    /// ask again); `None` when every model in use is ready.
    pub(super) fn generation_blocker(&self, request_id: u64) -> Option<FromWorker> {
        let slots = self.slots.borrow();
        let roles = self.roles.borrow();
        let shape_parts = roles.shape().map(|(_, parts)| *parts);
        // The precisions not in use are not loaded and wait for nothing.
        let in_use = |i: &usize| !roles.is_idle(*i);
        let installed =
            |i: &usize| !matches!(slots[*i].status, ModelStatusReport::NotInstalled { .. });
        if !shape_parts.is_some_and(|parts| parts.iter().all(installed)) {
            return Some(FromWorker::Error {
                request_id: Some(request_id),
                message: "no shape model is installed: convert a Hunyuan3D checkpoint with \
                          `orfeas convert` (background removal and the preview work without it)"
                    .into(),
            });
        }
        let in_use_slots = || {
            slots
                .iter()
                .enumerate()
                .filter(|(i, _)| in_use(i))
                .map(|(_, s)| s)
        };
        if let Some(failed) =
            in_use_slots().find(|s| matches!(s.status, ModelStatusReport::Failed { .. }))
        {
            return Some(FromWorker::Error {
                request_id: Some(request_id),
                message: format!(
                    "{} is not ready (it failed to load): retry it first",
                    failed.spec.label
                ),
            });
        }
        let loading: Vec<&ModelSlot> = in_use_slots()
            .filter(|s| {
                !matches!(
                    s.status,
                    ModelStatusReport::Ready { .. } | ModelStatusReport::NotInstalled { .. }
                )
            })
            .collect();
        if loading.is_empty() {
            return None;
        }
        let eta = loading
            .iter()
            .filter_map(|s| s.progress.as_ref().and_then(|p| p.eta_s))
            .fold(None, |acc: Option<f64>, eta| {
                Some(acc.map_or(eta, |a| a.max(eta)))
            });
        let names: Vec<&str> = loading.iter().map(|s| s.spec.label.as_str()).collect();
        Some(FromWorker::NotReady {
            request_id,
            retry_after_s: retry_after_s(eta),
            message: format!("models still loading: {}", names.join(", ")),
            detail: None,
        })
    }
}

/// One configured model: where it comes from, its index once read, its weights once loaded.
pub(super) struct ModelSlot {
    pub spec: ModelSpec,
    pub source: Rc<CachedFetchSource>,
    pub index: Option<ShardIndex>,
    /// `None` while a load task holds it.
    pub weights: Option<WeightSet>,
    pub status: ModelStatusReport,
    pub progress: Option<LoadProgress>,
    /// Why the model cannot run on this device (decided from its index before any shard is
    /// fetched); such a model is never loaded.
    pub refused: Option<String>,
    /// Its load was cut short by a device loss: the device's rebuild reloads it.
    pub awaiting_device: bool,
}

/// The UI's Start: a slot per model, the GPU, the fit check, then each model's load in turn
/// (without a GPU, background removal's alone, on the CPU).
pub(super) async fn start(engine: Rc<Engine>, models: Vec<ModelSpec>) {
    {
        let mut slots = engine.models.slots.borrow_mut();
        if !slots.is_empty() {
            return; // a second Start (e.g. a UI re-mount) changes nothing
        }
        let roles = Roles::of(&models);
        let in_use_background = roles.background.map(|b| models[b].id.clone());
        for (i, spec) in models.into_iter().enumerate() {
            let status = match &in_use_background {
                Some(instead) if roles.idle_background.contains(&i) => ModelStatusReport::Standby {
                    instead: instead.clone(),
                },
                _ => ModelStatusReport::Waiting,
            };
            let source = CachedFetchSource::new(FetchSource::new(spec.url.clone()), MODEL_CACHE);
            post(&FromWorker::Status {
                model: spec.id.clone(),
                status: status.clone(),
            });
            slots.push(ModelSlot {
                spec,
                source: Rc::new(source),
                index: None,
                weights: Some(WeightSet::new()),
                status,
                progress: None,
                refused: None,
                awaiting_device: false,
            });
        }
        *engine.models.roles.borrow_mut() = roles;
    }
    let losses = engine.device.report_losses();
    spawn_local(watch_device_loss(engine.clone(), losses));
    if let Err(reason) = acquire_gpu(&engine).await {
        fail_without_gpu(&engine, &reason);
        // Without a GPU background removal still runs, on the CPU.
        let background = engine.models.roles.borrow().background;
        if let Some(i) = background.filter(|&i| isnet_on_cpu(&engine, i)) {
            load_model(engine.clone(), i).await;
        }
        return;
    }
    check_fit(&engine).await;
    let count = engine.models.slots.borrow().len();
    for i in 0..count {
        // The shape model's other precisions wait to be chosen; a set the user chose meanwhile
        // may be loaded already.
        let loaded = matches!(
            engine.models.slots.borrow()[i].status,
            ModelStatusReport::Ready { .. }
        );
        if !engine.models.roles.borrow().is_idle(i) && !loaded {
            load_model(engine.clone(), i).await;
        }
    }
}

/// Before anything large is fetched: read every model's index (small) and check that the
/// model — a shape model's three sets together — fits this GPU in the dtype it will run in;
/// one that does not is refused with the reason (what is missing, what would fit).
async fn check_fit(engine: &Rc<Engine>) {
    let Some((capacity, dtype)) = engine.device.info().map(|info| {
        let memory = engine
            .options
            .borrow()
            .gpu_memory_gib
            .map(|gib| (gib * (1u64 << 30) as f64) as u64);
        let capacity = info.capacity(memory, device_memory());
        let dtype = info.model_dtype();
        (capacity, dtype)
    }) else {
        return;
    };
    let count = engine.models.slots.borrow().len();
    for i in 0..count {
        if engine.models.roles.borrow().idle_background.contains(&i) {
            continue; // on standby: nothing of it is fetched
        }
        let source = engine.models.slots.borrow()[i].source.clone();
        if engine.models.slots.borrow()[i].index.is_none()
            && let Ok(index) = read_index(source.as_ref()).await
        {
            engine.models.slots.borrow_mut()[i].index = Some(index);
        }
    }
    let isnet_cpu = isnet_device_kind(engine) == ComputeDevice::Cpu;
    let groups: Vec<(String, Vec<usize>)> = {
        let slots = engine.models.slots.borrow();
        let roles = engine.models.roles.borrow();
        let mut groups: Vec<(String, Vec<usize>)> = roles
            .shape_sets
            .iter()
            .map(|(name, parts)| (name.clone(), parts.to_vec()))
            .collect();
        for (i, slot) in slots.iter().enumerate() {
            // ISNet on the CPU takes none of the GPU's memory.
            let off_the_gpu = roles.background == Some(i) && isnet_cpu;
            if !roles.is_shape_part(i) && !off_the_gpu && !roles.is_idle(i) {
                groups.push((slot.spec.id.clone(), vec![i]));
            }
        }
        groups
    };
    for (name, members) in groups {
        let verdict = {
            let slots = engine.models.slots.borrow();
            let indexes: Option<Vec<&ShardIndex>> =
                members.iter().map(|&i| slots[i].index.as_ref()).collect();
            // An index that cannot be read is reported by the load itself.
            indexes.map(|indexes| {
                let name = orfeas_engine::fit::model_name(&name, &indexes);
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
                engine.models.slots.borrow_mut()[i].refused = Some(reason.clone());
            }
        }
    }
    choose_shape_set(engine);
}

/// The shape model's installed precisions as the card shows them: each set whose three
/// indexes were read (a set with one missing is not installed), its size, its fit verdict.
fn quant_options(engine: &Engine) -> Vec<QuantOption> {
    let slots = engine.models.slots.borrow();
    let roles = engine.models.roles.borrow();
    roles
        .shape_sets
        .iter()
        .filter_map(|(folder, parts)| {
            let indexes: Vec<&ShardIndex> = parts
                .iter()
                .map(|&i| slots[i].index.as_ref())
                .collect::<Option<_>>()?;
            let precision = orfeas_engine::weights::Precision::narrowest(
                indexes.iter().map(|i| i.precision()),
            )?;
            Some(QuantOption {
                folder: folder.clone(),
                precision: precision.name().to_string(),
                bytes: indexes.iter().map(|i| i.total_bytes()).sum(),
                refused: slots[parts[0]].refused.clone(),
            })
        })
        .collect()
}

/// After the fit check: which precision of the shape model to load — the one asked for
/// (`?quant=`, or the user's last choice) when it is installed, else the smallest installed
/// that fits this GPU (every byte is downloaded before the first mesh) — and tell the UI.
fn choose_shape_set(engine: &Engine) {
    let options = quant_options(engine);
    if options.is_empty() {
        return;
    }
    let (wanted, remembered) = {
        let options = engine.options.borrow();
        (options.quant.clone(), options.quant_remembered)
    };
    let asked = wanted
        .as_ref()
        .and_then(|q| options.iter().position(|o| &o.precision == q));
    if let (Some(q), None) = (&wanted, asked) {
        let installed: Vec<&str> = options.iter().map(|o| o.precision.as_str()).collect();
        post(&FromWorker::Notice {
            level: NoticeLevel::Warning,
            message: format!(
                "no {q} set of the shape model is installed here (installed: {}): loading the \
                 smallest that fits instead",
                installed.join(", ")
            ),
        });
    }
    let installed: Vec<orfeas_engine::fit::Installed> = options
        .iter()
        .map(|o| orfeas_engine::fit::Installed {
            precision: o.precision.parse().unwrap_or(Precision::F16),
            bytes: o.bytes,
            fits: o.refused.is_none(),
        })
        .collect();
    let (at, because) = match asked {
        Some(at) if remembered => (at, "your choice on an earlier visit".into()),
        Some(at) => (
            at,
            format!(
                "asked for in the page's address (?quant={})",
                wanted.unwrap_or_default()
            ),
        ),
        None => {
            let at = orfeas_engine::fit::choose(&installed, orfeas_engine::fit::Prefer::Smallest)
                .unwrap_or(0);
            let because = match (options.len(), installed[at].fits) {
                (1, _) => "the only precision installed",
                (_, true) => "the smallest installed that fits this GPU",
                (_, false) => "none installed fits this GPU",
            };
            (at, because.to_string())
        }
    };
    let folder = options[at].folder.clone();
    let model = {
        let mut roles = engine.models.roles.borrow_mut();
        if let Some(set) = roles.shape_sets.iter().position(|(f, _)| *f == folder) {
            roles.chosen = set;
        }
        orfeas_engine::fit::precision_of_folder(&folder)
            .0
            .to_string()
    };
    post(&FromWorker::ShapeQuant(ShapeQuantReport {
        model,
        views: extra_views(engine, &folder),
        chosen: folder,
        because,
        options,
    }));
}

/// The views the image encoder of the shape set in `folder` takes besides the front (from its
/// conditioner's config: a 2mv model's view table); none for a single-image model, or before
/// its index is read.
fn extra_views(engine: &Engine, folder: &str) -> Vec<String> {
    let roles = engine.models.roles.borrow();
    let Some((_, parts)) = roles.shape_sets.iter().find(|(f, _)| f == folder) else {
        return Vec::new();
    };
    let slots = engine.models.slots.borrow();
    let table = slots[parts[0]]
        .index
        .as_ref()
        .and_then(|index| ConditionerConfig::deserialize(&index.config).ok())
        .and_then(|config| config.view_table());
    orfeas_engine::pipeline::View::ALL
        .iter()
        .take(table.unwrap_or(1))
        .skip(1)
        .map(|view| view.name().to_string())
        .collect()
}

/// The user chose another installed precision of the shape model: free the set in use, load
/// that one (from the cache when it was loaded before).
pub(super) async fn choose_quant(engine: Rc<Engine>, precision: String) {
    let options = quant_options(&engine);
    let Some(option) = options.iter().find(|o| o.precision == precision) else {
        post(&FromWorker::Error {
            request_id: None,
            message: format!("no {precision} set of the shape model is installed"),
        });
        return;
    };
    let (old, new) = {
        let mut roles = engine.models.roles.borrow_mut();
        let Some(set) = roles
            .shape_sets
            .iter()
            .position(|(f, _)| *f == option.folder)
        else {
            return;
        };
        let old = roles.shape_sets[roles.chosen].1;
        if set == roles.chosen {
            return;
        }
        roles.chosen = set;
        (old, roles.shape_sets[set].1)
    };
    // The old set's tensors go before the new set's come (a set still loading lets go of
    // its own when its load ends).
    engine.shape.forget_model();
    for i in old {
        let id = {
            let mut slots = engine.models.slots.borrow_mut();
            let slot = &mut slots[i];
            if slot.weights.is_some() {
                slot.weights = Some(WeightSet::new());
            }
            slot.progress = None;
            slot.spec.id.clone()
        };
        set_status(&engine, &id, ModelStatusReport::Waiting);
    }
    post(&FromWorker::ShapeQuant(ShapeQuantReport {
        model: orfeas_engine::fit::precision_of_folder(&option.folder)
            .0
            .to_string(),
        chosen: option.folder.clone(),
        because: "your choice".into(),
        options: options.clone(),
        views: extra_views(&engine, &option.folder),
    }));
    if !engine.device.is_up() {
        return; // the GPU's return (or a retry) loads it
    }
    for i in new {
        let loaded = matches!(
            engine.models.slots.borrow()[i].status,
            ModelStatusReport::Ready { .. }
        );
        if !loaded
            && engine
                .models
                .roles
                .borrow()
                .shape()
                .is_some_and(|(_, p)| *p == new)
        {
            load_model(engine.clone(), i).await;
        }
    }
}

pub(super) fn set_status(engine: &Engine, id: &str, status: ModelStatusReport) {
    if let Some(slot) = engine
        .models
        .slots
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

/// No GPU (none at all, or it did not come back): every model that needs one fails with the
/// reason, so its panel says why and Retry tries again; ISNet on the CPU does not need it.
pub(super) fn fail_without_gpu(engine: &Engine, reason: &str) {
    let ids: Vec<String> = engine
        .models
        .slots
        .borrow_mut()
        .iter_mut()
        .enumerate()
        .filter(|(i, _)| !isnet_on_cpu(engine, *i) && !engine.models.roles.borrow().is_idle(*i))
        .map(|(_, s)| {
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
}

/// After each loss of the device: rebuild it (see [`forget_lost_device`]) and reload every
/// model that was on it, from the cache when it is there.
pub(super) async fn watch_device_loss(
    engine: Rc<Engine>,
    mut lost: mpsc::UnboundedReceiver<String>,
) {
    while let Some(reason) = lost.next().await {
        // Background removal on the CPU is untouched by the loss.
        if isnet_device_kind(&engine) == ComputeDevice::Gpu {
            engine.background.forget_isnet();
        }
        engine.shape.forget_model();
        if !device::lost(&engine, &reason).await {
            continue;
        }
        // Their tensors went with the device: nothing may use them until they are back. A
        // model still loading marks itself when its load notices the loss.
        let lost_models: Vec<String> = {
            let mut slots = engine.models.slots.borrow_mut();
            slots
                .iter_mut()
                .enumerate()
                .filter(|(i, _)| !isnet_on_cpu(&engine, *i))
                // The shape model's other precisions were never on the device.
                .filter(|(i, _)| !engine.models.roles.borrow().is_idle(*i))
                .map(|(_, s)| s)
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
        if let Err(reason) = device::rebuild(&engine).await {
            fail_without_gpu(&engine, &reason);
            continue;
        }
        let reload: Vec<usize> = {
            let mut slots = engine.models.slots.borrow_mut();
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

/// Load (or resume) model `i` on the current device. Re-runs itself if the device is rebuilt
/// meanwhile, since tensors on a lost device are gone.
pub(super) async fn load_model(engine: Rc<Engine>, i: usize) {
    if engine.models.roles.borrow().is_idle(i) {
        return; // a precision of the shape model not in use
    }
    let (id, source, weights) = {
        let mut slots = engine.models.slots.borrow_mut();
        let slot = &mut slots[i];
        let Some(weights) = slot.weights.take() else {
            return; // already loading
        };
        (slot.spec.id.clone(), slot.source.clone(), weights)
    };
    let mut weights = weights;
    if engine.models.roles.borrow().is_shape_part(i) {
        engine.shape.forget_model();
    }
    let refused = engine.models.slots.borrow()[i].refused.clone();
    if let Some(reason) = refused {
        engine.models.slots.borrow_mut()[i].weights = Some(weights);
        set_status(&engine, &id, ModelStatusReport::Failed { reason });
        return;
    }
    set_status(&engine, &id, ModelStatusReport::Loading);
    loop {
        let generation = engine.device.generation();
        let outcome = load_once(&engine, i, &id, &source, &mut weights).await;
        let mut outcome = outcome;
        let lost = engine.device.generation() != generation || !engine.device.is_up();
        if lost && !isnet_on_cpu(&engine, i) {
            // The device was lost under this load: whatever happened here happened to tensors
            // that are gone.
            weights = WeightSet::new();
            if engine.device.rebuilding() {
                // The rebuild reloads this model once the new device is up (or fails it).
                let mut slots = engine.models.slots.borrow_mut();
                slots[i].weights = Some(weights);
                slots[i].awaiting_device = true;
                return;
            }
            if engine.device.is_up() {
                continue;
            }
            outcome = Err(Unloaded::Failed(
                "the GPU device was lost and could not be rebuilt".into(),
            ));
        }
        if engine.models.roles.borrow().is_idle(i) {
            // The user chose another precision while this one loaded: let its tensors go.
            let mut slots = engine.models.slots.borrow_mut();
            slots[i].weights = Some(WeightSet::new());
            slots[i].progress = None;
            drop(slots);
            set_status(&engine, &id, ModelStatusReport::Waiting);
            return;
        }
        let tensors = weights.len();
        engine.models.slots.borrow_mut()[i].weights = Some(weights);
        let isnet = engine.models.roles.borrow().background == Some(i);
        let outcome = outcome.and_then(|from_cache| {
            if isnet {
                cutout::adopt(&engine, i).map_err(Unloaded::Failed)?;
            }
            Ok(from_cache)
        });
        let precision = engine.models.slots.borrow()[i]
            .index
            .as_ref()
            .map(|index| index.precision().name().to_string())
            .unwrap_or_default();
        let status = match outcome {
            Ok(from_cache) => ModelStatusReport::Ready {
                tensors,
                from_cache,
                precision,
            },
            Err(Unloaded::Failed(reason)) => ModelStatusReport::Failed { reason },
            Err(Unloaded::NotInstalled(url)) => ModelStatusReport::NotInstalled { url },
        };
        set_status(&engine, &id, status);
        // The status first, then the last progress line (`ready` / `failed`).
        let last = engine.models.slots.borrow()[i].progress.clone();
        if let Some(last) = last {
            post(&FromWorker::Progress(last));
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

/// Why a load attempt ended without the model.
enum Unloaded {
    /// Nothing at the model's URL: it is not installed.
    NotInstalled(String),
    Failed(String),
}

/// One attempt: index, storage check, stream every missing shard. `Ok(from_cache)`. The last
/// progress (phase `ready` or `failed`) is kept in the slot, not posted: the model's status
/// goes first, so a panel never shows `loading` beside `ready`.
async fn load_once(
    engine: &Rc<Engine>,
    i: usize,
    id: &str,
    source: &CachedFetchSource,
    weights: &mut WeightSet,
) -> Result<bool, Unloaded> {
    let isnet = engine.models.roles.borrow().background == Some(i);
    let chosen = if isnet {
        isnet_device(engine)
    } else {
        engine.device.current_with_dtype()
    };
    let (device, dtype) = chosen.map_err(Unloaded::Failed)?;
    let known = engine.models.slots.borrow()[i].index.clone();
    let index = match known {
        Some(index) => index,
        None => {
            let index = read_index(source).await.map_err(|e| match e {
                LoadError::NotInstalled(url) => Unloaded::NotInstalled(url),
                e => Unloaded::Failed(e.to_string()),
            })?;
            engine.models.slots.borrow_mut()[i].index = Some(index.clone());
            index
        }
    };
    check_storage(id, source, &index).await;

    let mut all_from_cache = true;
    let mut tracker = ProgressTracker::new(initial_progress(&index), |progress: &LoadProgress| {
        all_from_cache &= progress.from_cache;
        post(&FromWorker::Progress(progress.clone()));
    });
    let result = load_weights(source, &index, &device, dtype, weights, &mut tracker).await;
    source.settle().await;
    let mut last = tracker.progress().clone();
    drop(tracker);
    let outcome = match result {
        Ok(()) => {
            last.phase = Phase::Ready;
            last.eta_s = Some(0.0);
            Ok(all_from_cache)
        }
        Err(e) => {
            last.phase = Phase::Failed;
            last.eta_s = None;
            Err(Unloaded::Failed(e.to_string()))
        }
    };
    engine.models.slots.borrow_mut()[i].progress = Some(last);
    outcome
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

/// The UI's Clear cache: drop every stored shard.
pub(super) async fn clear_cache() {
    let message = match delete_cache(MODEL_CACHE).await {
        Ok(true) => "model cache cleared: the next visit downloads the models again".into(),
        Ok(false) => "the model cache was already empty".into(),
        Err(e) => format!("could not clear the model cache: {e}"),
    };
    post(&FromWorker::CacheReport { message });
}

/// The UI's Verify cache: re-hash every stored shard against its index, dropping bad ones.
pub(super) async fn verify_cache(engine: Rc<Engine>) {
    let targets: Vec<(String, Rc<CachedFetchSource>, Option<ShardIndex>)> = engine
        .models
        .slots
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
