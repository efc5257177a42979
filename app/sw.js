// Service worker: keeps the app shell (html, css, js, wasm) so that after one online visit the
// app opens with no network (kiosks). Shell requests go to the network first, so an online
// user always gets the current build, and fall back to the cache offline. Model shards are
// not handled here: the engine worker keeps them in its own verified cache.
"use strict";
const SHELL = "orfeas-shell-v1";

self.addEventListener("install", (event) => {
  event.waitUntil(
    (async () => {
      const list = await (await fetch("./precache.json", { cache: "no-store" })).json();
      const cache = await caches.open(SHELL);
      // From the network, never from the HTTP cache: the files of one build, together.
      const urls = ["./", ...list.files.map((file) => "./" + file)];
      await cache.addAll(urls.map((url) => new Request(url, { cache: "reload" })));
      await self.skipWaiting();
    })(),
  );
});

self.addEventListener("activate", (event) => {
  event.waitUntil(
    (async () => {
      for (const name of await caches.keys()) {
        if (name.startsWith("orfeas-shell-") && name !== SHELL) await caches.delete(name);
      }
      await self.clients.claim();
    })(),
  );
});

function isShell(url) {
  if (url.origin !== self.location.origin) return false;
  const path = url.pathname.slice(new URL(self.registration.scope).pathname.length);
  return !path.startsWith("models/") && !path.startsWith("api/");
}

self.addEventListener("fetch", (event) => {
  const request = event.request;
  if (request.method !== "GET" || !isShell(new URL(request.url))) return;
  event.respondWith(
    (async () => {
      const cache = await caches.open(SHELL);
      // One entry per file: the shell is keyed without its query string (`/?steps=8` and
      // `/?x=1` are the same page), so no URL can grow the cache.
      const key = new URL(request.url);
      key.search = "";
      let response;
      try {
        response = await fetch(request);
      } catch (offline) {
        const cached = await cache.match(request, { ignoreSearch: true });
        if (cached) return cached;
        throw offline;
      }
      // Storing is a bonus: a refusal (the origin's quota, which model shards share, or a
      // response the cache will not take) must not cost the good answer in hand.
      if (response.ok && response.status === 200) {
        event.waitUntil(
          cache.put(key.href, response.clone()).catch((refused) => {
            console.warn("orfeas: not kept for offline use:", key.pathname, String(refused));
          }),
        );
      }
      return response;
    })(),
  );
});
