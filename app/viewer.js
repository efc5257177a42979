// Viewer worker bootstrap: loads the viewer wasm, gives it the canvas, then forwards control
// messages (JSON strings) and meshes (typed arrays) to it; turns snapshots into PNG blobs.
"use strict";
const queue = [];
let viewer = null;
const post = (message) => self.postMessage(JSON.stringify(message));

// Some browsers lose the GPU device as soon as a WebGPU canvas presents (headless Chromium on
// SwiftShader does, ~60 ms after the first frame). Probe on a throwaway canvas; where it
// happens, frames are read back and drawn on the canvas's 2D context instead.
async function presentingKeepsTheDevice() {
  try {
    const adapter = await navigator.gpu.requestAdapter();
    const device = await adapter.requestDevice();
    let lost = false;
    device.lost.then(() => { lost = true; });
    const canvas = new OffscreenCanvas(16, 16);
    const context = canvas.getContext("webgpu");
    context.configure({ device, format: navigator.gpu.getPreferredCanvasFormat() });
    for (let i = 0; i < 3; i++) {
      const encoder = device.createCommandEncoder();
      encoder.beginRenderPass({ colorAttachments: [{
        view: context.getCurrentTexture().createView(), loadOp: "clear", storeOp: "store" }] }).end();
      device.queue.submit([encoder.finish()]);
      await new Promise((resolve) => requestAnimationFrame(resolve));
    }
    await new Promise((resolve) => setTimeout(resolve, 300));
    if (!lost) device.destroy();
    return !lost;
  } catch (e) {
    return true; // no adapter: the viewer itself reports that
  }
}

// A software adapter (SwiftShader, lavapipe) renders on the CPU anyway: reading frames back
// costs it nothing, and skipping the probe spares the GPU process a reset (which, on headless
// Chromium, stalls the engine's work for tens of seconds).
async function softwareAdapter() {
  try {
    const adapter = await navigator.gpu.requestAdapter();
    const info = (adapter && adapter.info) || {};
    const names = `${info.vendor} ${info.architecture} ${info.device} ${info.description}`;
    return !!(info.isFallbackAdapter || (adapter && adapter.isFallbackAdapter)
      || /swiftshader|llvmpipe|lavapipe/i.test(names));
  } catch (e) {
    return false;
  }
}

async function handle(data) {
  if (typeof data === "string") {
    if (JSON.parse(data).type === "snapshot") {
      const { width, height, rgba } = await viewer.snapshot();
      const canvas = new OffscreenCanvas(width, height);
      const pixels = new ImageData(new Uint8ClampedArray(rgba.buffer), width, height);
      canvas.getContext("2d").putImageData(pixels, 0, 0);
      const png = await canvas.convertToBlob({ type: "image/png" });
      self.postMessage({ type: "snapshot", width, height, png });
    } else {
      viewer.on_message(data);
    }
  } else if (data && data.type === "mesh") {
    viewer.set_mesh(data.positions, data.normals, data.colors, data.indices);
  }
}

self.onmessage = (event) => {
  const data = event.data;
  if (data && data.type === "init") {
    start(data.canvas, data.output);
  } else if (viewer) {
    handle(data).catch((e) => post({ error: { message: String((e && e.message) || e) } }));
  } else {
    queue.push(data);
  }
};

async function start(canvas, output) {
  try {
    importScripts("./orfeas-viewer.js"); // defines the `wasm_bindgen` global (no-modules)
    await wasm_bindgen({ module_or_path: "./orfeas-viewer_bg.wasm" });
    const direct = output === "direct" || (output !== "readback"
      && !(await softwareAdapter()) && await presentingKeepsTheDevice());
    if (!direct) {
      const context = canvas.getContext("2d");
      self.orfeas_present = (rgba, width, height) => {
        if (canvas.width !== width || canvas.height !== height) {
          canvas.width = width;
          canvas.height = height;
        }
        context.putImageData(new ImageData(new Uint8ClampedArray(rgba), width, height), 0, 0);
      };
    }
    await wasm_bindgen.start(canvas, direct);
    viewer = wasm_bindgen;
    for (const data of queue.splice(0)) await handle(data);
  } catch (error) {
    post({ failed: { reason: String((error && error.message) || error) } });
  }
}
