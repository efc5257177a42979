//! Background removal in the web app, in a real headless Chromium (WebGPU on SwiftShader),
//! with the ISNet weights the set-up converted: the cut-out appears on a checkerboard as soon as
//! ISNet is ready, while the other model is still loading, with progress while it runs, at the
//! smaller size the app picks by itself on a software adapter (saying so, and offering the full
//! size), and matches the engine's own CPU result pixel for pixel (within a level). With ISNet
//! on the GPU, a GPU reset in the middle of a cut-out runs it again on the new device, from the
//! cache, offline. By default on a software adapter ISNet runs on the CPU (burn's CPU backend
//! in the worker), which a GPU reset does not touch; without WebGPU it runs there too, while the
//! models that need the GPU say why they cannot load.

use std::path::{Path, PathBuf};
use std::time::Duration;

use image::RgbaImage;
use orfeas_engine::background::{Options, remove_background};
use orfeas_tests::browser::{Page, model_attr};
use orfeas_tests::server::Fault;
use orfeas_tests::stage::{self, Stage};
use orfeas_tests::{fixtures, model};

/// SwiftShader is a software adapter: asked to run ISNet on it, the app picks this size by
/// itself (the worker's `SOFTWARE_SIZE`), which keeps one pass to tens of seconds on two cores.
const SIZE: usize = 224;
/// ... and by default it runs ISNet on the CPU instead, at the reference's size.
const CPU_SIZE: usize = 1024;
const TIMEOUT: Duration = Duration::from_secs(600);

fn fixture(name: &str) -> PathBuf {
    fixtures::dir().join(name)
}

/// The cut-out the engine makes natively on the CPU backend at `size`².
fn cpu_cutout(weights: &Path, rgba: &RgbaImage, size: usize) -> anyhow::Result<RgbaImage> {
    let device = orfeas_engine::device::cpu();
    let isnet = orfeas::remove_bg::load_isnet(weights, &device, burn::tensor::DType::F32)?;
    let options = Options {
        size,
        letterbox: false,
    };
    let runtime = tokio::runtime::Builder::new_current_thread().build()?;
    Ok(runtime.block_on(remove_background(&isnet, rgba, &device, &options))?)
}

/// The cut-out the page shows, against the one the engine makes natively on the CPU backend:
/// the photo's colours, and the same matte (IoU ≥ 0.99, at most 0.1 % of alphas off by > 2).
async fn matches_the_native_cutout(
    browser: &impl Page,
    photo: &Path,
    weights: &Path,
    size: usize,
) -> anyhow::Result<()> {
    let url = browser
        .eval("return document.querySelector('[data-testid=cutout-image]').src")
        .await?;
    let png = browser
        .fetch_bytes(url.as_str().unwrap_or_default())
        .await?;
    let shown = image::load_from_memory(&png)?.to_rgba8();
    let original = orfeas_engine::input::decode_image(&std::fs::read(photo)?)?;
    assert_eq!(shown.dimensions(), original.dimensions());
    let expected = tokio::task::spawn_blocking({
        let (original, weights) = (original.clone(), weights.to_path_buf());
        move || cpu_cutout(&weights, &original, size)
    })
    .await??;
    let (mut both, mut either, mut off) = (0usize, 0usize, 0usize);
    for ((s, e), o) in shown.pixels().zip(expected.pixels()).zip(original.pixels()) {
        assert_eq!(s.0[..3], o.0[..3], "the cut-out keeps the photo's colours");
        let (a, b) = (s[3] >= 128, e[3] >= 128);
        both += (a && b) as usize;
        either += (a || b) as usize;
        off += (s[3].abs_diff(e[3]) > 2) as usize;
    }
    let iou = both as f64 / either.max(1) as f64;
    let pixels = (shown.width() * shown.height()) as usize;
    eprintln!(
        "browser vs native CPU backend at {size}²: IoU {iou:.5}, {off} of {pixels} alphas \
         differ by > 2"
    );
    assert!(iou >= 0.99, "IoU {iou}");
    assert!(
        off * 1000 <= pixels,
        "{off} alphas differ by more than 2 levels"
    );
    assert!(both > pixels / 10, "the subject is found ({both} px)");
    Ok(())
}

/// Wait for the cut-out to end (ready or failed) and return its panel's text.
async fn finished_cutout(browser: &impl Page) -> anyhow::Result<String> {
    browser
        .wait_for(
            "the cut-out",
            "['ready', 'failed'].includes(document.querySelector('[data-testid=cutout]')?.dataset.state)",
            TIMEOUT,
        )
        .await?;
    let status = browser
        .eval("return document.querySelector('[data-testid=cutout-status]').innerText")
        .await?;
    Ok(status.as_str().unwrap_or_default().to_string())
}

/// The cut-out panel's `data-<key>` ("none" without a panel, "" without the attribute).
async fn cutout_data(browser: &impl Page, key: &str) -> anyhow::Result<String> {
    Ok(browser
        .eval(&format!(
            "const c = document.querySelector('[data-testid=cutout]'); \
             return c ? (c.dataset.{key} ?? '') : 'none'"
        ))
        .await?
        .as_str()
        .unwrap_or_default()
        .to_string())
}

#[tokio::test(flavor = "multi_thread")]
async fn the_cutout_appears_on_a_checkerboard_while_the_shape_model_still_loads()
-> anyhow::Result<()> {
    let Some(weights) = fixtures::isnet_weights() else {
        return Ok(());
    };
    let models = tempfile::tempdir()?;
    std::os::unix::fs::symlink(&weights, models.path().join("isnet-medium"))?;
    // The "shape model" stand-in never finishes: its last shard stalls half-way.
    let slow = model::generate(
        &models.path().join("shape"),
        "shape",
        2 << 20,
        160 << 10,
        640 << 10,
        21,
    )?;
    let config = stage::config(&[
        ("isnet-medium", "Background removal"),
        ("shape", "Shape generation"),
    ]);
    let stage = Stage::start(models.path(), Some(&config)).await?;
    let server = &stage.server;
    server.set_fault(&slow.shards.last().unwrap().file, Fault::Stall);
    // ISNet's shards wait until the test has seen the cut-out wait for it.
    server.hold("isnet-medium/model-0");
    // ISNet on the GPU, as on a real one (here the app would pick the CPU by itself).
    let browser = stage
        .open("/?debug=1&turntable=0&background_device=gpu")
        .await?;

    // An image picked before ISNet is ready waits for it, and says so.
    browser
        .wait_for(
            "the drop zone",
            "document.querySelector('input[type=file]')",
            Duration::from_secs(30),
        )
        .await?;
    let photo = fixture("isnet_input_0.png");
    browser.choose_file("input[type=file]", &photo).await?;
    let first = browser
        .wait_for(
            "the cut-out panel",
            "document.querySelector('[data-testid=cutout]')?.dataset.state",
            Duration::from_secs(120),
        )
        .await?;
    assert_eq!(
        first, "waiting",
        "ISNet's shards are held: the cut-out must wait"
    );
    let isnet_status = browser
        .eval(&format!("return {}", model_attr("isnet-medium", "status")))
        .await?;
    assert_eq!(isnet_status, "loading");
    server.release();

    // While it runs: a bar partway, the share done, the time so far and an estimate.
    let running = browser
        .wait_for(
            "the cut-out's progress",
            "(() => { const c = document.querySelector('[data-testid=cutout]'); \
               const p = Number(c?.dataset.progress); \
               return c?.dataset.state === 'running' && p > 0 && p < 1 \
                 && c.querySelector('[data-testid=cutout-status]').innerText; })()",
            TIMEOUT,
        )
        .await?;
    let running = running.as_str().unwrap_or_default();
    assert!(
        running.contains(&format!("ISNet at {SIZE}²")) && running.contains("s left"),
        "{running}"
    );

    // The other model is still loading: background removal did not wait for it.
    let shape = browser
        .eval(&format!("return {}", model_attr("shape", "status")))
        .await?;
    assert_eq!(shape, "loading", "the shape model should still be loading");

    // A GPU reset in the middle of the cut-out, with the network gone: the panel says it runs
    // again, ISNet comes back from the cache, and the cut-out is shown; the viewer lost its
    // device too, and a new one shows the same preview again.
    let viewer = "document.querySelector('[data-testid=viewer]').dataset";
    let faces = browser
        .wait_for(
            "the preview",
            &format!("{viewer}.state === 'showing' && {viewer}.faces"),
            TIMEOUT,
        )
        .await?;
    server.set_offline(true);
    browser.click("[data-testid=simulate-gpu-loss]").await?;
    let again = browser
        .wait_for(
            "the re-run notice",
            "(() => { const t = document.querySelector('[data-testid=cutout-status]')?.innerText ?? ''; \
               return t.includes('GPU reset — running again') && t; })()",
            TIMEOUT,
        )
        .await?;
    eprintln!("after the reset: {again}");
    browser
        .wait_for(
            "the viewer's restart",
            "document.querySelector('[data-testid=notices]').innerText.includes('3D viewer starts again')",
            TIMEOUT,
        )
        .await?;
    let shown = browser
        .wait_for(
            "the preview shown again",
            &format!("{viewer}.state === 'showing' && {viewer}.faces"),
            TIMEOUT,
        )
        .await?;
    assert_eq!(shown, faces, "the same preview after the reset");

    browser
        .wait_for(
            "the cut-out",
            "document.querySelector('[data-testid=cutout]')?.dataset.state === 'ready' || \
             document.querySelector('[data-testid=cutout]')?.dataset.state === 'failed'",
            TIMEOUT,
        )
        .await?;
    let status = browser
        .eval("return document.querySelector('[data-testid=cutout-status]').innerText")
        .await?;
    eprintln!("cut-out: {status}");
    assert_eq!(cutout_data(&browser, "state").await?, "ready", "{status}");
    // The smaller size was the app's own choice on this adapter: it says so, and offers the
    // full size.
    let status = status.as_str().unwrap_or_default();
    assert!(status.contains("software renderer"), "{status}");
    assert_eq!(cutout_data(&browser, "device").await?, "gpu");
    let offer = browser
        .eval("return document.querySelector('[data-testid=cutout-full-size]')?.innerText")
        .await?;
    assert_eq!(offer, "Cut out at full size");
    let raw = browser
        .eval("return document.querySelector('[data-testid=cutout] [data-testid=details]')")
        .await?;
    assert!(raw.is_null(), "a finished cut-out shows no error details");
    server.set_offline(false);

    // On a checkerboard, so transparency shows.
    let background = browser
        .eval("return getComputedStyle(document.querySelector('[data-testid=checkerboard]')).backgroundImage")
        .await?;
    assert!(
        background
            .as_str()
            .unwrap_or_default()
            .contains("conic-gradient"),
        "checkerboard background: {background}"
    );
    let shown = browser
        .eval("const i = document.querySelector('[data-testid=cutout-image]'); return i.complete && i.naturalWidth")
        .await?;
    assert_eq!(
        shown, 640,
        "the cut-out image is decoded at the photo's size"
    );

    // Its pixels: the photo's colours, and the engine's CPU matte as alpha.
    matches_the_native_cutout(&browser, &photo, &weights, SIZE).await?;

    // A picture that is already a cut-out is used as it is.
    let files = tempfile::tempdir()?;
    let transparent = files.path().join("cutout.png");
    let mut clear = RgbaImage::from_pixel(64, 48, image::Rgba([200, 30, 30, 255]));
    for (x, _, px) in clear.enumerate_pixels_mut() {
        if x < 16 {
            px[3] = 0;
        }
    }
    clear.save(&transparent)?;
    browser
        .choose_file("input[type=file]", &transparent)
        .await?;
    browser
        .wait_for(
            "the kept cut-out",
            "document.querySelector('[data-testid=cutout]')?.dataset.state === 'kept'",
            Duration::from_secs(60),
        )
        .await?;
    browser.close().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn on_a_software_adapter_the_cutout_runs_on_the_cpu_and_a_gpu_reset_leaves_it_alone()
-> anyhow::Result<()> {
    let Some(weights) = fixtures::isnet_weights() else {
        return Ok(());
    };
    let models = tempfile::tempdir()?;
    std::os::unix::fs::symlink(&weights, models.path().join("isnet-medium"))?;
    let config = stage::config(&[("isnet-medium", "Background removal")]);
    let stage = Stage::start(models.path(), Some(&config)).await?;
    let browser = stage.open("/?debug=1&turntable=0").await?;
    browser
        .wait_for(
            "background removal ready",
            &format!("{} === 'ready'", model_attr("isnet-medium", "status")),
            TIMEOUT,
        )
        .await?;
    let photo = fixture("isnet_input_0.png");
    browser.choose_file("input[type=file]", &photo).await?;
    browser
        .wait_for(
            "the cut-out running",
            "document.querySelector('[data-testid=cutout]')?.dataset.state === 'running'",
            TIMEOUT,
        )
        .await?;
    // A GPU reset meanwhile: ISNet is not on the GPU, so nothing is re-run or reloaded (every
    // status its panel shows from here on is recorded).
    browser
        .eval(
            "const panel = document.querySelector('[data-model=\"isnet-medium\"]'); \
             window.__statuses = []; \
             new MutationObserver(() => window.__statuses.push(panel.dataset.status)) \
               .observe(panel, { attributes: true, attributeFilter: ['data-status'] }); \
             return 1",
        )
        .await?;
    browser.click("[data-testid=simulate-gpu-loss]").await?;
    let status = finished_cutout(&browser).await?;
    eprintln!("cut-out: {status}");
    assert_eq!(cutout_data(&browser, "state").await?, "ready", "{status}");
    assert_eq!(cutout_data(&browser, "device").await?, "cpu", "{status}");
    assert!(
        status.contains(&format!("ISNet at {CPU_SIZE}² on the CPU"))
            && status.contains("software renderer")
            && !status.contains("running again"),
        "{status}"
    );
    let offer = browser
        .eval("return document.querySelector('[data-testid=cutout-full-size]') === null")
        .await?;
    assert_eq!(offer, true, "at the full size already: no offer of it");
    browser
        .wait_for(
            "the GPU restored",
            "document.querySelector('[data-testid=notices]').innerText.includes('GPU restored')",
            TIMEOUT,
        )
        .await?;
    let isnet_status = browser
        .eval(&format!("return {}", model_attr("isnet-medium", "status")))
        .await?;
    assert_eq!(
        isnet_status, "ready",
        "ISNet stays on the CPU through the reset"
    );
    let statuses = browser.eval("return window.__statuses").await?;
    assert_eq!(
        statuses,
        serde_json::json!([]),
        "ISNet's panel changed status through the reset"
    );

    matches_the_native_cutout(&browser, &photo, &weights, CPU_SIZE).await?;
    browser.close().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn without_webgpu_background_removal_still_runs_on_the_cpu() -> anyhow::Result<()> {
    let Some(weights) = fixtures::isnet_weights() else {
        return Ok(());
    };
    // Background removal installed at f16 and q8 side by side: the page loads the q8 set
    // only (half the download), the CPU path takes the int8 convolutions too, and it cuts out
    // what the f16 set does natively.
    let models = q8_models(&weights)?;
    model::generate(
        &models.path().join("shape"),
        "shape",
        2 << 20,
        160 << 10,
        640 << 10,
        23,
    )?;
    let config = stage::config(&[
        ("isnet-medium", "Background removal"),
        ("isnet-medium-q8", "Background removal"),
        ("shape", "Shape generation"),
    ]);
    let stage = Stage::start(models.path(), Some(&config)).await?;
    let browser = stage.open_without_webgpu("/?turntable=0").await?;
    let gpu = browser
        .wait_for(
            "the GPU message",
            "document.querySelector('[data-testid=engine][data-gpu=unavailable] [data-testid=gpu]')?.innerText",
            TIMEOUT,
        )
        .await?;
    assert!(gpu.as_str().unwrap_or_default().contains("WebGPU"), "{gpu}");
    // The model that needs the GPU says so and is not downloaded; ISNet loads, on the CPU.
    browser
        .wait_for(
            "the GPU model failed",
            &format!("{} === 'failed'", model_attr("shape", "status")),
            TIMEOUT,
        )
        .await?;
    let reason = browser
        .eval("return document.querySelector('[data-model=\"shape\"]').innerText")
        .await?;
    assert!(
        reason.as_str().unwrap_or_default().contains("no GPU"),
        "{reason}"
    );
    let isnet = model_attr("isnet-medium-q8", "status");
    browser
        .wait_for(
            "background removal loaded or failed",
            &format!("['ready', 'failed'].includes({isnet})"),
            TIMEOUT,
        )
        .await?;
    let panel = browser
        .eval("return document.querySelector('[data-model=\"isnet-medium-q8\"]').innerText")
        .await?;
    assert_eq!(
        browser.eval(&format!("return {isnet}")).await?,
        "ready",
        "ISNet needs no GPU: {panel}"
    );
    let precision = browser
        .eval(&format!(
            "return {}",
            model_attr("isnet-medium-q8", "precision")
        ))
        .await?;
    assert_eq!(precision, "q8", "{panel}");
    // The f16 sibling is on standby: no card, nothing fetched.
    let f16_card = browser
        .eval("return document.querySelector('[data-model=\"isnet-medium\"]') === null")
        .await?;
    assert_eq!(f16_card, true, "the f16 set has no card");
    let photo = fixture("isnet_input_0.png");
    browser.choose_file("input[type=file]", &photo).await?;
    let status = finished_cutout(&browser).await?;
    eprintln!("cut-out without WebGPU: {status}");
    assert_eq!(cutout_data(&browser, "state").await?, "ready", "{status}");
    assert_eq!(cutout_data(&browser, "device").await?, "cpu", "{status}");
    assert!(
        status.contains(&format!("ISNet at {CPU_SIZE}² on the CPU"))
            && status.contains("no WebGPU"),
        "{status}"
    );
    let shape_downloads = stage
        .server
        .log()
        .iter()
        .filter(|e| e.path.contains("/shape/") && e.path.ends_with(".safetensors"))
        .count();
    assert_eq!(shape_downloads, 0, "no shard of the GPU's model is fetched");
    assert_eq!(
        f16_fetches(&stage),
        0,
        "nothing of the f16 ISNet set is fetched"
    );
    matches_the_native_cutout(&browser, &photo, &weights, CPU_SIZE).await?;
    browser.close().await;
    Ok(())
}

/// The q8 set (ISNet's convolutions in int8, half the download) served as background removal:
/// the page loads it, says so on its card, and cuts the photo out as the f16 set does natively
/// (the same bounds as for the f16 set: IoU ≥ 0.99, ≤ 0.1 % of alphas off by > 2 levels).
async fn q8_cutout(
    browser: impl Page,
    f16: &Path,
    size: usize,
    device: &str,
) -> anyhow::Result<()> {
    let outcome = async {
        let status = browser
            .wait_for(
                "background removal loaded",
                &format!(
                    "['ready', 'failed'].includes({0}) && {0}",
                    model_attr("isnet-medium-q8", "status")
                ),
                TIMEOUT,
            )
            .await?;
        assert_eq!(status, "ready", "{}", browser.page_text().await?);
        let precision = browser
            .eval(&format!(
                "return {}",
                model_attr("isnet-medium-q8", "precision")
            ))
            .await?;
        assert_eq!(precision, "q8");
        let photo = fixture("isnet_input_0.png");
        browser.choose_file("input[type=file]", &photo).await?;
        let status = finished_cutout(&browser).await?;
        eprintln!("q8 cut-out ({device}): {status}");
        assert_eq!(cutout_data(&browser, "state").await?, "ready", "{status}");
        assert_eq!(cutout_data(&browser, "device").await?, device, "{status}");
        if device == "gpu" {
            // The device computes in f16: the int8 weights' f16 scales are read by the
            // dequantizing shader as they are.
            let gpu = browser
                .eval("return document.querySelector('[data-testid=gpu]').innerText")
                .await?;
            assert!(
                gpu.as_str().unwrap_or_default().contains("models in f16"),
                "{gpu}"
            );
        }
        matches_the_native_cutout(&browser, &photo, f16, size).await
    }
    .await;
    browser.close().await;
    outcome
}

/// A q8 ISNet set beside the app (`isnet-medium-q8`, as `orfeas convert-isnet --quant q8 -o
/// …-q8` writes it), and the f16 set as its sibling (`isnet-medium`).
fn q8_models(f16: &Path) -> anyhow::Result<tempfile::TempDir> {
    let models = tempfile::tempdir()?;
    fixtures::requantized(
        f16,
        &models.path().join("isnet-medium-q8"),
        orfeas_engine::weights::Precision::Q8,
    )?;
    std::os::unix::fs::symlink(f16, models.path().join("isnet-medium"))?;
    Ok(models)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_q8_isnet_cuts_out_in_firefox_on_the_gpu_in_f16() -> anyhow::Result<()> {
    // Firefox on lavapipe offers shader-f16: ISNet asked onto the GPU computes in f16 with its
    // convolutions int8 on the device (at the size the app picks on a software adapter).
    let Some(f16) = fixtures::isnet_weights() else {
        return Ok(());
    };
    // The f16 set beside it stays on standby here too (the GPU's fit check reads nothing of it).
    let models = q8_models(&f16)?;
    let config = stage::config(&[
        ("isnet-medium", "Background removal"),
        ("isnet-medium-q8", "Background removal"),
    ]);
    let stage = Stage::start(models.path(), Some(&config)).await?;
    let page = stage
        .open_firefox("/?turntable=0&background_device=gpu")
        .await?;
    q8_cutout(page, &f16, SIZE, "gpu").await?;
    assert_eq!(
        f16_fetches(&stage),
        0,
        "nothing of the f16 ISNet set is fetched"
    );
    Ok(())
}

/// Requests for the f16 ISNet set (`isnet-medium/`, on standby beside its q8 sibling).
fn f16_fetches(stage: &Stage) -> usize {
    stage
        .server
        .log()
        .iter()
        .filter(|e| e.path.contains("/isnet-medium/"))
        .count()
}
