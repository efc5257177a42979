//! Everything the worker sends to the UI: JSON messages, and the bulk ones (meshes, cut-outs)
//! whose typed arrays are transferred rather than copied (see [`crate::protocol::bulk`]).

use image::RgbaImage;
use orfeas_engine::mesh::Mesh;
use orfeas_engine::mesh::export::{
    to_glb_colored, to_obj_colored, to_ply_colored, to_stl, vertex_normals,
};
use wasm_bindgen::{JsCast, JsValue};

use crate::protocol::{CutoutReport, CutoutState, FromWorker, MeshMeta, bulk};

fn scope() -> web_sys::DedicatedWorkerGlobalScope {
    js_sys::global().unchecked_into()
}

/// Send a message to the UI thread.
pub fn post(message: &FromWorker) {
    let _ = scope().post_message(&JsValue::from_str(&message.to_json()));
}

/// Size of the wasm linear memory. It never shrinks, so at the end of a load it is the peak.
pub fn wasm_heap_bytes() -> u64 {
    let memory: js_sys::WebAssembly::Memory = wasm_bindgen::memory().unchecked_into();
    memory
        .buffer()
        .unchecked_into::<js_sys::ArrayBuffer>()
        .byte_length() as u64
}

/// Send a mesh with its exports as transferred typed arrays.
pub(super) fn post_mesh(meta: &MeshMeta, mesh: &Mesh, colors: Option<&[[u8; 3]]>) {
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
    let _ = scope().post_message_with_transfer(&message, &transfer);
}

/// A cut-out report for image `name` (no detail, progress or reduced size: set them after).
pub(super) fn cutout_report(
    name: &str,
    state: CutoutState,
    message: impl Into<String>,
) -> CutoutReport {
    CutoutReport {
        name: name.to_string(),
        state,
        message: message.into(),
        detail: None,
        progress: None,
        reduced: false,
        device: None,
    }
}

/// Send a cut-out's state.
pub(super) fn post_cutout_state(report: CutoutReport) {
    post(&FromWorker::Cutout(report));
}

/// Send a finished cut-out as a PNG beside its report.
pub(super) fn post_cutout(report: CutoutReport, image: &RgbaImage) {
    let mut png = Vec::new();
    if let Err(e) = image.write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png) {
        post_cutout_state(cutout_report(
            &report.name,
            CutoutState::Failed,
            format!("PNG encoding: {e}"),
        ));
        return;
    }
    let object = bulk::message(bulk::Kind::Cutout);
    let report = FromWorker::Cutout(report).to_json();
    bulk::set(&object, bulk::REPORT, &report.into());
    let bytes = js_sys::Uint8Array::from(png.as_slice());
    bulk::set(&object, bulk::PNG, &bytes);
    let transfer = js_sys::Array::of1(&bytes.buffer());
    let _ = scope().post_message_with_transfer(&object, &transfer);
}
