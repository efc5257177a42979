//! The models the server loads in the background, and what `/api/health` says about them.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use burn::tensor::{DType, Device};
use bytes::Bytes;
use std::panic::AssertUnwindSafe;

use futures::{FutureExt, StreamExt};
use orfeas_engine::fit::{Capacity, Footprint, Installed, Prefer, choose, precision_of_folder};
use orfeas_engine::pipeline::COMPONENTS;
use orfeas_engine::weights::loader::{initial_progress, read_index};
use orfeas_engine::weights::source::{ByteStream, DirSource, SourceError, boxed};
use orfeas_engine::weights::status::retry_after;
use orfeas_engine::weights::{
    INDEX_FILE, LoadProgress, ModelState, ModelStatus, NotReady, NotReadyKind, Phase, Precision,
    ProgressTracker, ShardIndex, ShardSource, WeightSet, load_weights,
};
use serde_json::{Value, json};

/// A loaded model: its weights on the device and what its index says about it.
pub struct LoadedModel {
    pub index: ShardIndex,
    pub weights: WeightSet,
}

/// One model's slot. The state lives behind a lock that is only held to read or swap small
/// values, so health checks never wait on loading.
pub struct ModelSlot {
    pub id: String,
    pub dir: PathBuf,
    /// For the three shard sets of a converted shape model: the model's folder name and which
    /// part this is (`conditioner`, `denoiser`, `vae`).
    pub part_of: Option<(String, &'static str)>,
    /// The precision its index states (read when discovered; `None` when it could not be).
    pub precision: Option<Precision>,
    pub state: RwLock<ModelState<Arc<LoadedModel>>>,
    /// A retry of this model is under way (so two retries do not load it twice).
    retrying: AtomicBool,
    /// When a retry last started loading it (retries are spaced by [`Loader::retry_interval`]).
    retried_at: std::sync::Mutex<Option<std::time::Instant>>,
}

impl ModelSlot {
    fn new(id: String, dir: PathBuf, part_of: Option<(String, &'static str)>) -> Self {
        Self {
            state: RwLock::new(ModelState::new(id.clone())),
            retrying: AtomicBool::new(false),
            retried_at: std::sync::Mutex::new(None),
            precision: None,
            id,
            dir,
            part_of,
        }
    }

    /// The loaded model, when ready.
    pub fn loaded(&self) -> Option<Arc<LoadedModel>> {
        self.state
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get()
            .ok()
    }
}

/// The original studio's aggregate: `loading` while any model loads, `ready` when all are,
/// `not_ready` otherwise (a failure, or no models at all).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Aggregate {
    Loading,
    Ready,
    NotReady,
}

impl Aggregate {
    pub fn name(self) -> &'static str {
        match self {
            Aggregate::Loading => "loading",
            Aggregate::Ready => "ready",
            Aggregate::NotReady => "not_ready",
        }
    }
}

pub struct Models {
    pub slots: Vec<ModelSlot>,
    /// Each shape model with every precision it is installed at, and which one loads.
    pub shapes: Vec<ShapeModelChoice>,
    /// Stand-alone sets installed beside a precision sibling that loads instead (e.g.
    /// `isnet-medium-q8` beside `isnet-medium`): not loaded, listed for the app it serves.
    pub siblings: Vec<Sibling>,
}

/// A stand-alone set not loaded because another precision of the same model is.
#[derive(Debug, Clone)]
pub struct Sibling {
    pub id: String,
    pub precision: Precision,
    pub bytes: u64,
    /// The id of the set that loads in its place.
    pub instead_of: String,
}

/// Which installed precision of a shape model `orfeas serve` loads.
#[derive(Debug, Clone, Default)]
pub struct PrecisionChoice {
    /// `--quant`: this one (a shape model without it is an error at start).
    pub precision: Option<Precision>,
    /// The device, for the default: the finest precision that fits it ([`Prefer::Finest`]);
    /// without it, the finest installed.
    pub fit: Option<(Capacity, DType)>,
}

/// A shape model at one precision: a folder with its three shard sets.
#[derive(Debug, Clone)]
pub struct ShapeInstall {
    pub folder: String,
    pub dir: PathBuf,
    /// What its indexes say (the narrowest of the three); `None` when one cannot be read (the
    /// load then says why).
    pub precision: Option<Precision>,
    /// Its download: the three sets' shard files.
    pub bytes: u64,
    /// Per part (in [`COMPONENTS`] order), its shard files' bytes.
    pub part_bytes: [u64; 3],
    indexes: Option<Vec<ShardIndex>>,
}

impl ShapeInstall {
    fn read(folder: String, dir: PathBuf) -> Self {
        let indexes: Option<Vec<ShardIndex>> = COMPONENTS
            .iter()
            .map(|part| read_index_file(&dir.join(part)).ok())
            .collect();
        let part_bytes = indexes.as_ref().map_or([0; 3], |indexes| {
            [0, 1, 2].map(|i| indexes[i].total_bytes())
        });
        let precision = indexes.as_ref().map(|indexes| {
            Precision::narrowest(indexes.iter().map(ShardIndex::precision))
                .unwrap_or(Precision::F16)
        });
        if let (Some(found), (_, Some(named))) = (precision, precision_of_folder(&folder))
            && found != named
        {
            tracing::warn!(
                "{}: the folder's name says {named}, its sets are {found}",
                dir.display()
            );
        }
        Self {
            folder,
            dir,
            precision,
            bytes: part_bytes.iter().sum(),
            part_bytes,
            indexes,
        }
    }

    pub fn precision_name(&self) -> &'static str {
        self.precision.map_or("unreadable", |p| p.name())
    }
}

/// A shape model's installed precisions and the one loaded.
#[derive(Debug, Clone)]
pub struct ShapeModelChoice {
    /// The model's name (its folders' without a precision suffix).
    pub name: String,
    pub installed: Vec<ShapeInstall>,
    /// The one loaded (an index into `installed`).
    pub chosen: usize,
    /// Why that one, in words (health says it).
    pub because: String,
}

impl ShapeModelChoice {
    fn choose(&mut self, choice: &PrecisionChoice) -> anyhow::Result<()> {
        if let Some(wanted) = choice.precision {
            let Some(at) = self
                .installed
                .iter()
                .position(|i| i.precision == Some(wanted))
            else {
                let installed: Vec<String> = self
                    .installed
                    .iter()
                    .map(|i| format!("{} in {}", i.precision_name(), i.folder))
                    .collect();
                anyhow::bail!(
                    "--quant {wanted}: shape model {} has no {wanted} set installed (it has {}); \
                     write one with `orfeas quantize {} {}-{wanted} --quant {wanted}`",
                    self.name,
                    installed.join(", "),
                    self.installed[0].folder,
                    self.name
                );
            };
            self.chosen = at;
            self.because = format!("--quant {wanted}");
            return Ok(());
        }
        let options: Vec<Installed> = self
            .installed
            .iter()
            .map(|install| Installed {
                precision: install.precision.unwrap_or(Precision::F16),
                bytes: install.bytes,
                fits: match (&install.indexes, &choice.fit) {
                    (Some(indexes), Some((capacity, dtype))) => orfeas_engine::fit::check(
                        &self.name,
                        &Footprint::of(&indexes.iter().collect::<Vec<_>>()),
                        capacity,
                        *dtype,
                    )
                    .is_ok(),
                    (Some(_), None) => true,
                    (None, _) => false,
                },
            })
            .collect();
        self.chosen = choose(&options, Prefer::Finest).unwrap_or(0);
        self.because = match (self.installed.len(), options[self.chosen].fits) {
            (1, _) => "the only precision installed".into(),
            (_, true) => "the finest installed precision that fits this device".into(),
            (_, false) => "none installed fits this device: the smallest".into(),
        };
        Ok(())
    }

    /// For health: the one loaded, why, and every installed precision with its size.
    pub fn describe(&self) -> Value {
        let chosen = &self.installed[self.chosen];
        json!({
            "name": self.name,
            "folder": chosen.folder,
            "precision": chosen.precision_name(),
            "because": self.because,
            "installed": self.installed.iter().map(|i| json!({
                "folder": i.folder,
                "precision": i.precision_name(),
                "bytes": i.bytes,
            })).collect::<Vec<_>>(),
        })
    }
}

fn read_index_file(dir: &Path) -> Result<ShardIndex, String> {
    let bytes =
        std::fs::read(dir.join(INDEX_FILE)).map_err(|e| format!("{}: {e}", dir.display()))?;
    ShardIndex::from_json(&bytes).map_err(|e| e.to_string())
}

impl Models {
    /// Whether `slot`'s model (a shape model's three sets together) fits `capacity` in the
    /// dtype the device computes in; the reason when not.
    pub fn fits(&self, slot: &ModelSlot, capacity: &Capacity, dtype: DType) -> Result<(), String> {
        let group: Vec<&ModelSlot> = match &slot.part_of {
            None => vec![slot],
            Some((name, _)) => self
                .slots
                .iter()
                .filter(|s| s.part_of.as_ref().is_some_and(|(n, _)| n == name))
                .collect(),
        };
        let indexes = group
            .iter()
            .map(|s| read_index_file(&s.dir))
            .collect::<Result<Vec<_>, _>>()?;
        let name = match &slot.part_of {
            Some((name, _)) => {
                orfeas_engine::fit::model_name(name, &indexes.iter().collect::<Vec<_>>())
            }
            None => slot.id.clone(),
        };
        let footprint = Footprint::of(&indexes.iter().collect::<Vec<_>>());
        orfeas_engine::fit::check(&name, &footprint, capacity, dtype)
    }

    /// The models under `root`, each installed precision of a shape model loaded or not by
    /// [`PrecisionChoice::default`]'s rule (see [`Models::discover_with`]).
    pub fn discover(root: Option<&Path>) -> anyhow::Result<Self> {
        Self::discover_with(root, &PrecisionChoice::default())
    }

    /// The models under `root`: every sub-folder holding a shard-set index is one (its folder
    /// name is its id), and every sub-folder holding `conditioner/`, `denoiser/` and `vae/`
    /// shard sets (what `orfeas convert` writes) is a shape model of three (`<folder>/<part>`).
    /// A shape model installed at several precisions (`<name>`, `<name>-q8`, `<name>-q4`: see
    /// [`precision_of_folder`]) loads one of them, as `choice` says; the others are listed
    /// (health, `/orfeas.json`) for the app, which chooses for its own GPU. Smaller sets load
    /// first, so background removal is ready before the shape model.
    pub fn discover_with(root: Option<&Path>, choice: &PrecisionChoice) -> anyhow::Result<Self> {
        let mut slots = Vec::new();
        let mut shapes: Vec<ShapeModelChoice> = Vec::new();
        if let Some(root) = root {
            let mut dirs: Vec<PathBuf> = std::fs::read_dir(root)
                .map_err(|e| anyhow::anyhow!("--models {}: {e}", root.display()))?
                .filter_map(|entry| entry.ok().map(|e| e.path()))
                .filter(|path| path.is_dir())
                .collect();
            dirs.sort();
            for dir in dirs {
                let name = dir
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default();
                if dir.join(INDEX_FILE).is_file() {
                    slots.push(ModelSlot::new(name, dir, None));
                } else if COMPONENTS
                    .iter()
                    .all(|c| dir.join(c).join(INDEX_FILE).is_file())
                {
                    let install = ShapeInstall::read(name, dir);
                    let model = precision_of_folder(&install.folder).0.to_string();
                    match shapes.iter_mut().find(|s| s.name == model) {
                        Some(shape) => shape.installed.push(install),
                        None => shapes.push(ShapeModelChoice {
                            name: model,
                            installed: vec![install],
                            chosen: 0,
                            because: String::new(),
                        }),
                    }
                }
            }
        }
        for shape in &mut shapes {
            shape.choose(choice)?;
            let install = &shape.installed[shape.chosen];
            tracing::info!(
                "shape model {}: loading {} ({}): {}",
                shape.name,
                install.folder,
                install.precision_name(),
                shape.because
            );
            for part in COMPONENTS {
                slots.push(ModelSlot::new(
                    format!("{}/{part}", install.folder),
                    install.dir.join(part),
                    Some((install.folder.clone(), part)),
                ));
            }
        }
        let mut sizes = std::collections::HashMap::new();
        for slot in &mut slots {
            let index = read_index_file(&slot.dir).ok();
            slot.precision = index.as_ref().map(|i| i.precision());
            sizes.insert(slot.id.clone(), index.map_or(u64::MAX, |i| i.total_bytes()));
        }
        let siblings = Self::one_precision_each(&mut slots, &sizes);
        // A shape model's parts stay together, in their order, after the stand-alone sets.
        slots.sort_by_key(|slot| match &slot.part_of {
            None => (0, sizes[&slot.id], String::new()),
            Some((name, _)) => (1, 0, name.clone()),
        });
        Ok(Self {
            slots,
            shapes,
            siblings,
        })
    }

    /// Of stand-alone sets that are precisions of one model (sibling folders, as for shape
    /// models), keep the finest readable one in `slots` (this server reads its own disk; these
    /// sets are small) and return the others: the app this server hosts picks for itself.
    fn one_precision_each(
        slots: &mut Vec<ModelSlot>,
        sizes: &std::collections::HashMap<String, u64>,
    ) -> Vec<Sibling> {
        let base = |slot: &ModelSlot| precision_of_folder(&slot.id).0.to_string();
        let mut siblings = Vec::new();
        let names: Vec<String> = slots
            .iter()
            .filter(|s| s.part_of.is_none())
            .map(base)
            .collect();
        for name in names {
            let group: Vec<usize> = (0..slots.len())
                .filter(|&i| slots[i].part_of.is_none() && base(&slots[i]) == name)
                .collect();
            let readable: Vec<usize> = group
                .iter()
                .copied()
                .filter(|&i| slots[i].precision.is_some())
                .collect();
            if group.len() < 2 || readable.is_empty() {
                continue;
            }
            let options: Vec<Installed> = readable
                .iter()
                .map(|&i| Installed {
                    precision: slots[i].precision.expect("readable"),
                    bytes: sizes[&slots[i].id],
                    fits: true,
                })
                .collect();
            let keep = readable[choose(&options, Prefer::Finest).unwrap_or(0)];
            let kept = slots[keep].id.clone();
            let others: Vec<Sibling> = readable
                .iter()
                .filter(|&&i| i != keep)
                .map(|&i| Sibling {
                    id: slots[i].id.clone(),
                    precision: slots[i].precision.expect("readable"),
                    bytes: sizes[&slots[i].id],
                    instead_of: kept.clone(),
                })
                .collect();
            slots.retain(|slot| !others.iter().any(|o| o.id == slot.id));
            tracing::info!(
                "{name}: loading {kept}, the finest precision installed; also installed: {}",
                others
                    .iter()
                    .map(|s| format!("{} ({})", s.id, s.precision))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            siblings.extend(others);
        }
        siblings
    }

    /// The first shape model's three slots, in [`COMPONENTS`] order.
    pub fn shape_model(&self) -> Option<[&ModelSlot; 3]> {
        let first = self.slots.iter().find_map(|s| s.part_of.as_ref())?;
        let part = |wanted: &str| {
            self.slots.iter().find(|s| {
                s.part_of
                    .as_ref()
                    .is_some_and(|(name, p)| *name == first.0 && *p == wanted)
            })
        };
        Some([
            part(COMPONENTS[0])?,
            part(COMPONENTS[1])?,
            part(COMPONENTS[2])?,
        ])
    }

    /// The background-removal model (a set whose id, or index model id, starts with `isnet`).
    pub fn isnet(&self) -> Option<&ModelSlot> {
        self.slots.iter().find(|slot| {
            slot.part_of.is_none()
                && (slot.id.starts_with("isnet")
                    || slot
                        .loaded()
                        .is_some_and(|m| m.index.model.id.starts_with("isnet")))
        })
    }

    pub fn aggregate(&self) -> Aggregate {
        let statuses: Vec<ModelStatus> = self
            .slots
            .iter()
            .map(|s| {
                s.state
                    .read()
                    .unwrap_or_else(|e| e.into_inner())
                    .status()
                    .clone()
            })
            .collect();
        if statuses.is_empty() {
            return Aggregate::NotReady;
        }
        if statuses.iter().all(|s| matches!(s, ModelStatus::Ready)) {
            return Aggregate::Ready;
        }
        if statuses
            .iter()
            .any(|s| matches!(s, ModelStatus::Loading { .. } | ModelStatus::NotLoaded))
            && !statuses
                .iter()
                .any(|s| matches!(s, ModelStatus::Failed { .. }))
        {
            return Aggregate::Loading;
        }
        Aggregate::NotReady
    }

    /// Why a generation cannot run now, if it cannot: the most telling model's [`NotReady`].
    pub fn not_ready(&self) -> Option<NotReady> {
        if self.slots.is_empty() {
            return Some(NotReady {
                model: "(none)".into(),
                kind: NotReadyKind::NotReady,
                retry_after_s: 0,
                message: "no models: start the server with --models <dir>".into(),
            });
        }
        let mut loading: Option<NotReady> = None;
        for slot in &self.slots {
            let state = slot.state.read().unwrap_or_else(|e| e.into_inner());
            let result = match state.status() {
                // Not picked up by the loading thread yet: as good as loading.
                ModelStatus::NotLoaded => Err(NotReady {
                    model: slot.id.clone(),
                    kind: NotReadyKind::Loading,
                    retry_after_s: orfeas_engine::weights::status::RETRY_AFTER_DEFAULT_S,
                    message: "waiting to load".into(),
                }),
                _ => state.get().map(|_| ()),
            };
            if let Err(not_ready) = result {
                match not_ready.kind {
                    NotReadyKind::NotReady => return Some(not_ready),
                    NotReadyKind::Loading => {
                        // Wait for the slowest.
                        if loading
                            .as_ref()
                            .is_none_or(|l| l.retry_after_s < not_ready.retry_after_s)
                        {
                            loading = Some(not_ready);
                        }
                    }
                }
            }
        }
        loading
    }

    /// Per-model detail for `/api/health`.
    pub fn describe(&self) -> Value {
        let models: Vec<Value> = self
            .slots
            .iter()
            .map(|slot| {
                let state = slot.state.read().unwrap_or_else(|e| e.into_inner());
                let mut entry = json!({ "id": slot.id, "status": state.status().name() });
                if let Some(precision) = slot.precision {
                    entry["precision"] = json!(precision.name());
                }
                match state.status() {
                    ModelStatus::Loading { progress } => {
                        entry["progress"] = json!({
                            "phase": progress.phase.name(),
                            "bytes_done": progress.bytes_done,
                            "bytes_total": progress.bytes_total,
                            "percent": (progress.fraction() * 1000.0).round() / 10.0,
                            "bytes_per_sec": progress.bytes_per_sec.round(),
                            "eta_s": progress.eta_s.map(|e| (e * 10.0).round() / 10.0),
                            "retry_after": retry_after(progress),
                        });
                    }
                    ModelStatus::Failed { reason } => entry["error"] = json!(reason),
                    ModelStatus::Ready => {
                        if let Ok(model) = state.get() {
                            entry["info"] = info(&model.index, model.weights.len());
                        }
                    }
                    ModelStatus::NotLoaded => {}
                }
                entry
            })
            .collect();
        json!(models)
    }

    /// The original `processor` field: model information once ready, `{}` before.
    pub fn processor(&self) -> Value {
        if self.aggregate() != Aggregate::Ready {
            return json!({});
        }
        let mut processor = serde_json::Map::new();
        for slot in &self.slots {
            if let Ok(model) = slot.state.read().unwrap_or_else(|e| e.into_inner()).get() {
                processor.insert(slot.id.clone(), info(&model.index, model.weights.len()));
            }
        }
        Value::Object(processor)
    }
}

fn info(index: &ShardIndex, tensors: usize) -> Value {
    json!({
        "model_id": index.model.id,
        "version": index.model.version,
        "precision": index.precision().name(),
        "bytes": index.total_bytes(),
        "tensors": tensors,
        "shards": index.shards.len(),
    })
}

/// What loading needs: the device, the dtype it computes in, what fits on it, and the demo
/// and test brakes (a read throttle in bytes/s, a file whose presence holds loading).
#[derive(Clone)]
pub struct Loader {
    pub device: Device,
    pub dtype: DType,
    pub capacity: Capacity,
    pub throttle: Option<u64>,
    /// While this file exists, no shard is read (indexes are): a server that is certainly
    /// still loading, for as long as a test (or a demo) needs, without guessing at speeds.
    pub hold_while: Option<std::path::PathBuf>,
    /// A failed model is reloaded at most once in this long, however often retry is asked
    /// (each reload reads the whole model again).
    pub retry_interval: std::time::Duration,
}

/// The default spacing of retries of one model.
pub const RETRY_INTERVAL: std::time::Duration = std::time::Duration::from_secs(10);

impl Loader {
    pub fn new(device: Device, dtype: DType, capacity: Capacity) -> Loader {
        Loader {
            device,
            dtype,
            capacity,
            throttle: None,
            hold_while: None,
            retry_interval: RETRY_INTERVAL,
        }
    }
}

/// Load every model, one after another, on a thread of its own (loading is CPU work: it must
/// not slow the threads that answer requests).
pub fn load_in_background(models: Arc<Models>, loader: Loader) -> std::thread::JoinHandle<()> {
    let all = (0..models.slots.len()).collect();
    spawn_loading(models, loader, all)
}

/// What a retry did.
#[derive(Debug, PartialEq, Eq)]
pub enum Retry {
    /// These models are loading again.
    Started(Vec<String>),
    /// None of the models asked for has failed (they load, are ready, or are being retried).
    NothingFailed,
    /// No model has that name.
    Unknown,
    /// The failed models asked for were retried less than the retry interval ago: not before
    /// this many seconds.
    TooSoon { retry_after_s: u64 },
}

impl Models {
    /// Load the failed models again — all, or the one named (a model's id, or a shape model's
    /// name for its failed parts) — on a thread of their own: a shard replaced on disk, a
    /// loader that crashed, a device with room again. Nothing is restarted.
    pub fn retry(self: &Arc<Self>, loader: &Loader, model: Option<&str>) -> Retry {
        let named: Vec<usize> = (0..self.slots.len())
            .filter(|&i| {
                let slot = &self.slots[i];
                model.is_none_or(|m| {
                    slot.id == m || slot.part_of.as_ref().is_some_and(|(name, _)| name == m)
                })
            })
            .collect();
        if named.is_empty() {
            return Retry::Unknown;
        }
        let now = std::time::Instant::now();
        let mut wait = None::<std::time::Duration>;
        let chosen: Vec<usize> = named
            .into_iter()
            .filter(|&i| {
                let slot = &self.slots[i];
                let mut state = slot.state.write().unwrap_or_else(|e| e.into_inner());
                if !matches!(state.status(), ModelStatus::Failed { .. }) {
                    return false;
                }
                let mut retried_at = slot.retried_at.lock().unwrap_or_else(|e| e.into_inner());
                if let Some(at) = *retried_at {
                    let next = at + loader.retry_interval;
                    if next > now {
                        let left = next - now;
                        wait = Some(wait.map_or(left, |w| w.min(left)));
                        return false;
                    }
                }
                if slot.retrying.swap(true, Ordering::SeqCst) {
                    return false;
                }
                *retried_at = Some(now);
                // Loading from now on, so health never shows the old failure after a retry.
                let _ = state.start_loading(LoadProgress::new(&slot.id, 0, 0, 0));
                true
            })
            .collect();
        if chosen.is_empty() {
            return match wait {
                Some(left) => Retry::TooSoon {
                    retry_after_s: left.as_secs_f64().ceil().max(1.0) as u64,
                },
                None => Retry::NothingFailed,
            };
        }
        let ids = chosen.iter().map(|&i| self.slots[i].id.clone()).collect();
        spawn_loading(self.clone(), loader.clone(), chosen);
        Retry::Started(ids)
    }
}

/// Load the slots `which` (indexes), one after another, on a thread of its own.
fn spawn_loading(
    models: Arc<Models>,
    loader: Loader,
    which: Vec<usize>,
) -> std::thread::JoinHandle<()> {
    std::thread::Builder::new()
        .name("orfeas-load".into())
        .spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime for loading");
            // A model that cannot fit the device is refused before any shard is read (all of
            // them first, so health shows every refusal at once).
            let refused: Vec<bool> = which
                .iter()
                .map(|&i| {
                    let slot = &models.slots[i];
                    match models.fits(slot, &loader.capacity, loader.dtype) {
                        Ok(()) => false,
                        Err(reason) => {
                            let mut state = slot.state.write().unwrap_or_else(|e| e.into_inner());
                            let _ = state.start_loading(LoadProgress::new(&slot.id, 0, 0, 0));
                            let _ = state.set_failed(reason.clone());
                            tracing::error!("model {}: {reason}", slot.id);
                            true
                        }
                    }
                })
                .collect();
            runtime.block_on(async {
                for (&i, refused) in which.iter().zip(refused) {
                    let slot = &models.slots[i];
                    if !refused {
                        let source = Braked {
                            inner: DirSource::new(&slot.dir),
                            bytes_per_sec: loader.throttle,
                            hold_while: loader.hold_while.clone(),
                        };
                        load_guarded(slot, &source, &loader.device, loader.dtype).await;
                    }
                    slot.retrying.store(false, Ordering::SeqCst);
                }
            });
        })
        .expect("spawning the loading thread")
}

/// [`load_one`], with a loader that panics failing its model (with the panic's message; a
/// retry stays possible) instead of ending the loading thread with the others still to load.
async fn load_guarded<S: ShardSource>(slot: &ModelSlot, source: &S, device: &Device, dtype: DType) {
    let load = AssertUnwindSafe(load_one(slot, source, device, dtype));
    if let Err(panic) = load.catch_unwind().await {
        let message = panic
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "a panic without a message".into());
        tracing::error!("model {}: loading crashed: {message}", slot.id);
        let mut state = slot.state.write().unwrap_or_else(|e| e.into_inner());
        if !matches!(state.status(), ModelStatus::Loading { .. }) {
            let _ = state.start_loading(LoadProgress::new(&slot.id, 0, 0, 0));
        }
        let _ = state.set_failed(format!("loading crashed: {message}"));
    }
}

async fn load_one<S: ShardSource>(slot: &ModelSlot, source: &S, device: &Device, dtype: DType) {
    let fail = |reason: String| {
        tracing::error!("model {}: {reason}", slot.id);
        // Health shows the model's id, not where it lives on this machine.
        let reason = reason.replace(&slot.dir.display().to_string(), &slot.id);
        let _ = slot
            .state
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .set_failed(reason);
    };
    let index = match read_index(source).await {
        Ok(index) => index,
        Err(e) => {
            // `failed` needs `loading` first: record the attempt, then its failure.
            let _ = slot
                .state
                .write()
                .unwrap_or_else(|e| e.into_inner())
                .start_loading(LoadProgress::new(&slot.id, 0, 0, 0));
            return fail(e.to_string());
        }
    };
    let progress = initial_progress(&index);
    let started = {
        let mut state = slot.state.write().unwrap_or_else(|e| e.into_inner());
        if matches!(state.status(), ModelStatus::Loading { .. }) {
            // A retry marked it loading already.
            state.update_progress(&progress)
        } else {
            state.start_loading(progress)
        }
    };
    if let Err(e) = started {
        return fail(e.to_string());
    }
    let mut last_log = std::time::Instant::now();
    let mut tracker = ProgressTracker::new(initial_progress(&index), |p: &LoadProgress| {
        let _ = slot
            .state
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .update_progress(p);
        if last_log.elapsed() > Duration::from_secs(2) || p.phase == Phase::Ready {
            last_log = std::time::Instant::now();
            tracing::info!(
                "model {}: {} {:.0}% ({} / {} bytes)",
                slot.id,
                p.phase.name(),
                p.fraction() * 100.0,
                p.bytes_done,
                p.bytes_total
            );
        }
    });
    let mut weights = WeightSet::new();
    match load_weights(source, &index, device, dtype, &mut weights, &mut tracker).await {
        Ok(()) => {
            drop(tracker);
            tracing::info!("model {}: ready ({} tensors)", slot.id, weights.len());
            let model = Arc::new(LoadedModel { index, weights });
            let _ = slot
                .state
                .write()
                .unwrap_or_else(|e| e.into_inner())
                .set_ready(model);
        }
        Err(e) => {
            drop(tracker);
            fail(e.to_string());
        }
    }
}

/// A folder source slowed to `bytes_per_sec` (for demos and tests of the loading state: a
/// "slow disk" or a model far larger than the one at hand).
/// A model folder read with the [`Loader`]'s brakes on.
struct Braked {
    inner: DirSource,
    bytes_per_sec: Option<u64>,
    hold_while: Option<std::path::PathBuf>,
}

#[async_trait::async_trait]
impl ShardSource for Braked {
    async fn read_index(&self) -> Result<Vec<u8>, SourceError> {
        self.inner.read_index().await
    }

    async fn open_shard(&self, file: &str) -> Result<ByteStream, SourceError> {
        while self.hold_while.as_ref().is_some_and(|path| path.exists()) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let stream = self.inner.open_shard(file).await?;
        let Some(rate) = self.bytes_per_sec else {
            return Ok(stream);
        };
        // Small pieces, so progress moves smoothly at low rates.
        let pieces = stream.flat_map(|chunk: Result<Bytes, SourceError>| {
            let pieces: Vec<Result<Bytes, SourceError>> = match chunk {
                Ok(bytes) => (0..bytes.len())
                    .step_by(64 << 10)
                    .map(|at| Ok(bytes.slice(at..(at + (64 << 10)).min(bytes.len()))))
                    .collect(),
                Err(e) => vec![Err(e)],
            };
            futures::stream::iter(pieces)
        });
        Ok(boxed(pieces.then(
            move |chunk: Result<Bytes, SourceError>| async move {
                if let Ok(bytes) = &chunk {
                    let secs = bytes.len() as f64 / rate.max(1) as f64;
                    tokio::time::sleep(Duration::from_secs_f64(secs)).await;
                }
                chunk
            },
        )))
    }

    async fn is_cached(&self, file: &str) -> bool {
        self.inner.is_cached(file).await
    }

    fn describe(&self) -> String {
        self.inner.describe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A source whose index read panics, as a loader bug would.
    struct Panicking;

    #[async_trait::async_trait]
    impl ShardSource for Panicking {
        async fn read_index(&self) -> Result<Vec<u8>, SourceError> {
            panic!("index parser bug");
        }

        async fn open_shard(&self, _file: &str) -> Result<ByteStream, SourceError> {
            unreachable!()
        }

        fn describe(&self) -> String {
            "a panicking source".into()
        }
    }

    #[test]
    fn a_loader_that_panics_fails_its_model_with_the_message() {
        let slot = ModelSlot::new("isnet".into(), PathBuf::from("/nowhere"), None);
        let device = orfeas_engine::device::cpu();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        runtime.block_on(load_guarded(&slot, &Panicking, &device, DType::F32));
        let state = slot.state.read().unwrap();
        match state.status() {
            ModelStatus::Failed { reason } => {
                assert!(
                    reason.contains("loading crashed: index parser bug"),
                    "{reason}"
                )
            }
            other => panic!("expected failed, got {other:?}"),
        }
        // ... and may be retried: failed → loading is a valid transition.
        drop(state);
        let mut state = slot.state.write().unwrap();
        assert!(
            state
                .start_loading(LoadProgress::new("isnet", 0, 0, 0))
                .is_ok()
        );
    }
}
