//! Image → 3D in the web app, in real headless browsers: the fixture shape model (converted
//! from the official layout by `orfeas convert`) streams in as three shard sets; Generate runs
//! the pipeline in the engine worker and the mesh reaches the viewer and its downloads,
//! matching the engine's own run on the CPU backend.
//!
//! Chromium's WebGPU runs on SwiftShader without `shader-f16` (f32 compute); Firefox's runs on
//! lavapipe with it (f16 compute: the real user's path). The model is installed at f16 and q4
//! side by side (`hunyuan3d/`, `hunyuan3d-q4/`): each browser runs the q4 sets (the default,
//! the smallest that fits; their weights stay quantized on the browser's GPU) and the f16 sets
//! (asked for with `?quant=f16`); in Chromium the user also switches precision on the card.

use std::time::Duration;

use orfeas_engine::mesh::cleanup;
use orfeas_engine::pipeline::{COMPONENTS, GenerateOptions, View, load_shape_model};
use orfeas_engine::recenter::{SIZE, shape_input};
use orfeas_engine::weights::Precision;
use orfeas_engine::weights::source::DirSource;
use orfeas_tests::browser::{Page, model_attr};
use orfeas_tests::fixtures;
use orfeas_tests::stage::{self, Stage};

const TIMEOUT: Duration = Duration::from_secs(300);

/// Faces, bounds and mean vertex colour of a mesh.
type Reference = (usize, [f32; 3], [f32; 3], [f64; 3]);

/// Faces, bounds and mean colour of the engine's own run on the CPU backend, with the page's
/// settings.
fn cpu_reference(
    model_dir: &std::path::Path,
    seed: u64,
    faces: usize,
    flashvdm: bool,
) -> anyhow::Result<Reference> {
    let front = [(View::Front, "preprocess_input_0.png")];
    cpu_reference_with(model_dir, &front, seed, faces, flashvdm)
}

/// [`cpu_reference`] from several views of the object (fixture pictures with transparency,
/// so no background removal), the front first.
fn cpu_reference_of_views(
    model_dir: &std::path::Path,
    views: &[(View, &str)],
    seed: u64,
    faces: usize,
) -> anyhow::Result<Reference> {
    cpu_reference_with(model_dir, views, seed, faces, false)
}

/// [`cpu_reference_of_views`], the field decoded FlashVDM's way or not.
fn cpu_reference_with(
    model_dir: &std::path::Path,
    views: &[(View, &str)],
    seed: u64,
    faces: usize,
    flashvdm: bool,
) -> anyhow::Result<Reference> {
    let device = orfeas_engine::device::cpu();
    let runtime = tokio::runtime::Builder::new_current_thread().build()?;
    let sources = COMPONENTS.map(|c| DirSource::new(model_dir.join(c)));
    let model = runtime
        .block_on(load_shape_model(
            [&sources[0], &sources[1], &sources[2]],
            &device,
            burn::tensor::DType::F32,
            |_, _| {},
        ))
        .map_err(anyhow::Error::msg)?;
    let mut inputs = Vec::new();
    let mut pictures = Vec::new();
    for (view, file) in views {
        let png = std::fs::read(fixtures::dir().join(file))?;
        let picture = orfeas_engine::input::decode_image(&png)?;
        inputs.push((*view, shape_input(&picture, SIZE)?));
        pictures.push((*view, picture));
    }
    let inputs: Vec<(View, &[f32])> = inputs
        .iter()
        .map(|(view, input)| (*view, input.image.as_slice()))
        .collect();
    let options = GenerateOptions {
        steps: Some(4),
        resolution: 32,
        seed,
        flashvdm,
        ..GenerateOptions::default()
    };
    let surface = runtime
        .block_on(model.generate_views(&inputs, SIZE, SIZE, &options, |_| {}, || false))
        .map_err(anyhow::Error::msg)?;
    let mesh = cleanup::official(surface.mesh, faces);
    let (lo, hi) = mesh.bounds().ok_or_else(|| anyhow::anyhow!("no mesh"))?;
    // The pictures have transparency: each is its own cut-out.
    let cutouts: Vec<(View, &image::RgbaImage)> = pictures.iter().map(|(v, p)| (*v, p)).collect();
    let colours = orfeas_engine::mesh::colour::colour_vertices(&mesh, &cutouts);
    Ok((mesh.triangles.len(), lo, hi, mean_colour(&colours)))
}

/// The mean of per-vertex colours, per channel.
fn mean_colour(colours: &[[u8; 3]]) -> [f64; 3] {
    let n = colours.len().max(1) as f64;
    std::array::from_fn(|c| colours.iter().map(|v| f64::from(v[c])).sum::<f64>() / n)
}

/// The browsers, and what each computes in.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Browser {
    /// SwiftShader: no `shader-f16`.
    Chromium,
    /// lavapipe: `shader-f16`.
    Firefox,
}

/// The page's seed: one at which the random-weight fixture model finds a surface with either
/// precision on the CPU backend at these settings (398 faces with f16 weights, 52 with q4;
/// with q4 weights it finds none at seeds 2, 4, 5, 7 and 9).
const SEED: u64 = 8;

#[tokio::test(flavor = "multi_thread")]
async fn generate_runs_the_shape_model_in_the_browser_and_shows_the_mesh() -> anyhow::Result<()> {
    generate_in_the_browser(Browser::Chromium, Precision::F16).await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_q4_model_generates_in_chromium_computing_in_f32() -> anyhow::Result<()> {
    generate_in_the_browser(Browser::Chromium, Precision::Q4).await
}

#[tokio::test(flavor = "multi_thread")]
async fn the_shape_model_generates_in_firefox_computing_in_f16() -> anyhow::Result<()> {
    generate_in_the_browser(Browser::Firefox, Precision::F16).await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_q4_model_generates_in_firefox_computing_in_f16() -> anyhow::Result<()> {
    generate_in_the_browser(Browser::Firefox, Precision::Q4).await
}

async fn generate_in_the_browser(which: Browser, precision: Precision) -> anyhow::Result<()> {
    // The shape model installed at two precisions side by side, as `orfeas quantize` writes
    // them: the page loads one of them.
    let models = tempfile::tempdir()?;
    let f16 = models.path().join("hunyuan3d");
    let q4 = models.path().join("hunyuan3d-q4");
    fixtures::converted_shape_model_at(&f16, Precision::F16)?;
    fixtures::converted_shape_model_at(&q4, Precision::Q4)?;
    let labels = ["Image encoder", "Denoiser", "Shape decoder"];
    let ids: Vec<(String, &str)> = ["hunyuan3d", "hunyuan3d-q4"]
        .iter()
        .flat_map(|folder| {
            COMPONENTS
                .iter()
                .zip(labels)
                .map(move |(part, label)| (format!("{folder}/{part}"), label))
        })
        .collect();
    let ids: Vec<(&str, &str)> = ids.iter().map(|(id, l)| (id.as_str(), *l)).collect();
    let stage = Stage::start(models.path(), Some(&stage::config(&ids))).await?;
    // q4 is the default (the smallest installed that fits); f16 is asked for in the address.
    let quant = match precision {
        Precision::Q4 => "",
        other => &format!("&quant={other}"),
    };
    // The q4 run in Firefox decodes FlashVDM's way (the official enable_flashvdm), f16 on the
    // GPU: each group's key/value selection ranked on the host, as the engine does everywhere.
    let flashvdm = if flashvdm(which, precision) {
        "&flashvdm=1"
    } else {
        ""
    };
    let page = format!("/?steps=4&octree_resolution=32&seed={SEED}&turntable=0{quant}{flashvdm}");
    let sets = Sets { f16, q4 };
    match which {
        Browser::Chromium => {
            generate_and_close(stage.open(&page).await?, which, precision, &sets).await
        }
        Browser::Firefox => {
            generate_and_close(stage.open_firefox(&page).await?, which, precision, &sets).await
        }
    }
}

/// The page's seed for the multi-view fixture model: at these settings on the CPU backend it
/// finds 806 faces from the front and back pictures, 1 520 from the front alone (seeds 0–11
/// all find a surface; the back view changes it at each).
const VIEWS_SEED: u64 = 0;

/// A 2mv model (the fixture model behind the official multi-view encoder) in Firefox, f16
/// compute: the page offers a drop zone for each of its other views, the user gives a back
/// view (and takes a left one away again), and Generate runs on the front and back: its
/// message names them, and its mesh is the CPU backend's from the same two views.
#[tokio::test(flavor = "multi_thread")]
async fn a_multi_view_model_generates_from_the_views_given_in_firefox_computing_in_f16()
-> anyhow::Result<()> {
    let models = tempfile::tempdir()?;
    let dir = models.path().join("hunyuan3d");
    fixtures::converted_multi_view_shape_model(&dir)?;
    let labels = ["Image encoder", "Denoiser", "Shape decoder"];
    let ids: Vec<String> = COMPONENTS
        .iter()
        .map(|part| format!("hunyuan3d/{part}"))
        .collect();
    let ids: Vec<(&str, &str)> = ids.iter().map(String::as_str).zip(labels).collect();
    let stage = Stage::start(models.path(), Some(&stage::config(&ids))).await?;
    let page = format!("/?steps=4&octree_resolution=32&seed={VIEWS_SEED}&turntable=0");
    let browser = stage.open_firefox(&page).await?;
    let outcome = generate_from_views(&browser, &dir).await;
    browser.close().await;
    outcome
}

async fn generate_from_views(browser: &impl Page, dir: &std::path::Path) -> anyhow::Result<()> {
    wait_for_set(browser, Precision::F16).await?;
    // A zone for each view the model's table has besides the front.
    let offered = browser
        .wait_for(
            "the zones of the other views",
            "(() => { const s = document.querySelector('[data-testid=views]'); \
             return s && !s.hidden && [...s.querySelectorAll('[data-view]')] \
               .filter(v => !v.hidden).map(v => v.dataset.view); })()",
            TIMEOUT,
        )
        .await?;
    assert_eq!(offered, serde_json::json!(["left", "back", "right"]));
    let front = fixtures::dir().join("preprocess_input_0.png");
    let back = fixtures::dir().join("preprocess_input_1.png");
    browser.choose_file("input[type=file]", &front).await?;
    browser
        .wait_for(
            "the cut-out",
            "document.querySelector('[data-testid=cutout]')?.dataset.state === 'kept'",
            Duration::from_secs(60),
        )
        .await?;
    browser.choose_file("[data-view=back] input", &back).await?;
    // A left view given, then taken away: the generation goes without it.
    browser
        .choose_file("[data-view=left] input", &front)
        .await?;
    let thumb = |view: &str| format!("!document.querySelector('[data-view={view}] img').hidden");
    browser
        .wait_for(
            "the left view's thumbnail",
            &thumb("left"),
            Duration::from_secs(10),
        )
        .await?;
    browser.click("[data-view=left] button").await?;
    browser
        .wait_for(
            "the back view's thumbnail alone",
            &format!("{} && !({})", thumb("back"), thumb("left")),
            Duration::from_secs(10),
        )
        .await?;
    browser.click("[data-testid=generate]").await?;
    let outcome = browser
        .wait_for(
            "the generation",
            "(() => { const s = document.querySelector('[data-testid=request-status]'); \
             return (s.dataset.state === 'done' || s.dataset.state === 'error') \
               && [s.dataset.state, s.innerText]; })()",
            TIMEOUT,
        )
        .await?;
    eprintln!("generation from views: {outcome}");
    assert_eq!(outcome[0], "done", "{outcome}");
    assert!(
        outcome[1]
            .as_str()
            .unwrap_or_default()
            .contains("from the front, back views"),
        "{outcome}"
    );
    let gpu = browser
        .eval("return document.querySelector('[data-testid=gpu]').innerText")
        .await?;
    assert!(
        gpu.as_str().unwrap_or_default().contains("models in f16"),
        "{gpu}"
    );
    browser
        .wait_for(
            "the shape in the viewer",
            "document.querySelector('[data-testid=mesh-label]')?.innerText.includes('Shape')",
            Duration::from_secs(30),
        )
        .await?;
    let (faces, bounds, _) = downloaded_glb(browser).await?;
    let dir = dir.to_path_buf();
    let ((cpu_faces, lo, hi, _), (front_faces, ..)) = tokio::task::spawn_blocking(move || {
        let views = [
            (View::Front, "preprocess_input_0.png"),
            (View::Back, "preprocess_input_1.png"),
        ];
        anyhow::Ok((
            cpu_reference_of_views(&dir, &views, VIEWS_SEED, cleanup::MAX_FACES)?,
            cpu_reference_of_views(&dir, &views[..1], VIEWS_SEED, cleanup::MAX_FACES)?,
        ))
    })
    .await??;
    eprintln!(
        "views in Firefox: {faces} faces, bounds {bounds:?}; CPU backend: {cpu_faces} faces, \
         {lo:?}..{hi:?} ({front_faces} from the front alone)"
    );
    // The back view reached the model: the front alone makes another shape.
    let from_front = faces as f64 / front_faces as f64;
    assert!(
        !(0.8..=1.25).contains(&from_front),
        "{faces} faces, as from the front alone ({front_faces})"
    );
    let ratio = faces as f64 / cpu_faces as f64;
    assert!(
        (0.95..=1.05).contains(&ratio),
        "{faces} vs {cpu_faces} faces"
    );
    for d in 0..3 {
        assert!((bounds.min[d] - lo[d]).abs() < 0.05, "{bounds:?} vs {lo:?}");
        assert!((bounds.max[d] - hi[d]).abs() < 0.05, "{bounds:?} vs {hi:?}");
    }
    Ok(())
}

/// The GLB download (it re-parses): its faces, bounds and mean vertex colour (`None`: no
/// COLOR_0).
async fn downloaded_glb(
    browser: &impl Page,
) -> anyhow::Result<(usize, gltf::mesh::Bounds<[f32; 3]>, Option<[f64; 3]>)> {
    let href = browser
        .eval("return document.querySelector('a.download[data-format=glb]').href")
        .await?;
    let glb = browser
        .fetch_bytes(href.as_str().unwrap_or_default())
        .await?;
    let gltf = gltf::Gltf::from_slice(&glb)?;
    let primitive = gltf.meshes().next().unwrap().primitives().next().unwrap();
    let faces = primitive.indices().map_or(0, |i| i.count()) / 3;
    let blob = gltf.blob.as_deref();
    let reader = primitive.reader(|_| blob);
    let colour = reader.read_colors(0).map(|colours| {
        let colours: Vec<[u8; 3]> = colours.into_rgb_u8().collect();
        mean_colour(&colours)
    });
    Ok((faces, primitive.bounding_box(), colour))
}

/// Which run has the colour switch turned off: f16 in Chromium.
fn grey(which: Browser, precision: Precision) -> bool {
    which == Browser::Chromium && precision == Precision::F16
}

/// Which run decodes FlashVDM's way: q4 in Firefox.
fn flashvdm(which: Browser, precision: Precision) -> bool {
    which == Browser::Firefox && precision == Precision::Q4
}

/// The shape model's two installed precisions.
struct Sets {
    f16: std::path::PathBuf,
    q4: std::path::PathBuf,
}

impl Sets {
    fn folder(precision: Precision) -> &'static str {
        match precision {
            Precision::Q4 => "hunyuan3d-q4",
            _ => "hunyuan3d",
        }
    }

    fn dir(&self, precision: Precision) -> &std::path::Path {
        match precision {
            Precision::Q4 => &self.q4,
            _ => &self.f16,
        }
    }

    /// A set's download: its three indexes' shard files.
    fn bytes(&self, precision: Precision) -> anyhow::Result<u64> {
        let mut total = 0;
        for part in COMPONENTS {
            let path = self
                .dir(precision)
                .join(part)
                .join(orfeas_engine::weights::INDEX_FILE);
            total +=
                orfeas_engine::weights::ShardIndex::from_json(&std::fs::read(path)?)?.total_bytes();
        }
        Ok(total)
    }
}

/// The shape model's card: the precision in use, why, and each installed one with its size.
async fn quant_card(browser: &impl Page) -> anyhow::Result<(String, String, Vec<(String, u64)>)> {
    let card = browser
        .eval(
            "const c = document.querySelector('[data-testid=shape-quant]'); \
             return c && [c.dataset.chosen, \
               c.querySelector('[data-testid=shape-quant-because]').innerText, \
               [...c.querySelectorAll('[data-precision]')] \
                 .map(o => [o.dataset.precision, Number(o.dataset.bytes)])]",
        )
        .await?;
    Ok(serde_json::from_value(card)?)
}

/// Every part of the set at `precision` ready, and the other set's parts not on the page.
async fn wait_for_set(browser: &impl Page, precision: Precision) -> anyhow::Result<()> {
    let folder = Sets::folder(precision);
    for part in COMPONENTS {
        browser
            .wait_for(
                &format!("{folder}/{part} ready"),
                &format!(
                    "{} === 'ready'",
                    model_attr(&format!("{folder}/{part}"), "status")
                ),
                TIMEOUT,
            )
            .await?;
        // Its card names the precision its index gives.
        let shown = browser
            .eval(&format!(
                "return {}",
                model_attr(&format!("{folder}/{part}"), "precision")
            ))
            .await?;
        assert_eq!(shown, precision.name(), "{folder}/{part}'s card");
    }
    let others = browser
        .eval(&format!(
            "return [...document.querySelectorAll('[data-model]')] \
               .map(p => p.dataset.model).filter(m => m.includes('/') && !m.startsWith('{folder}/'))"
        ))
        .await?;
    assert_eq!(
        others,
        serde_json::json!([]),
        "only the set in use is shown"
    );
    Ok(())
}

/// The user picks the other precision on the card: its set loads and the one in use goes; the
/// choice outlives a reload of the page.
async fn switch_precision(browser: &impl Page, to: Precision) -> anyhow::Result<()> {
    browser
        .click(&format!("[data-testid=quant-{}]", to.name()))
        .await?;
    wait_for_set(browser, to).await?;
    let (chosen, because, _) = quant_card(browser).await?;
    assert_eq!(chosen, to.name());
    assert!(because.contains("your choice"), "{because}");
    browser.eval("location.reload(); return 1").await?;
    browser
        .wait_for(
            "the card after the reload",
            "document.querySelector('[data-testid=shape-quant]')?.dataset.chosen",
            TIMEOUT,
        )
        .await?;
    wait_for_set(browser, to).await?;
    let (chosen, because, _) = quant_card(browser).await?;
    assert_eq!(chosen, to.name());
    assert!(because.contains("earlier visit"), "{because}");
    Ok(())
}

/// The user stops a generation once its first sampler step is done: it stops at the next
/// step (the message says where, before the last step and the field's decoding), no shape
/// reaches the viewer, and Generate is offered again (the generation that follows in
/// [`generate`] runs on the same worker).
async fn stop_a_generation(browser: &impl Page) -> anyhow::Result<()> {
    // Stop is clicked the moment the status shows sampling (one observer on the section).
    let disabled = browser
        .eval(
            "const section = document.querySelector('section.generate'); \
             const s = section.querySelector('[data-testid=request-status]'); \
             const stop = section.querySelector('[data-testid=stop]'); \
             window.__stopAt = null; \
             new MutationObserver((_, o) => { \
               if (s.innerText.includes('sampling') && !stop.disabled) { \
                 window.__stopAt = s.innerText; stop.click(); o.disconnect(); } }) \
               .observe(section, {attributes: true, childList: true, subtree: true, characterData: true}); \
             return stop.disabled",
        )
        .await?;
    assert_eq!(disabled, true, "Stop is disabled while nothing runs");
    browser.click("[data-testid=generate]").await?;
    let outcome = browser
        .wait_for(
            "the stopped generation",
            "(() => { const s = document.querySelector('[data-testid=request-status]'); \
             return ['done', 'error', 'stopped'].includes(s.dataset.state) \
               && [s.dataset.state, s.innerText]; })()",
            TIMEOUT,
        )
        .await?;
    let at = browser.eval("return window.__stopAt").await?;
    eprintln!("stopped at {at}: {outcome}");
    assert_eq!(outcome[0], "stopped", "{outcome} (Stop clicked at {at})");
    let message = outcome[1].as_str().unwrap_or_default();
    assert!(message.contains("stopped while sampling"), "{message}");
    assert!(
        !message.contains("4 of 4"),
        "stopped before the last step: {message}"
    );
    let after = browser
        .eval(
            "return [document.querySelector('[data-testid=generate]').disabled, \
                     document.querySelector('[data-testid=stop]').disabled, \
                     document.querySelector('[data-testid=mesh-label]')?.innerText ?? '']",
        )
        .await?;
    assert_eq!(after[0], false, "Generate is offered again: {after}");
    assert_eq!(after[1], true, "nothing left to stop: {after}");
    assert!(
        !after[2].as_str().unwrap_or_default().contains("Shape"),
        "a stopped request shows no shape: {after}"
    );
    Ok(())
}

/// [`generate`] in `browser`, closed whatever the outcome.
/// The face budget the f16 run in Firefox asks for through the detail control.
const DETAIL_FACES: usize = 200;

/// The detail control: its input lists the presets, a preset's count shows the preset's name,
/// any other number shows as Custom and is what the next Generate asks for.
async fn choose_detail(browser: &impl Page, faces: usize) -> anyhow::Result<()> {
    let presets = browser
        .eval(
            "return [...document.querySelectorAll('#detail-presets option')] \
               .map(o => o.label + '=' + o.value).join(',')",
        )
        .await?;
    assert_eq!(
        presets, "Low-poly=2000,Game=10000,Standard=40000,Full=0",
        "the presets the faces input lists"
    );
    for (typed, shown) in [("2000", "Low-poly"), (faces.to_string().as_str(), "Custom")] {
        browser
            .eval(&format!(
                "const f = document.querySelector('[data-testid=faces]'); f.value = '{typed}'; \
                 f.dispatchEvent(new Event('change')); return 1"
            ))
            .await?;
        browser
            .wait_for(
                &format!("{typed} faces shown as {shown}"),
                &format!("document.querySelector('[data-testid=detail]').innerText === '{shown}'"),
                Duration::from_secs(10),
            )
            .await?;
    }
    Ok(())
}

async fn generate_and_close(
    browser: impl Page,
    which: Browser,
    precision: Precision,
    sets: &Sets,
) -> anyhow::Result<()> {
    let mut outcome = generate(&browser, which, precision, sets).await;
    // Once in Chromium: the user switches from the default to f16.
    if outcome.is_ok() && which == Browser::Chromium && precision == Precision::Q4 {
        outcome = switch_precision(&browser, Precision::F16).await;
    }
    browser.close().await;
    outcome
}

async fn generate(
    browser: &impl Page,
    which: Browser,
    precision: Precision,
    sets: &Sets,
) -> anyhow::Result<()> {
    browser
        .wait_for(
            "the drop zone",
            "document.querySelector('input[type=file]')",
            Duration::from_secs(30),
        )
        .await?;
    // The shape model's card lists both installed precisions with their sizes and says which
    // one loads and why.
    browser
        .wait_for(
            "the shape model's precisions",
            "document.querySelector('[data-testid=shape-quant]')?.dataset.chosen",
            TIMEOUT,
        )
        .await?;
    let (chosen, because, options) = quant_card(browser).await?;
    assert_eq!(chosen, precision.name(), "{because}");
    assert_eq!(
        options,
        [
            ("f16".to_string(), sets.bytes(Precision::F16)?),
            ("q4".to_string(), sets.bytes(Precision::Q4)?)
        ]
    );
    let why = match precision {
        Precision::Q4 => "the smallest installed that fits this GPU",
        _ => "?quant=f16",
    };
    assert!(because.contains(why), "{because}");
    wait_for_set(browser, precision).await?;
    let hidden = browser
        .eval("return document.querySelector('[data-testid=views]').hidden")
        .await?;
    assert_eq!(hidden, true, "a single-image model offers no other views");
    // A cut-out already (alpha), so no background removal is needed.
    let photo = fixtures::dir().join("preprocess_input_0.png");
    browser.choose_file("input[type=file]", &photo).await?;
    browser
        .wait_for(
            "the cut-out",
            "document.querySelector('[data-testid=cutout]')?.dataset.state === 'kept'",
            Duration::from_secs(60),
        )
        .await?;
    // The real user's path (f16 on a GPU with shader-f16) asks for fewer faces than the
    // fixture model makes (~400): the mesh is decimated to it, in the browser as on the CPU.
    let mut faces_asked = cleanup::MAX_FACES;
    if which == Browser::Firefox && precision == Precision::F16 {
        stop_a_generation(browser).await?;
        faces_asked = DETAIL_FACES;
        choose_detail(browser, DETAIL_FACES).await?;
    }
    if grey(which, precision) {
        browser.click("[data-testid=colour]").await?;
        let checked = browser
            .eval("return document.querySelector('[data-testid=colour]').checked")
            .await?;
        assert_eq!(checked, false, "the colour switch is off");
    }
    // Every line the request's status shows, in order.
    browser
        .eval(
            "const s = document.querySelector('[data-testid=request-status]'); window.__lines = []; \
             new MutationObserver(() => window.__lines.push(s.innerText)) \
               .observe(s, {childList: true, subtree: true, characterData: true}); return 1",
        )
        .await?;
    browser.click("[data-testid=generate]").await?;
    let outcome = browser
        .wait_for(
            "the generation",
            "(() => { const s = document.querySelector('[data-testid=request-status]'); \
             return (s.dataset.state === 'done' || s.dataset.state === 'error') && s.innerText; })()",
            TIMEOUT,
        )
        .await?;
    eprintln!("generation: {outcome}");
    // The first generation checked the device's fused attention kernel: it runs here (WebGPU
    // in Chromium), and the GPU line says so.
    let gpu = browser
        .eval(
            "const g = document.querySelector('[data-testid=gpu]'); \
             return [g.dataset.attention, g.innerText]",
        )
        .await?;
    eprintln!("{which:?} gpu: {gpu}");
    assert_eq!(gpu[0], "fused", "{gpu}");
    let compute = match which {
        Browser::Chromium => "models in f32",
        Browser::Firefox => "models in f16",
    };
    assert!(
        gpu[1].as_str().unwrap_or_default().contains(compute),
        "{which:?} should compute {compute}: {gpu}"
    );
    let state = browser
        .eval("return document.querySelector('[data-testid=request-status]').dataset.state")
        .await?;
    assert_eq!(state, "done", "{outcome}");
    assert!(
        outcome.as_str().unwrap_or_default().contains("faces"),
        "{outcome}"
    );
    // Progress with time: each sampler step as it finishes, with the time so far, and from the
    // second step on an estimate of what is left; the surface's points as they are decoded.
    let lines: Vec<String> = serde_json::from_value(browser.eval("return window.__lines").await?)?;
    eprintln!("status lines: {lines:?}");
    let has = |needle: &str| lines.iter().any(|l| l.contains(needle));
    assert!(has("sampling: step 1 of 4 · "), "{lines:?}");
    assert!(
        lines
            .iter()
            .any(|l| l.contains("sampling: step 3 of 4 · ") && l.contains("s left")),
        "{lines:?}"
    );
    assert!(has("decoding the field: "), "{lines:?}");
    let label = browser
        .wait_for(
            "the shape in the viewer",
            "(() => { const l = document.querySelector('[data-testid=mesh-label]'); \
             return l && l.innerText.includes('Shape') && l.innerText; })()",
            Duration::from_secs(30),
        )
        .await?;
    assert!(
        label.as_str().unwrap_or_default().contains("4 steps"),
        "{label}"
    );

    // The GLB download re-parses, and agrees with the CPU backend's run of the same model.
    let (faces, bounds, colour) = downloaded_glb(browser).await?;
    let shape = sets.dir(precision).to_path_buf();
    let flashvdm = flashvdm(which, precision);
    let (cpu_faces, lo, hi, cpu_colour) =
        tokio::task::spawn_blocking(move || cpu_reference(&shape, SEED, faces_asked, flashvdm))
            .await??;
    eprintln!(
        "{which:?} {precision}: browser: {faces} faces, bounds {bounds:?}, mean colour \
         {colour:?}; CPU backend: {cpu_faces} faces, {lo:?}..{hi:?}, mean colour {cpu_colour:?}"
    );
    // Vertex colours from the photo, as the CPU backend's colouring of its mesh; none where
    // the user turned the switch off.
    match (grey(which, precision), colour) {
        (true, colour) => assert_eq!(colour, None, "the colour switch was off"),
        (false, None) => panic!("no vertex colours in the GLB"),
        (false, Some(colour)) => {
            for c in 0..3 {
                assert!(
                    (colour[c] - cpu_colour[c]).abs() < 12.0,
                    "{colour:?} vs {cpu_colour:?}"
                );
            }
        }
    }
    assert!(faces > 0);
    if faces > faces_asked {
        let note = format!("kept {faces} faces of the {faces_asked} asked for");
        assert!(
            outcome.as_str().unwrap_or_default().contains(&note),
            "{outcome}"
        );
    } else if faces_asked < cleanup::MAX_FACES {
        assert!(faces * 100 >= faces_asked * 98, "{faces} for {faces_asked}");
    }
    let ratio = faces as f64 / cpu_faces as f64;
    assert!(
        (0.95..=1.05).contains(&ratio),
        "{faces} vs {cpu_faces} faces"
    );
    for d in 0..3 {
        assert!((bounds.min[d] - lo[d]).abs() < 0.05, "{bounds:?} vs {lo:?}");
        assert!((bounds.max[d] - hi[d]).abs() < 0.05, "{bounds:?} vs {hi:?}");
    }
    Ok(())
}
