// Engine worker bootstrap. Downloads the engine wasm with progress (the UI shows it), starts
// it, and forwards every message from the UI to it, queueing those that arrive earlier.
"use strict";
const queue = [];
let engine = null;
// JSON strings are protocol messages; `{type: "image", name, file, view}` carries the user's
// image (`view`: another view of the object than the front, for a 2mv model).
// Delivered in the order sent: an image's bytes are read before the messages after it (a
// view taken away, a Generate) reach the engine.
let delivered = Promise.resolve();
const deliver = (data) => (delivered = delivered.then(async () => {
  try {
    if (typeof data === "string") engine.on_message(data);
    else if (data && data.type === "image") {
      const bytes = new Uint8Array(await data.file.arrayBuffer());
      engine.on_image(data.name, bytes, data.view || "front");
    }
  } catch (error) {
    // One message that failed (an unreadable file) does not stop the ones after it.
    const message = String((error && error.message) || error);
    post({ error: { request_id: null, message } });
  }
}));
self.onmessage = (event) => {
  if (engine) deliver(event.data);
  else queue.push(event.data);
};
const post = (message) => self.postMessage(JSON.stringify(message));

(async () => {
  try {
    importScripts("./orfeas-worker.js"); // defines the `wasm_bindgen` global (no-modules)
    const response = await fetch("./orfeas-worker_bg.wasm");
    if (!response.ok) throw new Error(`engine bundle: HTTP ${response.status}`);
    // Content-Length is the compressed size when the server compresses: no total then.
    const encoded = response.headers.get("content-encoding");
    const length = Number(response.headers.get("content-length"));
    const total = !encoded && length > 0 ? length : null;
    const reader = response.body.getReader();
    const parts = [];
    let received = 0;
    let last = 0;
    for (;;) {
      const { done, value } = await reader.read();
      if (done) break;
      parts.push(value);
      received += value.byteLength;
      const now = performance.now();
      if (now - last > 50) {
        last = now;
        post({ engine_fetch: { received, total } });
      }
    }
    post({ engine_fetch: { received, total: received } });
    const bytes = new Uint8Array(received);
    let at = 0;
    for (const part of parts) {
      bytes.set(part, at);
      at += part.byteLength;
    }
    await wasm_bindgen({ module_or_path: bytes });
    engine = wasm_bindgen;
    post("engine_loaded");
    for (const message of queue.splice(0)) await deliver(message);
  } catch (error) {
    post({ engine_failed: { reason: String((error && error.message) || error) } });
  }
})();
