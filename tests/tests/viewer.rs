//! The instant preview and the 3D viewer in a real headless Chromium: an image is chosen, the
//! engine worker inflates its silhouette, the viewer worker draws it with wgpu, and the
//! exports re-parse. Pixels are checked on the viewer's own snapshots (rendered by the same
//! pipeline into a texture): headless Chromium does not composite WebGPU canvases into its
//! screenshots (a canvas cleared to red screenshots as blank).

use std::time::Duration;

use orfeas_tests::browser::{Browser, Page};
use orfeas_tests::stage::Stage;

const TIMEOUT: Duration = Duration::from_secs(90);

/// A red disc with a darker rim on a transparent background.
fn disc_png(path: &std::path::Path) -> anyhow::Result<()> {
    let size = 160u32;
    let image = image::RgbaImage::from_fn(size, size, |x, y| {
        let (dx, dy) = (x as f32 - 80.0, y as f32 - 80.0);
        let r = (dx * dx + dy * dy).sqrt();
        if r < 60.0 {
            image::Rgba([220, 30, 30, 255])
        } else {
            image::Rgba([0, 0, 0, 0])
        }
    });
    image.save(path)?;
    Ok(())
}

async fn attr(browser: &Browser, name: &str) -> anyhow::Result<String> {
    Ok(browser
        .eval(&format!(
            "return document.querySelector('[data-testid=viewer]').dataset.{name} || ''"
        ))
        .await?
        .as_str()
        .unwrap_or_default()
        .to_string())
}

/// Ask for a snapshot and return it decoded, once it differs from `previous`.
async fn snapshot(browser: &Browser, previous: &str) -> anyhow::Result<(String, image::RgbaImage)> {
    browser.click("[data-action=snapshot]").await?;
    let url = browser
        .wait_for(
            "a new snapshot",
            &format!(
                "(document.querySelector('[data-testid=viewer]').dataset.snapshot || '') !== {} && document.querySelector('[data-testid=viewer]').dataset.snapshot",
                serde_json::to_string(previous)?
            ),
            TIMEOUT,
        )
        .await?;
    let url = url.as_str().unwrap_or_default().to_string();
    let png = browser.fetch_bytes(&url).await?;
    Ok((url, image::load_from_memory(&png)?.to_rgba8()))
}

/// Fraction of pixels that are not the viewer's background.
fn covered(image: &image::RgbaImage) -> f64 {
    let background = image.get_pixel(1, 1).0;
    let off = image
        .pixels()
        .filter(|p| (0..3).any(|c| (i32::from(p.0[c]) - i32::from(background[c])).abs() > 24))
        .count();
    off as f64 / (image.width() * image.height()) as f64
}

/// Fraction of pixels that differ between two same-sized images.
fn changed(a: &image::RgbaImage, b: &image::RgbaImage) -> f64 {
    assert_eq!(a.dimensions(), b.dimensions());
    let n = a
        .pixels()
        .zip(b.pixels())
        .filter(|(p, q)| (0..3).any(|c| (i32::from(p.0[c]) - i32::from(q.0[c])).abs() > 24))
        .count();
    n as f64 / (a.width() * a.height()) as f64
}

#[tokio::test(flavor = "multi_thread")]
async fn an_image_gets_an_instant_preview_in_the_viewer_with_exports() -> anyhow::Result<()> {
    let models = tempfile::tempdir()?;
    let stage = Stage::start(models.path(), None).await?;
    // No model configured: the preview needs none. The turntable is off so that views are
    // still between snapshots.
    let browser = stage.open("?models=none&turntable=0").await?;
    let files = tempfile::tempdir()?;
    let disc = files.path().join("disc.png");
    disc_png(&disc)?;
    browser.choose_file("input[type=file]", &disc).await?;
    browser
        .wait_for(
            "the preview on show",
            "document.querySelector('[data-testid=viewer]').dataset.state === 'showing'",
            TIMEOUT,
        )
        .await?;
    let label = browser
        .eval("return document.querySelector('[data-testid=mesh-label]').innerText")
        .await?;
    assert!(
        label.as_str().unwrap_or_default().contains("Preview"),
        "{label}"
    );
    let faces: usize = attr(&browser, "faces").await?.parse()?;
    let vertices: usize = attr(&browser, "vertices").await?.parse()?;
    assert!(
        faces > 500 && vertices > 250,
        "{faces} faces, {vertices} vertices"
    );

    // Shaded: the disc's red shows on a good part of the view.
    let (url, shaded) = snapshot(&browser, "").await?;
    let cover = covered(&shaded);
    assert!(
        cover > 0.03,
        "only {:.1} % of the view is drawn; page says:\n{}",
        cover * 100.0,
        browser.page_text().await?
    );
    let red = shaded
        .pixels()
        .filter(|p| i32::from(p.0[0]) > i32::from(p.0[1]) + 60)
        .count();
    assert!(red > 1000, "{red} red pixels: vertex colours not shown");
    let dark = shaded
        .pixels()
        .filter(|p| p.0[..3].iter().all(|&c| c < 40))
        .count();
    assert!(
        dark < 200,
        "{dark} near-black pixels: the rim took the backdrop's colour"
    );
    // The page itself shows it: a screenshot of the canvas element, as the user sees it.
    let screenshot =
        image::load_from_memory(&browser.screenshot(".viewer-canvas").await?)?.to_rgba8();
    let cover = covered(&screenshot);
    assert!(
        cover > 0.03,
        "the canvas on the page shows {:.1} % drawn",
        cover * 100.0
    );

    // Wireframe and normals change the picture.
    browser.click("button[data-mode=wireframe]").await?;
    let (url, wire) = snapshot(&browser, &url).await?;
    assert_eq!(attr(&browser, "mode").await?, "wireframe");
    let d = changed(&shaded, &wire);
    assert!(
        d > 0.01,
        "wireframe changed {:.2} % of the pixels",
        d * 100.0
    );
    browser.click("button[data-mode=normals]").await?;
    let (url, normals) = snapshot(&browser, &url).await?;
    let d = changed(&shaded, &normals);
    assert!(d > 0.01, "normals changed {:.2} % of the pixels", d * 100.0);
    browser.click("button[data-mode=shaded]").await?;

    // A drag orbits the view; reset restores it.
    browser
        .eval(
            "const c = document.querySelector('.viewer-canvas'); const r = c.getBoundingClientRect();
             const at = (type, x, buttons) => c.dispatchEvent(new PointerEvent(type, {pointerId: 7, bubbles: true,
               clientX: r.left + x, clientY: r.top + r.height / 2, buttons, pointerType: 'mouse'}));
             at('pointerdown', 100, 1); at('pointermove', 160, 1); at('pointermove', 260, 1); at('pointerup', 260, 0);
             return 1",
        )
        .await?;
    let (url, turned) = snapshot(&browser, &url).await?;
    let d = changed(&shaded, &turned);
    assert!(
        d > 0.01,
        "orbiting changed {:.2} % of the pixels",
        d * 100.0
    );
    // The wheel zooms in: more of the view is covered.
    browser
        .eval(
            "document.querySelector('.viewer-canvas').dispatchEvent(new WheelEvent('wheel',
               {deltaY: -400, bubbles: true, cancelable: true})); return 1",
        )
        .await?;
    let (url, zoomed) = snapshot(&browser, &url).await?;
    assert!(
        covered(&zoomed) > covered(&turned) * 1.3,
        "zoom: {:.1} % → {:.1} % covered",
        covered(&turned) * 100.0,
        covered(&zoomed) * 100.0
    );
    // A shift-drag pans: the drawn area's centre moves right with the pointer.
    let centre_x = |image: &image::RgbaImage| {
        let background = image.get_pixel(1, 1).0;
        let (mut sum, mut count) = (0.0, 0.0);
        for (x, _, p) in image.enumerate_pixels() {
            if (0..3).any(|c| (i32::from(p.0[c]) - i32::from(background[c])).abs() > 24) {
                sum += f64::from(x);
                count += 1.0;
            }
        }
        sum / f64::max(count, 1.0)
    };
    browser
        .eval(
            "const c = document.querySelector('.viewer-canvas'); const r = c.getBoundingClientRect();
             const at = (type, x, buttons) => c.dispatchEvent(new PointerEvent(type, {pointerId: 8, bubbles: true,
               clientX: r.left + x, clientY: r.top + r.height / 2, buttons, shiftKey: true, pointerType: 'mouse'}));
             at('pointerdown', 100, 1); at('pointermove', 180, 1); at('pointerup', 180, 0);
             return 1",
        )
        .await?;
    let (url, panned) = snapshot(&browser, &url).await?;
    let shift = centre_x(&panned) - centre_x(&zoomed);
    assert!(shift > 40.0, "pan moved the object {shift:.0} px");
    browser.click("[data-action=reset]").await?;
    let (_, reset) = snapshot(&browser, &url).await?;
    let d = changed(&shaded, &reset);
    assert!(
        d < 0.002,
        "reset left {:.2} % of the pixels changed",
        d * 100.0
    );

    // Every export re-parses with the counts shown.
    let link = |format: &str| {
        format!("return document.querySelector('a.download[data-format={format}]').href")
    };
    let href = |v: serde_json::Value| v.as_str().unwrap_or_default().to_string();
    let glb = browser
        .fetch_bytes(&href(browser.eval(&link("glb")).await?))
        .await?;
    let gltf = gltf::Gltf::from_slice(&glb)?;
    let primitive = gltf.meshes().next().unwrap().primitives().next().unwrap();
    assert_eq!(
        primitive.get(&gltf::Semantic::Positions).unwrap().count(),
        vertices
    );
    assert!(
        primitive.get(&gltf::Semantic::Colors(0)).is_some(),
        "GLB keeps the colours"
    );
    assert_eq!(primitive.indices().unwrap().count(), faces * 3);
    let obj = String::from_utf8(
        browser
            .fetch_bytes(&href(browser.eval(&link("obj")).await?))
            .await?,
    )?;
    assert_eq!(
        obj.lines().filter(|l| l.starts_with("v ")).count(),
        vertices
    );
    assert_eq!(obj.lines().filter(|l| l.starts_with("f ")).count(), faces);
    let stl = browser
        .fetch_bytes(&href(browser.eval(&link("stl")).await?))
        .await?;
    assert_eq!(stl.len(), 84 + 50 * faces);
    assert_eq!(u32::from_le_bytes(stl[80..84].try_into()?) as usize, faces);
    let ply = browser
        .fetch_bytes(&href(browser.eval(&link("ply")).await?))
        .await?;
    let header = String::from_utf8_lossy(&ply[..ply.len().min(400)]).to_string();
    assert!(
        header.contains(&format!("element vertex {vertices}")),
        "{header}"
    );
    let name = browser
        .eval(
            "return document.querySelector('a.download[data-format=glb]').getAttribute('download')",
        )
        .await?;
    assert_eq!(name, "disc-preview.glb");

    // A file that is not an image is refused with the reason; the preview stays.
    let bogus = files.path().join("notes.png");
    std::fs::write(&bogus, "<html>not a picture</html>")?;
    browser.choose_file("input[type=file]", &bogus).await?;
    let error = browser
        .wait_for(
            "the image error",
            "document.querySelector('[data-testid=image-error]') && document.querySelector('[data-testid=image-error]').innerText",
            TIMEOUT,
        )
        .await?;
    assert!(
        error.as_str().unwrap_or_default().contains("not an image"),
        "{error}"
    );
    assert_eq!(attr(&browser, "state").await?, "showing");
    browser.close().await;
    Ok(())
}
