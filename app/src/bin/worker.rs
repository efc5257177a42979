//! The engine bundle, run in a dedicated Web Worker by `app/worker.js`, which downloads this
//! wasm with progress and then hands every message from the UI to [`on_message`].

#[cfg(target_arch = "wasm32")]
mod exports {
    use orfeas_app::protocol::FromWorker;
    use orfeas_app::worker;
    use wasm_bindgen::prelude::*;

    /// Called by the bootstrap script for each message from the UI (a JSON string).
    #[wasm_bindgen]
    pub fn on_message(json: &str) {
        worker::on_message(json);
    }

    /// Called by the bootstrap script with the bytes of an image the user chose, and which
    /// view of the object it is (`front` unless the user gave it as another view).
    #[wasm_bindgen]
    pub fn on_image(name: &str, bytes: &[u8], view: &str) {
        worker::on_image(name, bytes, view);
    }

    /// Current wasm memory size (benchmarks read it).
    #[wasm_bindgen]
    pub fn wasm_heap_bytes() -> f64 {
        worker::wasm_heap_bytes() as f64
    }

    /// A panic aborts the wasm instance: tell the UI why before that happens.
    pub fn install_panic_report() {
        std::panic::set_hook(Box::new(|info| {
            worker::post(&FromWorker::EngineFailed {
                reason: format!("engine crashed: {info}"),
            });
        }));
    }
}

fn main() {
    #[cfg(target_arch = "wasm32")]
    exports::install_panic_report();
}
