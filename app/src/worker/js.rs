//! The browser's services the worker reads: a timer, the host's memory.

use wasm_bindgen::{JsCast, JsValue};
use wasm_bindgen_futures::JsFuture;

/// Wait `ms` milliseconds (a macrotask: messages queued meanwhile are handled).
pub(super) async fn sleep_ms(ms: i32) {
    let promise = js_sys::Promise::new(&mut |resolve, _| {
        let scope: web_sys::WorkerGlobalScope = js_sys::global().unchecked_into();
        let _ = scope.set_timeout_with_callback_and_timeout_and_arguments_0(&resolve, ms);
    });
    let _ = JsFuture::from(promise).await;
}

/// `navigator.deviceMemory` in bytes (the browser's rounded figure of the host's RAM), where
/// the browser says.
pub(super) fn device_memory() -> Option<u64> {
    let scope: web_sys::WorkerGlobalScope = js_sys::global().unchecked_into();
    let gib = js_sys::Reflect::get(&scope.navigator(), &JsValue::from_str("deviceMemory"))
        .ok()?
        .as_f64()?;
    Some((gib * (1u64 << 30) as f64) as u64)
}
