//! Web app benchmark in headless Chromium against the built app (`trunk build --release`), on
//! generated fp16 shard sets served from loopback. Prints, from one run:
//! - first paint and interactive with a large model configured vs none (ratio ~1: the UI must
//!   not depend on model size);
//! - load throughput ÷ raw fetch-and-discard throughput of the same shards in the same page;
//! - time to ready ÷ pure download time;
//! - the engine's wasm memory after loading each set (it never shrinks, so it is the peak);
//! - a reload from the verified cache;
//! - the smallest set again over a throttled link, where the network, not the loader, is the
//!   limit.
//!
//! - with `--cutout`: background removal of a 512 × 512 photo in a fresh page (as a first
//!   visit: GPU code compiled on the way) and of a second photo in the same page, with the
//!   device and size the app picks by itself, with ISNet on the GPU (`?background_device=gpu`,
//!   at once and after its warm-up) and at each `--cutout-sizes` (`?background_size=`), side by
//!   side.
//!
//! Usage: bench-web [--sizes-mib 128,512] [--paint-runs 3] [--link-mbps 200]
//!   [--cutout --cutout-sizes 160,320]

use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use orfeas_tests::browser::{Browser, Chromedriver, Page, model_attr};
use orfeas_tests::server::{Server, Throttle};
use orfeas_tests::{dist_dir, model};
use serde_json::Value;

#[derive(Parser)]
struct Args {
    /// Shard-set sizes to load, MiB (the largest is also the one configured for first paint).
    #[arg(long, value_delimiter = ',', default_values_t = [128u64, 512])]
    sizes_mib: Vec<u64>,
    /// Page loads per first-paint scenario (the median is printed).
    #[arg(long, default_value_t = 3)]
    paint_runs: usize,
    /// Also load the smallest set over a link of this many Mbit/s (the server throttles shard
    /// bodies), to compare with a real network rather than loopback; 0 skips it.
    #[arg(long, default_value_t = 200)]
    link_mbps: u64,
    /// Time background removal too (needs the ISNet weights set-up converts).
    #[arg(long)]
    cutout: bool,
    /// ISNet sizes to time besides the app's own choice (`?background_size=`, on the device the
    /// app picks).
    #[arg(long, value_delimiter = ',', default_values_t = [160usize, 320])]
    cutout_sizes: Vec<usize>,
    /// Only the cut-out benchmark.
    #[arg(long)]
    cutout_only: bool,
    /// The viewer's output for the cut-out pages (`direct`, `readback`; default: its probe).
    #[arg(long)]
    viewer: Option<String>,
}

/// Seconds from picking `photo` to its cut-out on screen (the page's clock), and the message.
async fn cutout_seconds(
    browser: &Browser,
    photo: &std::path::Path,
) -> anyhow::Result<(f64, String)> {
    browser
        .eval("window.__picked = performance.now(); return 1")
        .await?;
    browser.choose_file("input[type=file]", photo).await?;
    let state = "document.querySelector('[data-testid=cutout]')?.dataset.state";
    browser
        .wait_for(
            "the cut-out started",
            &format!("{state} === 'running'"),
            READY,
        )
        .await?;
    let done = browser
        .wait_for(
            "the cut-out",
            &format!(
                "{state} === 'ready' && [(performance.now() - window.__picked) / 1000, \
                 document.querySelector('[data-testid=cutout-status]').innerText]"
            ),
            READY,
        )
        .await?;
    Ok((
        number(&done[0]),
        done[1].as_str().unwrap_or_default().to_string(),
    ))
}

/// The cut-out benchmark (see the module doc): (label, first s, second s, message) per size.
async fn cutouts(
    driver: &Chromedriver,
    sizes: &[usize],
    viewer: Option<&str>,
) -> anyhow::Result<Vec<(String, f64, f64, String)>> {
    let weights = orfeas::remove_bg::default_isnet_dir();
    anyhow::ensure!(
        weights.join(orfeas_engine::weights::INDEX_FILE).is_file(),
        "no ISNet weights at {} (run scripts/setup.sh)",
        weights.display()
    );
    let models = tempfile::tempdir()?;
    std::os::unix::fs::symlink(&weights, models.path().join("isnet-medium"))?;
    let server = Server::start(&dist_dir()?, models.path()).await?;
    server.put_file(
        "orfeas.json",
        "application/json",
        r#"{"models":[{"id":"isnet-medium"}]}"#,
    );
    // Two 512 × 512 photos from the fixture pictures.
    let photos = tempfile::tempdir()?;
    let mut files = Vec::new();
    for i in 0..2 {
        let source = orfeas_tests::fixtures::dir().join(format!("isnet_input_{i}.png"));
        let picture = image::open(&source)?.resize_exact(512, 512, image::imageops::Triangle);
        let file = photos.path().join(format!("photo{i}.png"));
        picture.to_rgb8().save(&file)?;
        files.push(file);
    }
    let mut results = Vec::new();
    // The app's own choice picked at once; ISNet on the GPU (the app's choice where the GPU is
    // not a software renderer) picked at once, while its warm-up runs, and after it (a user who
    // takes a moment to choose); then each size on the app's device, picked at once.
    let gpu = "&background_device=gpu".to_string();
    let mut choices = vec![
        ("app's choice, at once".to_string(), String::new(), false),
        ("GPU, at once".to_string(), gpu.clone(), false),
        ("GPU, after warm-up".to_string(), gpu, true),
    ];
    for size in sizes {
        let label = format!("{size}², at once");
        choices.push((label, format!("&background_size={size}"), false));
    }
    for (label, mut query, after_warm_up) in choices {
        if let Some(viewer) = viewer {
            query.push_str(&format!("&viewer={viewer}"));
        }
        let browser = Browser::open(driver, true).await?;
        browser
            .goto(&server.url(&format!("/?turntable=0{query}")))
            .await?;
        browser
            .wait_for(
                "background removal ready",
                &format!("{} === 'ready'", model_attr("isnet-medium", "status")),
                READY,
            )
            .await?;
        if after_warm_up {
            browser
                .wait_for(
                    "the warm-up",
                    &format!("{} !== ''", model_attr("isnet-medium", "warmS")),
                    READY,
                )
                .await?;
        }
        let (first, message) = cutout_seconds(&browser, &files[0]).await?;
        let (second, _) = cutout_seconds(&browser, &files[1]).await?;
        browser.close().await;
        eprintln!("cut-out {label}: {first:.1} s, then {second:.1} s ({message})");
        results.push((label, first, second, message));
    }
    Ok(results)
}

const READY: Duration = Duration::from_secs(900);

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn number(value: &Value) -> f64 {
    value
        .as_f64()
        .or_else(|| value.as_str().and_then(|s| s.parse().ok()))
        .unwrap_or(f64::NAN)
}

async fn mark(browser: &Browser, name: &str) -> anyhow::Result<f64> {
    let value = browser
        .wait_for(
            name,
            &format!("performance.getEntriesByName('{name}')[0]?.startTime"),
            READY,
        )
        .await?;
    Ok(number(&value))
}

/// First contentful paint and the app's "interactive" mark, ms since navigation.
async fn paint(driver: &Chromedriver, url: &str) -> anyhow::Result<(f64, f64)> {
    let browser = Browser::open(driver, true).await?;
    browser.goto(url).await?;
    browser
        .wait_for(
            "the shell",
            "document.querySelector('[data-testid=drop-zone]')",
            Duration::from_secs(60),
        )
        .await?;
    let fcp = mark(&browser, "first-contentful-paint").await?;
    let interactive = mark(&browser, "orfeas-interactive").await?;
    browser.close().await;
    Ok((fcp, interactive))
}

struct LoadRun {
    label: String,
    mib: u64,
    bytes: f64,
    ready_ms: f64,
    load_s: f64,
    raw_s: f64,
    heap: f64,
    cached_ready_ms: f64,
    cached_load_s: f64,
}

async fn load(
    driver: &Chromedriver,
    server: &Server,
    id: &str,
    mib: u64,
    shard_urls: &[String],
) -> anyhow::Result<LoadRun> {
    let browser = Browser::open(driver, true).await?;
    browser
        .goto(&server.url(&format!("/?config=cfg-{id}.json")))
        .await?;
    let ready_ms = mark(&browser, &format!("orfeas-ready:{id}")).await?;
    let panel = browser
        .eval(&format!(
            "return [{}, {}, {}, document.querySelector('[data-testid=engine]').dataset.wasmHeap]",
            model_attr(id, "status"),
            model_attr(id, "loadS"),
            model_attr(id, "bytes")
        ))
        .await?;
    anyhow::ensure!(panel[0] == "ready", "{id} did not load: {panel}");
    let load_s = number(&panel[1]);
    let bytes = number(&panel[2]);
    let heap = number(&panel[3]);

    // The same shards, fetched and discarded by the page itself.
    let urls = serde_json::to_string(shard_urls)?;
    browser
        .eval(&format!(
            "window.__raw = null; (async () => {{
                const t0 = performance.now(); let n = 0;
                for (const url of {urls}) {{
                    const reader = (await fetch(url, {{ cache: 'no-store' }})).body.getReader();
                    for (;;) {{ const r = await reader.read(); if (r.done) break; n += r.value.byteLength; }}
                }}
                window.__raw = [(performance.now() - t0) / 1000, n];
            }})(); return true;"
        ))
        .await?;
    let raw = browser
        .wait_for("the raw fetch", "window.__raw", READY)
        .await?;
    let raw_s = number(&raw[0]);
    anyhow::ensure!(number(&raw[1]) == bytes, "raw fetch read {} bytes", raw[1]);

    // A second visit: everything from the verified cache.
    browser.client.refresh().await?;
    let cached_ready_ms = mark(&browser, &format!("orfeas-ready:{id}")).await?;
    let cached_load_s = number(
        &browser
            .eval(&format!("return {}", model_attr(id, "loadS")))
            .await?,
    );
    browser.close().await;
    Ok(LoadRun {
        label: format!("{mib}MiB"),
        mib,
        bytes,
        ready_ms,
        load_s,
        raw_s,
        heap,
        cached_ready_ms,
        cached_load_s,
    })
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let dist = dist_dir()?;
    if args.cutout_only {
        let driver = Chromedriver::start().await?;
        return print_cutouts(&cutouts(&driver, &args.cutout_sizes, args.viewer.as_deref()).await?);
    }
    let models = tempfile::tempdir()?;
    let mut sets = Vec::new();
    for &mib in &args.sizes_mib {
        let id = format!("bench{mib}");
        eprintln!("generating a {mib} MiB shard set…");
        let index = model::generate(
            &models.path().join(&id),
            &id,
            mib << 20,
            4 << 20,
            orfeas_engine::weights::pack::DEFAULT_SHARD_SIZE,
            mib,
        )
        .with_context(|| format!("generating {id}"))?;
        let urls: Vec<String> = index
            .shards
            .iter()
            .map(|s| format!("/models/{id}/{}", s.file))
            .collect();
        sets.push((id, mib, urls));
    }
    let server = Server::start(&dist, models.path()).await?;
    for (id, _, _) in &sets {
        server.put_file(
            &format!("cfg-{id}.json"),
            "application/json",
            format!(r#"{{"models":[{{"id":"{id}","label":"{id}"}}]}}"#),
        );
    }
    let driver = Chromedriver::start().await?;

    let (largest, largest_mib, _) = sets
        .iter()
        .max_by_key(|(_, mib, _)| *mib)
        .context("no sizes")?;
    let mut with_model = (Vec::new(), Vec::new());
    let mut without = (Vec::new(), Vec::new());
    for _ in 0..args.paint_runs {
        let (fcp, tti) = paint(
            &driver,
            &server.url(&format!("/?config=cfg-{largest}.json")),
        )
        .await?;
        with_model.0.push(fcp);
        with_model.1.push(tti);
        let (fcp, tti) = paint(&driver, &server.url("/?models=none")).await?;
        without.0.push(fcp);
        without.1.push(tti);
    }

    let mut runs = Vec::new();
    for (id, mib, urls) in &sets {
        eprintln!("loading {id} in Chromium…");
        runs.push(load(&driver, &server, id, *mib, urls).await?);
    }

    if args.link_mbps > 0
        && let Some((id, mib, urls)) = sets.iter().min_by_key(|(_, mib, _)| *mib)
    {
        eprintln!("loading {id} over a {} Mbit/s link…", args.link_mbps);
        server.set_throttle(Throttle {
            first_byte_delay: Duration::ZERO,
            bytes_per_sec: Some(args.link_mbps * 1_000_000 / 8),
        });
        let mut run = load(&driver, &server, id, *mib, urls).await?;
        run.label = format!("{mib}MiB@{}M", args.link_mbps);
        server.set_throttle(Throttle::default());
        runs.push(run);
    }

    let (ui_wasm, ui_gzipped) = orfeas_tests::ui_bundle_size(&dist)?;
    let engine_wasm = std::fs::metadata(dist.join("orfeas-worker_bg.wasm"))?.len();
    println!(
        "Orfeas web app benchmark: headless Chromium (WebGPU on SwiftShader, f32), loopback HTTP"
    );
    println!(
        "bundles: UI {} KB ({} KB gzipped, bound {} KB: ratio={:.3}), engine {:.1} MB (uncompressed)",
        ui_wasm / 1000,
        ui_gzipped / 1000,
        orfeas_tests::UI_BUNDLE_GZIP_BOUND / 1000,
        ui_gzipped as f64 / orfeas_tests::UI_BUNDLE_GZIP_BOUND as f64,
        engine_wasm as f64 / 1e6
    );
    println!();
    println!(
        "first paint / interactive, median of {} page loads:",
        args.paint_runs
    );
    let (fcp_m, tti_m) = (median(with_model.0), median(with_model.1));
    let (fcp_0, tti_0) = (median(without.0), median(without.1));
    println!(
        "  {largest_mib} MiB model configured: first paint {fcp_m:.0} ms, interactive {tti_m:.0} ms"
    );
    println!("  no models:             first paint {fcp_0:.0} ms, interactive {tti_0:.0} ms");
    println!(
        "  ratio (model / none):  first paint {:.2}, interactive {:.2}",
        fcp_m / fcp_0,
        tti_m / tti_0
    );
    println!();
    println!(
        "{:>13} {:>11} {:>10} {:>10} {:>8} {:>12} {:>10} {:>12} {:>12}",
        "set",
        "load MiB/s",
        "raw MiB/s",
        "load/raw",
        "ready s",
        "ready/raw dl",
        "wasm heap",
        "cached ready",
        "cached MiB/s"
    );
    for run in &runs {
        let mibs = run.bytes / (1 << 20) as f64;
        println!(
            "{:>13} {:>11.0} {:>10.0} {:>10.2} {:>8.2} {:>12.2} {:>8.0}MB {:>10.2} s {:>12.0}",
            run.label,
            mibs / run.load_s,
            mibs / run.raw_s,
            run.raw_s / run.load_s,
            run.ready_ms / 1000.0,
            run.ready_ms / 1000.0 / run.raw_s,
            run.heap / 1e6,
            run.cached_ready_ms / 1000.0,
            mibs / run.cached_load_s,
        );
    }
    let loopback: Vec<&LoadRun> = runs.iter().filter(|r| !r.label.contains('@')).collect();
    if let (Some(small), Some(big)) = (loopback.first(), loopback.last())
        && loopback.len() > 1
    {
        println!(
            "wasm heap {} MiB set / {} MiB set: {:.2} (flat means it does not grow with the model)",
            big.mib,
            small.mib,
            big.heap / small.heap
        );
    }
    if args.cutout {
        println!();
        print_cutouts(&cutouts(&driver, &args.cutout_sizes, args.viewer.as_deref()).await?)?;
    }
    Ok(())
}

fn print_cutouts(results: &[(String, f64, f64, String)]) -> anyhow::Result<()> {
    println!(
        "background removal of a 512 × 512 photo, picked as soon as ISNet is ready or after its \
         warm-up, then a second photo (seconds from picking to the cut-out on screen):"
    );
    let base = results.first().map_or(f64::NAN, |r| r.1);
    for (label, first, second, message) in results {
        println!(
            "  {label:>28}: first {first:>6.1} s, second {second:>6.1} s  ratio={:.2} (first ÷ app's choice)  [{message}]",
            first / base
        );
    }
    Ok(())
}
