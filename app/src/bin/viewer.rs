//! The viewer bundle, run in a dedicated Web Worker by `app/viewer.js` with the page's canvas
//! transferred to it: wgpu on WebGPU, nothing else.

#[cfg(target_arch = "wasm32")]
mod exports {
    use orfeas_app::protocol::FromViewer;
    use orfeas_app::viewer::render::MeshData;
    use orfeas_app::viewer::runtime;
    use wasm_bindgen::prelude::*;

    /// Acquire the GPU for `canvas` and start drawing; resolves once ready (or failed).
    /// `direct`: present on the canvas's WebGPU context; else frames are read back and drawn
    /// by `orfeas_present` (defined by the bootstrap script).
    #[wasm_bindgen]
    pub async fn start(canvas: web_sys::OffscreenCanvas, direct: bool) {
        runtime::start(canvas, direct).await;
    }

    #[wasm_bindgen]
    pub fn on_message(json: &str) {
        runtime::on_message(json);
    }

    /// Show a mesh (flat arrays; `colors` RGBA per vertex or empty).
    #[wasm_bindgen]
    pub fn set_mesh(positions: Vec<f32>, normals: Vec<f32>, colors: Vec<u8>, indices: Vec<u32>) {
        runtime::set_mesh(MeshData {
            positions,
            normals,
            colors,
            indices,
        });
    }

    /// The current view: `{width, height, rgba}`.
    #[wasm_bindgen]
    pub async fn snapshot() -> Result<JsValue, JsValue> {
        let (width, height, rgba) = runtime::snapshot().await.map_err(JsValue::from)?;
        let out = js_sys::Object::new();
        let set = |k: &str, v: JsValue| js_sys::Reflect::set(&out, &JsValue::from_str(k), &v);
        set("width", width.into())?;
        set("height", height.into())?;
        set("rgba", js_sys::Uint8Array::from(rgba.as_slice()).into())?;
        Ok(out.into())
    }

    pub fn install_panic_report() {
        std::panic::set_hook(Box::new(|info| {
            runtime::post(&FromViewer::Failed {
                reason: format!("viewer crashed: {info}"),
                device_lost: false,
            });
        }));
    }
}

fn main() {
    #[cfg(target_arch = "wasm32")]
    exports::install_panic_report();
}
