//! Background removal in the worker: ISNet is built as soon as its weights are on the GPU, and
//! every image the user picks gets its cut-out then (or at once, when ISNet is ready first).

use std::rc::Rc;

use orfeas_engine::background::{has_alpha, remove_background};
use orfeas_engine::models::isnet::IsNet;
use wasm_bindgen_futures::spawn_local;

use super::outbox::{cutout_report as report, post_cutout};
use super::{Engine, post};
use crate::protocol::{CutoutState, ModelStatusReport};

/// Build ISNet from slot `i`'s weights; a set whose tensors do not fit the network fails the
/// model with the reason.
pub(super) fn adopt(engine: &Engine, i: usize) -> Result<(), String> {
    let (weights, id) = {
        let slots = engine.models.borrow();
        let slot = &slots[i];
        (slot.weights.clone(), slot.spec.id.clone())
    };
    let device = engine.device()?;
    let Some(weights) = weights else {
        return Err(format!("{id} is not loaded"));
    };
    let model = IsNet::from_weights(weights, &device)
        .map_err(|e| format!("{id} does not fit ISNet: {e}"))?;
    *engine.isnet.borrow_mut() = Some(Rc::new(model));
    Ok(())
}

/// Cut out the current image if background removal can run now; otherwise say what it waits for.
pub(super) fn request(engine: &Rc<Engine>) {
    let Some((name, image)) = engine.image.borrow().clone() else {
        return;
    };
    let generation = engine.cutout_generation.get() + 1;
    engine.cutout_generation.set(generation);
    engine.cutout.borrow_mut().take();
    if has_alpha(&image) {
        engine.cutout.replace(Some(image.clone()));
        let message = "the image already has transparency: used as it is".to_string();
        post_cutout(&name, CutoutState::Kept, message, &image);
        return;
    }
    let Some(model) = engine.isnet.borrow().clone() else {
        let background = engine.roles.borrow().background;
        let isnet_status = background.map(|i| {
            let slots = engine.models.borrow();
            (slots[i].spec.label.clone(), slots[i].status.clone())
        });
        let message = match isnet_status {
            None => report(
                &name,
                CutoutState::Failed,
                "no background-removal model is configured",
            ),
            Some((label, ModelStatusReport::Failed { reason })) => report(
                &name,
                CutoutState::Failed,
                format!("{label} failed to load ({reason}): retry it on its panel"),
            ),
            Some((label, _)) => report(
                &name,
                CutoutState::Waiting,
                format!("the cut-out follows when {label} is ready"),
            ),
        };
        post(&message);
        return;
    };
    let Ok(device) = engine.device() else {
        return;
    };
    let options = engine.options.borrow().background_options();
    post(&report(
        &name,
        CutoutState::Running,
        "removing the background…",
    ));
    let engine = engine.clone();
    spawn_local(async move {
        let started = web_time::Instant::now();
        let result = remove_background(&model, &image, &device, &options).await;
        if engine.cutout_generation.get() != generation {
            return; // the user picked another image meanwhile
        }
        match result {
            Ok(cut) => {
                let fit = if options.letterbox {
                    "letterboxed"
                } else {
                    "stretched"
                };
                let message = format!(
                    "background removed in {:.1} s (ISNet at {}², {fit})",
                    started.elapsed().as_secs_f64(),
                    options.size
                );
                engine.cutout.replace(Some(cut.clone()));
                post_cutout(&name, CutoutState::Ready, message, &cut);
            }
            Err(e) => post(&report(&name, CutoutState::Failed, e.to_string())),
        }
    });
}
