//! Background removal in the worker: ISNet is built as soon as its weights are on its device,
//! and every image the user picks gets its cut-out then (or at once, when ISNet is ready
//! first). The run reports each ISNet stage as the device finishes it, with the time so far and
//! an estimate of what is left. Where the GPU is a software renderer, or there is no GPU at
//! all, ISNet runs on the CPU (burn's CPU backend), unless the page asks for the GPU
//! (`?background_device=gpu`: then at [`SOFTWARE_SIZE`]², unless the page asks for a size or
//! the user for the full one); a run a GPU reset cut short runs again once ISNet is back on the
//! new device (on the CPU a reset does not touch it).

use std::cell::{Cell, RefCell};
use std::rc::Rc;

use burn::tensor::Device;
use orfeas_engine::background::{Options, has_alpha, matte_reporting, remove_background_reporting};
use orfeas_engine::models::isnet::{INPUT_SIZE, IsNet};
use wasm_bindgen_futures::spawn_local;

use super::js::sleep_ms;
use super::outbox::{cutout_report as report, post_cutout, post_cutout_state};
use super::placement::{isnet_device, isnet_device_kind};
use super::{Engine, post};
use crate::protocol::{ComputeDevice, CutoutReport, CutoutState, FromWorker, ModelStatusReport};
use crate::text::time_so_far;

/// Background removal's state, changed only here; the others read ISNet and the cut-out
/// through its methods.
#[derive(Default)]
pub(super) struct BackgroundState {
    /// ISNet, once its weights are on its device (the GPU's current one, or the CPU: see
    /// [`isnet_device`]).
    isnet: RefCell<Option<Rc<IsNet>>>,
    /// Bumped per image, so a cut-out of an older image is not shown.
    generation: Cell<u64>,
    /// The current image's cut-out (the shape model's input).
    cutout: RefCell<Option<image::RgbaImage>>,
    /// The user asked for background removal at the reference's size on a slow adapter.
    full_size: Cell<bool>,
    /// A GPU reset cut the current cut-out short: its re-run says so.
    interrupted: Cell<bool>,
    /// ISNet's warm-up pass is running.
    warming: Cell<bool>,
}

impl BackgroundState {
    /// ISNet, when it is on its device.
    pub(super) fn isnet(&self) -> Option<Rc<IsNet>> {
        self.isnet.borrow().clone()
    }

    /// ISNet's device is gone: it is built again once its weights are back.
    pub(super) fn forget_isnet(&self) {
        self.isnet.borrow_mut().take();
    }

    /// The current image's cut-out, once made.
    pub(super) fn cutout(&self) -> Option<image::RgbaImage> {
        self.cutout.borrow().clone()
    }
}

/// ISNet's input side on a software adapter (a CPU rasteriser), when the page asks for ISNet
/// on it (`?background_device=gpu`): the full 1024² pass takes minutes there; this one tens of
/// seconds, at the IoU measured in docs/background-removal.md.
pub const SOFTWARE_SIZE: usize = 224;

/// Build ISNet from slot `i`'s weights; a set whose tensors do not fit the network fails the
/// model with the reason.
pub(super) fn adopt(engine: &Rc<Engine>, i: usize) -> Result<(), String> {
    let (weights, id) = engine.models.weights(i);
    let (device, _) = isnet_device(engine)?;
    let Some(weights) = weights else {
        return Err(format!("{id} is not loaded"));
    };
    let model = Rc::new(
        IsNet::from_weights(weights, &device)
            .map_err(|e| format!("{id} does not fit ISNet: {e}"))?,
    );
    *engine.background.isnet.borrow_mut() = Some(model.clone());
    // A picture already waiting is the first pass itself: no warm-up ahead of it. The CPU
    // compiles nothing at a first pass.
    let on_gpu = isnet_device_kind(engine) == ComputeDevice::Gpu;
    if on_gpu && engine.image.borrow().is_none() {
        warm_up(engine, model, device, id);
    }
    Ok(())
}

/// One pass on a blank picture at the size the user's pictures will run at, as soon as ISNet
/// is on the device: the first pass compiles the GPU kernels (on a software adapter it takes
/// about three times a later one), and it is better spent while the user picks a picture. A
/// picture picked meanwhile stops it at the end of its current stage (the kernels compiled so
/// far stay compiled) and runs next, saying why it waited.
fn warm_up(engine: &Rc<Engine>, model: Rc<IsNet>, device: Device, id: String) {
    // At the size the user's pictures will run at: the GPU kernels are compiled per shape (a
    // 64² warm-up left the first 224² pass as slow as without one, measured in bench-web).
    let (options, _) = options_for(engine);
    engine.background.warming.set(true);
    let engine = engine.clone();
    spawn_local(async move {
        let started = web_time::Instant::now();
        let blank = image::RgbaImage::from_pixel(64, 64, image::Rgba([128, 128, 128, 255]));
        // Going on while no picture needs ISNet (one with transparency is used as it is).
        let mut no_picture_yet = |_: f64| {
            engine
                .image
                .borrow()
                .as_ref()
                .is_none_or(|(_, picture)| has_alpha(picture))
        };
        let warmed =
            matte_reporting(&model, &blank, &device, &options, Some(&mut no_picture_yet)).await;
        engine.background.warming.set(false);
        if warmed.is_ok() {
            post(&FromWorker::Warmed {
                model: id,
                seconds: started.elapsed().as_secs_f64(),
            });
        }
    });
}

/// The options for the next cut-out, and whether they are below the reference's size because
/// ISNet runs on a software adapter (the page's `?background_size=` and the user's "full size"
/// win).
fn options_for(engine: &Engine) -> (Options, bool) {
    let mut options = engine.options.borrow().background_options();
    let chosen = engine.options.borrow().background_size.is_some();
    let reduced = !chosen
        && !engine.background.full_size.get()
        && engine.device.software_adapter()
        && isnet_device_kind(engine) == ComputeDevice::Gpu;
    if reduced {
        options.size = SOFTWARE_SIZE;
    }
    (options, reduced)
}

/// Cut out the current image if background removal can run now; otherwise say what it waits for.
pub(super) fn request(engine: &Rc<Engine>) {
    let Some((name, image)) = engine.image.borrow().clone() else {
        return;
    };
    let generation = engine.background.generation.get() + 1;
    engine.background.generation.set(generation);
    engine.background.cutout.borrow_mut().take();
    if has_alpha(&image) {
        engine.background.cutout.replace(Some(image.clone()));
        let message = "the image already has transparency: used as it is";
        post_cutout(report(&name, CutoutState::Kept, message), &image);
        return;
    }
    let Some(model) = engine.background.isnet() else {
        post_cutout_state(not_ready(engine, &name));
        return;
    };
    let Ok((device, _)) = isnet_device(engine) else {
        return;
    };
    let run = Run::new(engine, name, generation);
    run.report(format!("removing the background ({})…", run.setting()), 0.0);
    spawn_local(run.go(engine.clone(), model, image, device));
}

/// What the cut-out of `name` waits for (or why there is none) while ISNet is not ready.
fn not_ready(engine: &Engine, name: &str) -> CutoutReport {
    let isnet_status = engine
        .models
        .background()
        .map(|i| engine.models.label_and_status(i));
    match isnet_status {
        None => report(
            name,
            CutoutState::Failed,
            "no background-removal model is configured: the picture is used whole",
        ),
        Some((label, ModelStatusReport::NotInstalled { .. })) => report(
            name,
            CutoutState::Failed,
            format!("{label} is not installed: the picture is used whole"),
        ),
        Some((label, ModelStatusReport::Failed { reason })) => {
            let mut failed = report(
                name,
                CutoutState::Failed,
                format!("{label} failed to load: retry it on its panel"),
            );
            failed.detail = Some(reason);
            failed
        }
        Some((label, _)) if engine.device.rebuilding() => report(
            name,
            CutoutState::Waiting,
            format!("GPU reset: the cut-out follows when {label} is back"),
        ),
        Some((label, _)) => report(
            name,
            CutoutState::Waiting,
            format!("the cut-out follows when {label} is ready"),
        ),
    }
}

/// One cut-out of one image: how it runs, and what it reports as it goes.
struct Run {
    name: String,
    /// The image's generation (see [`BackgroundState`]): a run of a replaced image stops.
    generation: u64,
    /// The device's generation when the run began: a reset meanwhile is not a failure.
    device_generation: u32,
    kind: ComputeDevice,
    options: Options,
    /// Smaller than the reference's size (a slow adapter).
    reduced: bool,
    /// This run repeats one a GPU reset cut short.
    again: bool,
}

impl Run {
    fn new(engine: &Engine, name: String, generation: u64) -> Self {
        let (options, reduced) = options_for(engine);
        Self {
            name,
            generation,
            device_generation: engine.device.generation(),
            kind: isnet_device_kind(engine),
            options,
            reduced,
            again: engine.background.interrupted.take(),
        }
    }

    /// "ISNet at 1024²", "ISNet at 1024² on the CPU".
    fn setting(&self) -> String {
        let on = match self.kind {
            ComputeDevice::Cpu => " on the CPU",
            ComputeDevice::Gpu => "",
        };
        format!("ISNet at {}²{on}", self.options.size)
    }

    /// The image was replaced meanwhile.
    fn superseded(&self, engine: &Engine) -> bool {
        engine.background.generation.get() != self.generation
    }

    /// Running: `what` it is doing, the share `done`.
    fn report(&self, what: String, done: f64) {
        let again = if self.again {
            "GPU reset — running again: "
        } else {
            ""
        };
        let mut running = report(&self.name, CutoutState::Running, format!("{again}{what}"));
        running.progress = Some(done);
        running.reduced = self.reduced;
        running.device = Some(self.kind);
        post_cutout_state(running);
    }

    /// The run: after ISNet's warm-up if it is still going, each stage reported as the device
    /// finishes it, then the cut-out or why there is none.
    async fn go(
        self,
        engine: Rc<Engine>,
        model: Rc<IsNet>,
        image: image::RgbaImage,
        device: Device,
    ) {
        if engine.background.warming.get() {
            let what = "preparing background removal for this GPU (its first run compiles the \
                        GPU code)…";
            self.report(what.into(), 0.0);
            while engine.background.warming.get() {
                sleep_ms(100).await;
            }
            if self.superseded(&engine) {
                return;
            }
        }
        let started = web_time::Instant::now();
        // A run whose picture was replaced stops at the end of its current stage.
        let mut on_progress = |done: f64| {
            if self.superseded(&engine) {
                return false;
            }
            // What is left, at the pace so far.
            let elapsed = started.elapsed().as_secs_f64();
            let left = (done > 0.0).then(|| elapsed * (1.0 - done) / done);
            let what = format!(
                "removing the background ({}): {:.0} % · {}",
                self.setting(),
                done * 100.0,
                time_so_far(elapsed, left)
            );
            self.report(what, done);
            true
        };
        let result =
            remove_background_reporting(&model, &image, &device, &self.options, &mut on_progress)
                .await;
        if self.superseded(&engine) {
            return; // the user picked another image meanwhile
        }
        match result {
            Ok(cut) => {
                let message = self.finished(&engine, started.elapsed().as_secs_f64());
                engine.background.cutout.replace(Some(cut.clone()));
                let mut done = report(&self.name, CutoutState::Ready, message);
                done.reduced = self.reduced;
                done.device = Some(self.kind);
                post_cutout(done, &cut);
            }
            Err(e) => self.failed(&engine, e.to_string()).await,
        }
    }

    /// "background removed in 2.1 s (ISNet at 224², stretched); smaller than the reference's
    /// 1024² because this GPU is a software renderer".
    fn finished(&self, engine: &Engine, seconds: f64) -> String {
        let fit = if self.options.letterbox {
            "letterboxed"
        } else {
            "stretched"
        };
        let mut message = format!(
            "background removed in {seconds:.1} s ({}, {fit})",
            self.setting()
        );
        let why = match self.kind {
            ComputeDevice::Cpu => Some("on the CPU".to_string()),
            ComputeDevice::Gpu if self.reduced => {
                Some(format!("smaller than the reference's {INPUT_SIZE}²"))
            }
            ComputeDevice::Gpu => None,
        };
        let because = if engine.device.no_gpu_at_start() {
            Some("this page has no WebGPU")
        } else if engine.device.software_adapter() {
            Some("this GPU is a software renderer")
        } else {
            None
        };
        if let (Some(why), Some(because)) = (why, because) {
            message.push_str(&format!("; {why} because {because}"));
        }
        message
    }

    /// The run failed: a GPU reset (it runs again once ISNet is back), or a real failure.
    async fn failed(&self, engine: &Engine, error: String) {
        // A lost device fails the run before its loss is reported: give the report a moment
        // to arrive, so a reset is told apart from a real failure.
        sleep_ms(200).await;
        if self.superseded(engine) {
            return; // ISNet came back on a new device and the cut-out runs there
        }
        let reset = self.kind == ComputeDevice::Gpu
            && (engine.device.generation() != self.device_generation || engine.device.rebuilding());
        let mut failed = if reset {
            engine.background.interrupted.set(true);
            report(
                &self.name,
                CutoutState::Waiting,
                "GPU reset — running again once background removal is back on the GPU",
            )
        } else {
            report(&self.name, CutoutState::Failed, "background removal failed")
        };
        failed.detail = Some(error);
        post_cutout_state(failed);
    }
}

/// The user asked for the reference's full size: keep it, and cut the current image again.
pub(super) fn full_size(engine: &Rc<Engine>) {
    engine.background.full_size.set(true);
    request(engine);
}
