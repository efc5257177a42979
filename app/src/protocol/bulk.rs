//! The messages that carry bulk data beside their JSON, posted as JS objects (their typed
//! arrays transferred, not copied): one encoder and one decoder, every key named once here.
//! `worker.js` and `viewer.js` read the `image` and `mesh` keys too.

use wasm_bindgen::JsValue;

pub const TYPE: &str = "type";

/// UI → engine: `{type: "image", name, file, view}` (a `File`; `view`, absent for the front,
/// names another view of the object for a 2mv model: `left`, `back`, `right`).
pub const IMAGE: &str = "image";
pub const NAME: &str = "name";
pub const FILE: &str = "file";
pub const VIEW: &str = "view";

/// Engine → UI, and (geometry only) UI → viewer: `{type: "mesh", meta: <MeshMeta JSON>,
/// positions, normals, colors, indices, glb, obj, stl, ply}`.
pub const MESH: &str = "mesh";
pub const META: &str = "meta";
pub const GEOMETRY: [&str; 4] = ["positions", "normals", "colors", "indices"];
/// The mesh files, by extension, with the type their download is given.
pub const FILES: [(&str, &str); 4] = [
    ("glb", "model/gltf-binary"),
    ("obj", "model/obj"),
    ("stl", "model/stl"),
    ("ply", "application/x-ply"),
];

/// Engine → UI: `{type: "cutout", report: <FromWorker::Cutout JSON>, png}`.
pub const CUTOUT: &str = "cutout";
pub const REPORT: &str = "report";
pub const PNG: &str = "png";

/// Viewer → UI (written by `viewer.js`): `{type: "snapshot", width, height, png}` (a PNG
/// `Blob`).
pub const SNAPSHOT: &str = "snapshot";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Image,
    Mesh,
    Cutout,
    Snapshot,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Image => IMAGE,
            Kind::Mesh => MESH,
            Kind::Cutout => CUTOUT,
            Kind::Snapshot => SNAPSHOT,
        }
    }
}

/// A new message of `kind`; fill it with [`set`].
pub fn message(kind: Kind) -> js_sys::Object {
    let object = js_sys::Object::new();
    set(&object, TYPE, &JsValue::from_str(kind.name()));
    object
}

pub fn set(message: &js_sys::Object, key: &str, value: &JsValue) {
    let _ = js_sys::Reflect::set(message, &JsValue::from_str(key), value);
}

pub fn get(message: &JsValue, key: &str) -> JsValue {
    js_sys::Reflect::get(message, &JsValue::from_str(key)).unwrap_or(JsValue::UNDEFINED)
}

/// What a bulk message is; one of another type (or none) is an error naming it, never
/// taken for a mesh.
pub fn kind(message: &JsValue) -> Result<Kind, String> {
    let name = get(message, TYPE).as_string();
    [Kind::Image, Kind::Mesh, Kind::Cutout, Kind::Snapshot]
        .into_iter()
        .find(|k| name.as_deref() == Some(k.name()))
        .ok_or_else(|| match name {
            Some(name) => format!("an unknown bulk message (type '{name}')"),
            None => "a bulk message without a type".into(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_download_types_are_the_engines() {
        // The UI bundle does not link the engine: its list of mesh files is kept equal here.
        use orfeas_engine::mesh::export::Format;
        let engine: Vec<(&str, &str)> = Format::ALL
            .iter()
            .map(|f| (f.extension(), f.content_type()))
            .collect();
        assert_eq!(FILES.to_vec(), engine);
    }
}
