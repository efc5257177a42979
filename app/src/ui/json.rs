//! JSON through the browser's own `JSON.parse`/`JSON.stringify` and serde-wasm-bindgen, so the UI
//! bundle carries no JSON parser and no float parser or formatter of its own (their code and
//! tables were a fifth of it).

use serde::Serialize;
use serde::de::DeserializeOwned;
use wasm_bindgen::{JsCast, JsValue};

/// Parses JSON text into `T`; the error names what was wrong (the browser's syntax error or the
/// field serde expected).
pub fn parse<T: DeserializeOwned>(text: &str) -> Result<T, String> {
    let value = js_sys::JSON::parse(text).map_err(|e| js_text(&e))?;
    serde_wasm_bindgen::from_value(value).map_err(|e| e.to_string())
}

/// The JSON text of `value`, as the worker's serde_json reads it (maps as objects). An error
/// names what JSON cannot carry (an integer above 2^53, which a JS number would round).
pub fn to_string<T: Serialize>(value: &T) -> Result<String, String> {
    let js = value
        .serialize(&serde_wasm_bindgen::Serializer::json_compatible())
        .map_err(|e| e.to_string())?;
    js_sys::JSON::stringify(&js)
        .ok()
        .and_then(|text| text.as_string())
        .ok_or_else(|| "JSON.stringify failed".into())
}

/// A JS error (or any value) as text for a message.
pub(super) fn js_text(value: &JsValue) -> String {
    value
        .dyn_ref::<js_sys::Error>()
        .map(|e| String::from(e.message()))
        .or_else(|| value.as_string())
        .unwrap_or_else(|| format!("{value:?}"))
}
