//! The web app in a real headless Chromium (WebGPU on SwiftShader: no shader-f16, so the f32
//! path), served with its model shards by a real HTTP server that injects faults.

use std::time::{Duration, Instant};

use orfeas_engine::weights::ShardIndex;
use orfeas_tests::browser::{Browser, Chromedriver, Page, model_attr};
use orfeas_tests::server::{Fault, Throttle};
use orfeas_tests::stage::{self, Stage};
use orfeas_tests::{dist_dir, model};

/// Browser tests share two cores: one at a time keeps their timing sane.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const MODEL: &str = "tiny";
const READY_TIMEOUT: Duration = Duration::from_secs(60);

struct Rig {
    stage: Stage,
    index: ShardIndex,
    _models: tempfile::TempDir,
}

impl std::ops::Deref for Rig {
    type Target = Stage;
    fn deref(&self) -> &Stage {
        &self.stage
    }
}

/// The page paints once the UI bundle is in: it stays within its gzipped bound.
#[test]
fn the_ui_bundle_stays_within_its_gzipped_bound() -> anyhow::Result<()> {
    let (raw, gzipped) = orfeas_tests::ui_bundle_size(&dist_dir()?)?;
    assert!(
        gzipped <= orfeas_tests::UI_BUNDLE_GZIP_BOUND,
        "the UI bundle is {gzipped} bytes gzipped ({raw} raw), over its bound of {} bytes",
        orfeas_tests::UI_BUNDLE_GZIP_BOUND
    );
    Ok(())
}

/// A generated ~3 MB model in 5 shards, served with a config that lists only it.
async fn rig() -> anyhow::Result<Rig> {
    let models = tempfile::tempdir()?;
    let index = model::generate(
        &models.path().join(MODEL),
        MODEL,
        3 << 20,
        160 << 10,
        640 << 10,
        11,
    )?;
    assert!(index.shards.len() >= 4, "the tests want several shards");
    let config = stage::config(&[(MODEL, "Test model")]);
    Ok(Rig {
        stage: Stage::start(models.path(), Some(&config)).await?,
        index,
        _models: models,
    })
}

async fn wait_status(browser: &Browser, status: &str) -> anyhow::Result<()> {
    browser
        .wait_for(
            &format!("model status {status}"),
            &format!("{} === '{status}'", model_attr(MODEL, "status")),
            READY_TIMEOUT,
        )
        .await?;
    Ok(())
}

/// The failed model panel's reason.
async fn model_error(browser: &Browser) -> anyhow::Result<String> {
    let error = browser
        .wait_for(
            "the error text",
            "document.querySelector('[data-testid=model-error]')?.innerText",
            Duration::from_secs(5),
        )
        .await?;
    Ok(error.as_str().unwrap_or_default().to_string())
}

fn files(index: &ShardIndex, range: std::ops::RangeFrom<usize>) -> Vec<String> {
    index.shards[range].iter().map(|s| s.file.clone()).collect()
}

/// Why Generate is disabled: the line beside it and the button's tooltip.
async fn generate_reason(browser: &Browser) -> anyhow::Result<(String, String)> {
    let reason = browser
        .eval(
            "return [document.querySelector('[data-testid=generate-reason]').innerText, \
             document.querySelector('[data-testid=generate]').title]",
        )
        .await?;
    let text = |i: usize| reason[i].as_str().unwrap_or_default().to_string();
    Ok((text(0), text(1)))
}

/// Ready, and Generate says the only thing missing is a shape model (the test model is not one).
async fn only_the_shape_model_is_missing(browser: &Browser) -> anyhow::Result<()> {
    assert!(generate_disabled(browser).await?);
    let (reason, title) = generate_reason(browser).await?;
    assert!(reason.contains("no shape model installed"), "{reason}");
    assert!(title.contains(&reason), "the tooltip says it too: {title}");
    assert!(
        browser
            .eval("return !!document.querySelector('[data-testid=shape-missing]')")
            .await?
            .as_bool()
            .unwrap_or(false),
        "the shape model's card is shown"
    );
    Ok(())
}

async fn generate_disabled(browser: &Browser) -> anyhow::Result<bool> {
    Ok(browser
        .eval("return document.querySelector('[data-testid=generate]').disabled")
        .await?
        .as_bool()
        .unwrap_or(false))
}

#[tokio::test(flavor = "multi_thread")]
async fn shell_paints_first_then_progress_climbs_to_ready() -> anyhow::Result<()> {
    let _turn = ONE_AT_A_TIME.lock().await;
    let rig = rig().await?;
    // No model file is served until the shell has been checked; then the last shard stops
    // at its half until the test opens the gate. The byte rate only gives the panel a
    // throughput to show.
    rig.server.hold("");
    let last = rig.index.shards.last().unwrap().file.clone();
    rig.server.set_fault(&last, Fault::Gate);
    rig.server.set_throttle(Throttle {
        first_byte_delay: Duration::ZERO,
        bytes_per_sec: Some(1 << 20),
    });
    let browser = rig.open("/").await?;
    browser
        .wait_for(
            "the shell",
            "document.querySelector('[data-testid=drop-zone]') && \
             document.querySelector('[data-testid=model-panel]') && \
             document.querySelector('[data-model]')",
            Duration::from_secs(30),
        )
        .await?;
    assert!(
        rig.server.completed_shards().is_empty(),
        "the shell must be up before any shard arrives"
    );
    assert!(
        generate_disabled(&browser).await?,
        "generate is disabled while loading"
    );
    rig.server.release();
    // The engine bundle is fetched by the worker, after the UI bundle, with its own progress.
    let engine = browser
        .wait_for(
            "the engine bundle",
            "document.querySelector('[data-testid=engine][data-engine=loaded]')?.innerText",
            Duration::from_secs(60),
        )
        .await?;
    let engine = engine.as_str().unwrap_or_default();
    let mb: f64 = engine
        .split("loaded (")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0.0);
    assert!(mb > 1.0, "the engine bundle's download was shown: {engine}");
    let order: Vec<String> = rig.server.log().into_iter().map(|e| e.path).collect();
    let position = |path: &str| order.iter().position(|p| p == path);
    assert!(
        position("/orfeas-worker_bg.wasm").is_some()
            && position("/orfeas-app_bg.wasm") < position("/orfeas-worker_bg.wasm"),
        "UI bundle first, engine bundle after: {order:?}"
    );

    // Certainly partway (the last shard waits at the gate): the bar is between 0 and 1 and
    // the detail line shows throughput and ETA.
    let partway = browser
        .wait_for(
            "progress partway, with throughput and ETA",
            &format!(
                "(() => {{ const p = Number({progress}); \
                 const d = document.querySelector('[data-testid=progress-detail]')?.innerText ?? ''; \
                 return {status} === 'loading' && p > 0 && p < 1 && d.includes('MB/s') \
                 && d.includes('ETA') && [p, d]; }})()",
                progress = model_attr(MODEL, "progress"),
                status = model_attr(MODEL, "status"),
            ),
            READY_TIMEOUT,
        )
        .await?;
    eprintln!("partway: {partway}");
    assert!(generate_disabled(&browser).await?);
    // The reason names the model it waits for, with its ETA.
    let (reason, _) = generate_reason(&browser).await?;
    assert!(
        reason.contains("waiting for Test model to load") && reason.contains("s left"),
        "{reason}"
    );
    rig.server.open_gate();

    // Sample the panel until ready: progress never goes back and ends at 1.
    let mut samples: Vec<f64> = vec![partway[0].as_f64().unwrap()];
    let deadline = std::time::Instant::now() + READY_TIMEOUT;
    loop {
        let state = browser
            .eval(&format!(
                "return [{}, {}, document.querySelector('[data-testid=progress-detail]')?.innerText]",
                model_attr(MODEL, "status"),
                model_attr(MODEL, "progress")
            ))
            .await?;
        let status = state[0].as_str().unwrap_or_default().to_string();
        let detail = state[2].as_str().unwrap_or_default();
        assert!(
            status == "ready" || !detail.contains("· ready"),
            "the panel says {status} beside {detail:?}"
        );
        if let Some(p) = state[1].as_str().and_then(|p| p.parse::<f64>().ok()) {
            samples.push(p);
        }
        if status == "ready" {
            break;
        }
        assert_ne!(status, "failed", "{}", browser.page_text().await?);
        assert!(
            std::time::Instant::now() < deadline,
            "not ready in time; page:\n{}\nrequests: {:?}",
            browser.page_text().await?,
            rig.server
                .log()
                .iter()
                .map(|e| (&e.path, e.status, e.completed.is_some()))
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for pair in samples.windows(2) {
        assert!(pair[1] >= pair[0], "progress went back: {samples:?}");
    }
    assert_eq!(samples.last().copied(), Some(1.0));
    only_the_shape_model_is_missing(&browser).await?;
    let expected: Vec<String> = files(&rig.index, 0..);
    assert_eq!(rig.server.completed_shards(), expected);
    browser.close().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn each_shard_fault_names_the_shard_and_retry_fetches_only_the_rest() -> anyhow::Result<()> {
    let _turn = ONE_AT_A_TIME.lock().await;
    let rig = rig().await?;
    let middle = rig.index.shards.len() / 2;
    for fault in [
        Fault::DropAtHalf,
        Fault::Truncate,
        Fault::CorruptByte,
        Fault::Html,
    ] {
        let target = rig.index.shards[middle].file.clone();
        rig.server.clear_log();
        rig.server.set_fault(&target, fault);
        let browser = rig.open("/").await?;
        wait_status(&browser, "failed").await?;
        let error = model_error(&browser).await?;
        assert!(
            error.contains(&target),
            "{fault:?}: error names the shard: {error}"
        );
        assert!(generate_disabled(&browser).await?);
        let verified = files(&rig.index, 0..)[..middle].to_vec();
        assert_eq!(rig.server.completed_shards()[..middle], verified[..]);

        rig.server.clear_faults();
        rig.server.clear_log();
        browser.click("[data-testid=retry]").await?;
        wait_status(&browser, "ready").await?;
        assert_eq!(
            rig.server.shard_requests(),
            files(&rig.index, middle..),
            "{fault:?}: the retry fetches only shards not yet verified"
        );
        browser.close().await;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_model_that_does_not_fit_the_gpu_is_refused_before_any_shard_is_fetched()
-> anyhow::Result<()> {
    // The 3 MB model against a GPU said to have 1 MiB (`?gpu_memory_gib`): the index is read,
    // the model failed with the reason (needs, has, the dtype), and no shard is requested.
    let _turn = ONE_AT_A_TIME.lock().await;
    let rig = rig().await?;
    rig.server.clear_log();
    let browser = rig.open("/?gpu_memory_gib=0.001").await?;
    wait_status(&browser, "failed").await?;
    let error = model_error(&browser).await?;
    assert!(
        error.contains("does not fit") && error.contains("MiB") && error.contains("as configured"),
        "{error}"
    );
    // SwiftShader has no shader-f16: the weights would be f32, and the reason says so.
    assert!(error.contains("shader-f16"), "{error}");
    assert!(
        rig.server.shard_requests().is_empty(),
        "no shard fetched: {:?}",
        rig.server.shard_requests()
    );
    assert!(generate_disabled(&browser).await?);
    browser.close().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn reload_comes_from_cache_and_the_app_opens_offline() -> anyhow::Result<()> {
    let _turn = ONE_AT_A_TIME.lock().await;
    let rig = rig().await?;
    let browser = rig.open("/").await?;
    wait_status(&browser, "ready").await?;
    browser
        .wait_for(
            "the service worker to control the page",
            "navigator.serviceWorker.controller !== null",
            Duration::from_secs(30),
        )
        .await?;

    // Shard requests refused: the reload still reaches ready, from the cache.
    rig.server.refuse_models(true);
    rig.server.clear_log();
    browser.client.refresh().await?;
    wait_status(&browser, "ready").await?;
    let detail = browser
        .eval("return document.querySelector('[data-model] .status').innerText")
        .await?;
    assert!(
        detail.as_str().unwrap_or_default().contains("from cache"),
        "{detail}"
    );
    assert!(rig.server.completed_shards().is_empty());

    // No network at all: the service worker serves the shell, the cache the model.
    rig.server.set_offline(true);
    browser.client.refresh().await?;
    browser
        .wait_for(
            "the shell offline",
            "document.querySelector('[data-testid=drop-zone]')",
            Duration::from_secs(30),
        )
        .await?;
    wait_status(&browser, "ready").await?;
    only_the_shape_model_is_missing(&browser).await?;

    // A query string never visited online is the same shell (kept once, not per variant).
    browser.goto(&rig.server.url("/?steps=3&seed=7")).await?;
    browser
        .wait_for(
            "the shell offline, new query",
            "document.querySelector('[data-testid=drop-zone]')",
            Duration::from_secs(30),
        )
        .await?;
    wait_status(&browser, "ready").await?;
    let shells = browser
        .eval(
            "window.__keys = null; (async () => { const names = await caches.keys(); \
             let urls = []; for (const n of names) { if (!n.startsWith('orfeas-shell')) continue; \
             const c = await caches.open(n); urls = urls.concat((await c.keys()).map(r => r.url)); } \
             window.__keys = urls; })(); return true",
        )
        .await?;
    assert_eq!(shells, true);
    let keys = browser
        .wait_for(
            "the shell cache's keys",
            "window.__keys",
            Duration::from_secs(10),
        )
        .await?;
    let keys: Vec<String> = serde_json::from_value(keys)?;
    assert!(
        keys.iter().all(|k| !k.contains('?')),
        "the shell is cached without query strings: {keys:?}"
    );
    browser.close().await;
    Ok(())
}

/// A link cannot point the app at another site's models or config: `?models=` and `?config=`
/// on another origin (here `localhost` for a page on `127.0.0.1`) are refused with a notice
/// and nothing is fetched from there, unless the site's own orfeas.json allows that origin.
#[tokio::test(flavor = "multi_thread")]
async fn a_link_cannot_point_the_app_at_another_sites_models() -> anyhow::Result<()> {
    let _turn = ONE_AT_A_TIME.lock().await;
    let rig = rig().await?;
    let port = rig
        .server
        .url("/")
        .split(':')
        .nth(2)
        .unwrap_or_default()
        .trim_end_matches('/')
        .to_string();
    let foreign = format!("http://localhost:{port}");
    let browser = rig.open(&format!("/?models={foreign}/models/")).await?;
    let notice = browser
        .wait_for(
            "the refusal notice",
            "document.querySelector('[data-testid=notices]')?.innerText.includes('not loading') \
             && document.querySelector('[data-testid=notices]').innerText",
            Duration::from_secs(30),
        )
        .await?;
    let notice = notice.as_str().unwrap_or_default().to_string();
    assert!(
        notice.contains(&foreign) && notice.contains("allow_origins"),
        "{notice}"
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        rig.server
            .log()
            .iter()
            .all(|e| !e.path.contains("/models/")),
        "nothing fetched from the other origin: {:?}",
        rig.server.log().iter().map(|e| &e.path).collect::<Vec<_>>()
    );
    // ?config= on another origin: refused, named, not fetched.
    rig.server.clear_log();
    browser
        .goto(&rig.server.url(&format!("/?config={foreign}/orfeas.json")))
        .await?;
    let notice = browser
        .wait_for(
            "the config refusal",
            "document.querySelector('[data-testid=notices]')?.innerText.includes('orfeas.json') \
             && document.querySelector('[data-testid=notices]').innerText",
            Duration::from_secs(30),
        )
        .await?;
    assert!(
        notice.as_str().unwrap_or_default().contains(&foreign),
        "{notice}"
    );
    assert!(
        rig.server
            .log()
            .iter()
            .all(|e| !e.path.ends_with("orfeas.json")),
        "the foreign config was fetched"
    );

    // The site's own orfeas.json allows that origin: the same link is taken (the model id is
    // listed with the foreign base; whether it then loads is CORS's business, not ours).
    rig.server.put_file(
        "orfeas.json",
        "application/json",
        format!(
            r#"{{"models":[{{"id":"{MODEL}","label":"Test model"}}],"allow_origins":["{foreign}"]}}"#
        ),
    );
    browser
        .goto(&rig.server.url(&format!("/?models={foreign}/models/")))
        .await?;
    browser
        .wait_for(
            "the model panel",
            &format!("{} !== null", model_attr(MODEL, "status")),
            Duration::from_secs(30),
        )
        .await?;
    let notices = browser
        .eval("return document.querySelector('[data-testid=notices]').innerText")
        .await?;
    assert!(
        !notices.as_str().unwrap_or_default().contains("not loading"),
        "{notices}"
    );
    browser.close().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn an_early_request_waits_with_a_countdown_and_runs_once_ready() -> anyhow::Result<()> {
    let _turn = ONE_AT_A_TIME.lock().await;
    let rig = rig().await?;
    // The model cannot be ready before the gate opens: the last shard waits at its half.
    let last = rig.index.shards.last().unwrap().file.clone();
    rig.server.set_fault(&last, Fault::Gate);
    let browser = rig.open("/?generate=1").await?;
    let waiting = browser
        .wait_for(
            "the waiting request",
            "document.querySelector('[data-testid=request-status][data-state=waiting]')?.innerText",
            Duration::from_secs(30),
        )
        .await?;
    let waiting = waiting.as_str().unwrap_or_default();
    assert!(
        waiting.contains("still loading") && waiting.contains("retrying in"),
        "{waiting}"
    );
    assert_ne!(
        browser
            .eval(&format!("return {}", model_attr(MODEL, "status")))
            .await?,
        "ready"
    );
    rig.server.open_gate();
    // It runs by itself once the model is ready: the worker answers request 1.
    let answer = browser
        .wait_for(
            "the request's answer",
            "document.querySelector('[data-testid=request-status][data-state=done], \
             [data-testid=request-status][data-state=error]')?.innerText",
            READY_TIMEOUT,
        )
        .await?;
    assert!(
        answer
            .as_str()
            .unwrap_or_default()
            .starts_with("request 1:"),
        "{answer}"
    );
    assert_eq!(
        browser
            .eval(&format!("return {}", model_attr(MODEL, "status")))
            .await?,
        "ready"
    );
    browser.close().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn without_webgpu_the_page_says_what_is_missing() -> anyhow::Result<()> {
    let _turn = ONE_AT_A_TIME.lock().await;
    let rig = rig().await?;
    let browser = Browser::open(&rig.driver, false).await?;
    browser.goto(&rig.server.url("/")).await?;
    let gpu = browser
        .wait_for(
            "the GPU message",
            "document.querySelector('[data-testid=engine][data-gpu=unavailable] [data-testid=gpu]')?.innerText",
            Duration::from_secs(60),
        )
        .await?;
    assert!(gpu.as_str().unwrap_or_default().contains("WebGPU"), "{gpu}");
    assert!(
        browser
            .eval("return !!document.querySelector('[data-testid=drop-zone]')")
            .await?
            .as_bool()
            .unwrap()
    );
    wait_status(&browser, "failed").await?;
    assert!(
        rig.server.shard_requests().is_empty(),
        "no download without a GPU"
    );
    browser.close().await;
    Ok(())
}

/// A device lost while a model streams in (a driver reset, a GPU watchdog): the load that was
/// cut short finishes while the new device is still coming up (held 6 s here, as a slow reset
/// is), and the model waits for that device and loads there, instead of failing ("no GPU
/// device") or passing as ready with its tensors on the lost one.
#[tokio::test(flavor = "multi_thread")]
async fn a_gpu_lost_mid_load_waits_for_the_new_device_and_loads_there() -> anyhow::Result<()> {
    let _turn = ONE_AT_A_TIME.lock().await;
    let rig = rig().await?;
    // Mid-load for certain: the last shard waits at its half until the loss has happened.
    let last = rig.index.shards.last().unwrap().file.clone();
    rig.server.set_fault(&last, Fault::Gate);
    let browser = rig.open("/?debug=1&debug_gpu_rebuild_ms=6000").await?;
    let started = Instant::now();
    while rig.server.completed_shards().is_empty() {
        anyhow::ensure!(started.elapsed() < READY_TIMEOUT, "no shard arrived");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let status = browser
        .eval(&format!("return {}", model_attr(MODEL, "status")))
        .await?;
    assert_eq!(status, "loading", "the loss should come mid-load");
    browser.click("[data-testid=simulate-gpu-loss]").await?;
    browser
        .wait_for(
            "the reset notice",
            "document.querySelector('[data-testid=notices]').innerText.includes('GPU reset')",
            Duration::from_secs(30),
        )
        .await?;
    // The cut-short load now finishes while the new device is held back.
    rig.server.open_gate();
    // Until the model is back: every state it shows is "loading" or ready with every tensor.
    let tensors = rig.index.weight_map.len().to_string();
    let mut seen = Vec::new();
    loop {
        let state = browser
            .eval(&format!(
                "return [{}, {}, document.querySelector('[data-testid=notices]').innerText.includes('GPU restored')]",
                model_attr(MODEL, "status"),
                model_attr(MODEL, "tensors"),
            ))
            .await?;
        let status = state[0].as_str().unwrap_or("none").to_string();
        let count = state[1].as_str().unwrap_or_default().to_string();
        let restored = state[2].as_bool() == Some(true);
        if status == "ready" && restored {
            assert_eq!(count, tensors, "every tensor on the new device");
            break;
        }
        seen.push(format!("{status} {count}").trim().to_string());
        assert!(
            status == "loading" || (status == "ready" && count == tensors),
            "while the device was rebuilt the model was {seen:?}"
        );
        anyhow::ensure!(started.elapsed() < READY_TIMEOUT, "no restore: {seen:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let shards = rig.index.shards.len();
    let streamed = rig.server.completed_shards().len();
    assert!(
        streamed >= shards,
        "the cut-short load should have streamed every shard ({streamed} of {shards})"
    );
    browser.close().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_lost_gpu_is_restored_from_the_cache_and_cache_controls_work() -> anyhow::Result<()> {
    let _turn = ONE_AT_A_TIME.lock().await;
    let rig = rig().await?;
    let browser = rig.open("/?debug=1").await?;
    wait_status(&browser, "ready").await?;

    rig.server.clear_log();
    browser.click("[data-testid=simulate-gpu-loss]").await?;
    browser
        .wait_for(
            "the reset notice",
            "document.querySelector('[data-testid=notices]').innerText.includes('GPU reset')",
            Duration::from_secs(30),
        )
        .await?;
    browser
        .wait_for(
            "the restore",
            "document.querySelector('[data-testid=notices]').innerText.includes('GPU restored')",
            READY_TIMEOUT,
        )
        .await?;
    wait_status(&browser, "ready").await?;
    assert!(
        rig.server.completed_shards().is_empty(),
        "restored from the cache, not the network"
    );

    browser.click("[data-testid=verify-cache]").await?;
    let report = browser
        .wait_for(
            "the cache report",
            "document.querySelector('[data-testid=cache-report]').innerText",
            Duration::from_secs(30),
        )
        .await?;
    let n = rig.index.shards.len();
    assert!(
        report
            .as_str()
            .unwrap_or_default()
            .contains(&format!("{n} of {n} shards cached and verified")),
        "{report}"
    );
    browser.click("[data-testid=clear-cache]").await?;
    browser
        .wait_for(
            "the clear report",
            "document.querySelector('[data-testid=cache-report]').innerText.includes('cleared')",
            Duration::from_secs(30),
        )
        .await?;
    browser.close().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn when_storage_is_refused_the_model_stays_in_memory_and_the_page_says_so()
-> anyhow::Result<()> {
    let _turn = ONE_AT_A_TIME.lock().await;
    let rig = rig().await?;
    let browser = Browser::open(&rig.driver, true).await?;
    let origin = rig.server.url("/").trim_end_matches('/').to_string();
    browser
        .cdp(
            "Storage.overrideQuotaForOrigin",
            serde_json::json!({ "origin": origin, "quotaSize": 4096 }),
        )
        .await?;
    browser.goto(&rig.server.url("/")).await?;
    wait_status(&browser, "ready").await?;
    let notices = browser
        .wait_for(
            "the storage notice",
            "document.querySelector('[data-testid=notices]').innerText.includes('kept in memory') \
             && document.querySelector('[data-testid=notices]').innerText",
            Duration::from_secs(30),
        )
        .await?;
    // (Chromium's estimate() does not reflect the quota override, so the pre-download
    // estimate warning is not exercised here; the refused writes are.)
    assert!(
        notices
            .as_str()
            .unwrap_or_default()
            .contains("QuotaExceededError"),
        "{notices}"
    );
    wait_status(&browser, "ready").await?;
    only_the_shape_model_is_missing(&browser).await?;
    browser.click("[data-testid=verify-cache]").await?;
    let report = browser
        .wait_for(
            "the cache report",
            "document.querySelector('[data-testid=cache-report]').innerText",
            Duration::from_secs(30),
        )
        .await?;
    assert!(
        report.as_str().unwrap_or_default().contains("0 of"),
        "nothing was stored: {report}"
    );
    browser.close().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_corrupted_cached_shard_is_dropped_and_fetched_again() -> anyhow::Result<()> {
    let _turn = ONE_AT_A_TIME.lock().await;
    let rig = rig().await?;
    let browser = rig.open("/").await?;
    wait_status(&browser, "ready").await?;

    // Flip one byte of a stored shard, behind the app's back.
    let target = rig.index.shards[2].file.clone();
    let url = rig.server.url(&format!("/models/{MODEL}/{target}"));
    browser
        .eval(&format!(
            "window.__done = false; (async () => {{
                const cache = await caches.open('orfeas-models-v1');
                const bytes = new Uint8Array(await (await cache.match('{url}')).arrayBuffer());
                bytes[bytes.length >> 1] ^= 0x40;
                await cache.put('{url}', new Response(bytes));
                window.__done = true;
            }})(); return true;"
        ))
        .await?;
    browser
        .wait_for("the corruption", "window.__done", Duration::from_secs(10))
        .await?;

    rig.server.clear_log();
    browser.client.refresh().await?;
    wait_status(&browser, "ready").await?;
    assert_eq!(
        rig.server.completed_shards(),
        vec![target],
        "only the corrupted shard comes from the network"
    );
    browser.close().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_kiosk_runs_on_orfeas_serve_alone() -> anyhow::Result<()> {
    let _turn = ONE_AT_A_TIME.lock().await;
    // The model folder `orfeas serve --models` loads is the one the app fetches from /models/.
    let models = tempfile::tempdir()?;
    let index = model::generate(
        &models.path().join(MODEL),
        MODEL,
        2 << 20,
        160 << 10,
        640 << 10,
        12,
    )?;
    let web = tempfile::tempdir()?;
    for entry in std::fs::read_dir(dist_dir()?)? {
        let entry = entry?;
        std::fs::copy(entry.path(), web.path().join(entry.file_name()))?;
    }
    // No orfeas.json: the server says which models it has, so the app loads `tiny` and shows
    // the shape model as not installed instead of guessing its URLs.
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let options = orfeas::server::ServeOptions {
        bind: ([127, 0, 0, 1], port).into(),
        models: Some(models.path().to_path_buf()),
        quant: None,
        web: Some(web.path().to_path_buf()),
        device: orfeas_engine::device::cpu(),
        dtype: burn::tensor::DType::F32,
        capacity: orfeas::compute::open(
            orfeas::compute::Backend::Cpu,
            orfeas::compute::Precision::F32,
            None,
        )?
        .capacity,
        limits: orfeas::server::RequestLimits {
            max_upload_bytes: 1 << 20,
            ..Default::default()
        },
        jobs: orfeas::server::jobs::JobLimits {
            queue: 4,
            ..Default::default()
        },
        access: Default::default(),
        load_throttle: None,
        hold_loading_while: None,
        connections: Default::default(),
        retry_interval: orfeas::server::models::RETRY_INTERVAL,
        fleet: None,
        hold_jobs_while: None,
    };
    let server = tokio::spawn(orfeas::server::serve(options));
    let base = format!("http://127.0.0.1:{port}");
    let driver = Chromedriver::start().await?;
    let browser = Browser::open(&driver, true).await?;
    browser.goto(&format!("{base}/")).await?;
    wait_status(&browser, "ready").await?;
    let detail = browser
        .eval("return document.querySelector('[data-model]').dataset.bytes")
        .await?;
    assert_eq!(detail, index.total_bytes().to_string());
    only_the_shape_model_is_missing(&browser).await?;
    let panels = browser
        .eval("return [...document.querySelectorAll('[data-model]')].map(p => p.dataset.model + ':' + p.dataset.status)")
        .await?;
    assert_eq!(panels, serde_json::json!([format!("{MODEL}:ready")]));
    // The server's own health agrees, in the original studio's words.
    let health = browser
        .eval(&format!(
            "window.__h = null; fetch('{base}/api/health').then(r => r.json()).then(j => window.__h = j); return 1"
        ))
        .await;
    health?;
    let health = browser
        .wait_for("health", "window.__h", Duration::from_secs(10))
        .await?;
    assert_eq!(health["models_status"], "ready", "{health}");
    browser.close().await;
    server.abort();
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn models_that_are_not_there_are_not_installed_not_failed() -> anyhow::Result<()> {
    let _turn = ONE_AT_A_TIME.lock().await;
    // A site with no models and no orfeas.json: the app's default list meets a 404 per index.
    let models = tempfile::tempdir()?;
    let stage = Stage::start(models.path(), None).await?;
    let browser = stage.open("/").await?;
    browser
        .wait_for(
            "the shape model's card",
            "document.querySelector('[data-testid=shape-missing]')",
            READY_TIMEOUT,
        )
        .await?;
    let statuses = browser
        .wait_for(
            "every model settled",
            "(() => { const s = [...document.querySelectorAll('[data-model]')]\
               .map(p => p.dataset.status); \
               return s.length === 4 && s.every(x => x !== 'loading') && s; })()",
            READY_TIMEOUT,
        )
        .await?;
    assert_eq!(
        statuses,
        serde_json::json!(vec!["not-installed"; 4]),
        "none failed"
    );
    // One calm card says what the shape model is for and how to get one; its three panels
    // are not shown; background removal's panel says where nothing was found.
    let card = browser
        .eval("return document.querySelector('[data-testid=shape-missing]').innerText")
        .await?;
    let card = card.as_str().unwrap_or_default();
    assert!(
        card.contains("orfeas convert") && card.contains("without it"),
        "{card}"
    );
    let shown = browser
        .eval("return [...document.querySelectorAll('[data-model]')].filter(p => !p.hidden).map(p => p.innerText)")
        .await?;
    let shown: Vec<String> = serde_json::from_value(shown)?;
    assert_eq!(shown.len(), 1, "{shown:?}");
    assert!(
        shown[0].contains("not installed") && shown[0].contains("models/isnet-medium/"),
        "{shown:?}"
    );
    assert!(
        browser
            .eval("return document.querySelectorAll('[data-testid=model-error], [data-testid=retry]').length")
            .await?
            == 0,
        "no error and no Retry for a model that is simply not there"
    );
    only_the_shape_model_is_missing(&browser).await?;
    // Long lines wrap inside the side panel instead of running out of it.
    let overflow = browser
        .eval("const s = document.querySelector('.side'); return s.scrollWidth - s.clientWidth")
        .await?;
    assert!(
        overflow.as_i64().unwrap_or(1) <= 0,
        "the side panel overflows by {overflow}"
    );
    browser.close().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_fresh_page_is_shown_even_when_the_service_worker_cannot_store_it() -> anyhow::Result<()>
{
    let _turn = ONE_AT_A_TIME.lock().await;
    let rig = rig().await?;
    let browser = rig.open("/").await?;
    browser
        .wait_for(
            "the service worker to control the page",
            "navigator.serviceWorker.controller !== null",
            Duration::from_secs(30),
        )
        .await?;
    // A new page that the cache refuses to store (`Vary: *` makes `cache.put` reject, as a
    // full quota does): the network's answer is still the one shown, not the stale copy.
    let page = std::fs::read_to_string(dist_dir()?.join("index.html"))?;
    let fresh = page.replacen(
        "<head>",
        "<head><meta name=\"orfeas-build\" content=\"fresh\">",
        1,
    );
    anyhow::ensure!(fresh != page, "the page has no <head> to mark");
    rig.server
        .put_file_with("/", "text/html", fresh, &[("vary", "*")]);
    browser.client.refresh().await?;
    let shown = browser
        .wait_for(
            "the fresh page",
            "document.readyState === 'complete' && \
             (document.querySelector('meta[name=orfeas-build]')?.content ?? 'stale')",
            Duration::from_secs(30),
        )
        .await?;
    assert_eq!(shown, "fresh", "the stale cached page was shown");
    browser
        .wait_for(
            "the app on the fresh page",
            "document.querySelector('[data-testid=drop-zone]')",
            Duration::from_secs(30),
        )
        .await?;
    browser.close().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn an_oversize_index_is_refused_before_it_is_read() -> anyhow::Result<()> {
    let _turn = ONE_AT_A_TIME.lock().await;
    let rig = rig().await?;
    // 17 MiB claiming to be the model's index, whose body stalls half-way: read whole (as
    // before), the load would wait for it forever; its declared size is refused at once.
    let mut index = vec![b' '; 17 << 20];
    index[0] = b'{';
    *index.last_mut().unwrap() = b'}';
    let file = "model.safetensors.index.json";
    std::fs::write(rig._models.path().join(MODEL).join(file), index)?;
    rig.server.set_fault(file, Fault::Stall);
    let browser = rig.open("/").await?;
    wait_status(&browser, "failed").await?;
    let error = model_error(&browser).await?;
    assert!(error.contains("over 16777216 bytes"), "{error}");
    browser.close().await;
    Ok(())
}
