// A client written to the original studio's contract (shared/reference/original-studio-api.md):
// poll /api/health until models_status is "ready"; a generation attempted too early gets a 503
// and is retried after `retry_after` seconds; a failed health request is retried after 5 s.
// Usage: node original_client.mjs http://127.0.0.1:PORT   (POLL_MS overrides the 2 s poll)
const base = process.argv[2];
const pollMs = Number(process.env.POLL_MS ?? 2000);
const deadline = Date.now() + 90_000;
// A 1×1 PNG.
const image = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAQAAAC1HAwCAAAAC0lEQVR42mNkYAAAAAYAAjCB0C8AAAAASUVORK5CYII=";
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

let lastStatus = null;
async function pollHealth() {
  try {
    const response = await fetch(`${base}/api/health`);
    const health = await response.json();
    if (health.models_status !== lastStatus) {
      lastStatus = health.models_status;
      console.log(`models_status ${lastStatus}`);
    }
  } catch (error) {
    console.log(`health failed (${error.message}), retrying in 5 s`);
    await sleep(5000 - pollMs);
  }
}

async function generate() {
  const response = await fetch(`${base}/api/generate-3d`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ image }),
  });
  const body = await response.json();
  if (response.status === 503) {
    console.log(`generate 503 ${body.status}`);
    return Number(body.retry_after ?? 5);
  }
  if (response.ok) {
    console.log(`generate accepted ${response.status}`);
    return 0;
  }
  throw new Error(`generate: HTTP ${response.status} ${JSON.stringify(body)}`);
}

await pollHealth();
let retryAt = 0; // the front end tries once early, then as `retry_after` says
for (;;) {
  if (Date.now() > deadline) throw new Error("timed out");
  if (Date.now() >= retryAt) {
    const wait = await generate();
    if (wait === 0) break;
    retryAt = Date.now() + wait * 1000;
  }
  await sleep(pollMs);
  await pollHealth();
}
