//! `orfeas remove-bg` as a user runs it, with the ISNet weights the set-up converted
//! (`ORFEAS_ISNET`, default `~/.cache/orfeas/models/isnet-medium`).

mod common;
use common::{fixtures, isnet_weights as isnet_dir, orfeas, text};

/// `orfeas remove-bg` on fixture image 0 with the ISNet set in `isnet`: the cut-out, and its
/// alpha against the reference runtime's matte (onnxruntime + imgly 1.4.5): the worst level
/// difference and the share of pixels more than `levels` off.
fn cut_out_against_the_reference(
    isnet: &std::path::Path,
    levels: i32,
) -> (image::RgbaImage, i32, f64) {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("cutout.png");
    let input = fixtures().join("isnet_input_0.png");
    let run = orfeas(&[
        "remove-bg",
        input.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
        "--isnet",
        isnet.to_str().unwrap(),
    ]);
    assert!(run.status.success(), "{}", text(&run));
    let cutout = image::open(&out).unwrap().to_rgba8();
    let io = std::fs::read(fixtures().join("isnet.io.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&io).unwrap();
    let reference = st.tensor("img0.alpha_u8_src").unwrap();
    let (mut worst, mut off) = (0i32, 0usize);
    for (ours, theirs) in cutout.pixels().zip(reference.data()) {
        let d = (ours[3] as i32 - *theirs as i32).abs();
        worst = worst.max(d);
        off += (d > levels) as usize;
    }
    let share = off as f64 / (cutout.width() * cutout.height()) as f64;
    eprintln!(
        "matte vs reference: worst {worst} levels, {:.3} % beyond ±{levels}",
        share * 100.0
    );
    (cutout, worst, share)
}

#[test]
fn an_opaque_photo_gets_the_reference_matte() {
    let Some(dir) = isnet_dir() else { return };
    let (cutout, _, share) = cut_out_against_the_reference(&dir, 1);
    let original = image::open(fixtures().join("isnet_input_0.png"))
        .unwrap()
        .to_rgba8();
    assert_eq!(cutout.dimensions(), original.dimensions());
    // Colour untouched, alpha = the reference runtime's matte.
    for (ours, src) in cutout.pixels().zip(original.pixels()) {
        assert_eq!(ours.0[..3], src.0[..3], "colour is kept");
    }
    assert!(
        share < 0.01,
        "{:.2} % of the matte differs by more than 1",
        share * 100.0
    );
}

#[test]
fn bad_requests_get_clear_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let png = fixtures().join("isnet_input_0.png");
    let not_image = tmp.path().join("notes.png");
    std::fs::write(&not_image, "just some text").unwrap();
    let out = tmp.path().join("o.png");
    let run = orfeas(&[
        "remove-bg",
        not_image.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
    ]);
    assert!(!run.status.success());
    assert!(text(&run).contains("not an image"), "{}", text(&run));
    let jpg = tmp.path().join("o.jpg");
    let run = orfeas(&[
        "remove-bg",
        png.to_str().unwrap(),
        "-o",
        jpg.to_str().unwrap(),
    ]);
    assert!(!run.status.success());
    assert!(text(&run).contains("PNG"), "{}", text(&run));
    let run = orfeas(&[
        "remove-bg",
        png.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
        "--isnet",
        tmp.path().join("nowhere").to_str().unwrap(),
    ]);
    assert!(!run.status.success());
    assert!(text(&run).contains("no ISNet weights"), "{}", text(&run));
    assert!(!out.exists(), "nothing written on failure");
}

#[test]
fn a_cut_out_keeps_its_own_alpha() {
    // As the reference, an image with real transparency skips the model.
    let tmp = tempfile::tempdir().unwrap();
    let input = fixtures().join("preprocess_input_0.png");
    let out = tmp.path().join("same.png");
    let run = orfeas(&[
        "remove-bg",
        input.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
        "--isnet",
        tmp.path().join("nowhere").to_str().unwrap(),
    ]);
    assert!(run.status.success(), "{}", text(&run));
    assert!(text(&run).contains("already has transparency"));
    let a = image::open(&input).unwrap().to_rgba8();
    let b = image::open(&out).unwrap().to_rgba8();
    assert_eq!(a, b);
}

#[test]
fn a_q8_isnet_cuts_out_the_reference_matte() {
    // `orfeas quantize` writes the q8 set (its convolutions int8, half the download; the same
    // bytes `convert-isnet --quant q8` writes); `remove-bg` loads it like any set and its matte
    // stays within a few levels of the reference runtime's.
    let Some(dir) = isnet_dir() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let q8 = tmp.path().join("isnet-q8");
    let run = orfeas(&[
        "quantize",
        dir.to_str().unwrap(),
        q8.to_str().unwrap(),
        "--quant",
        "q8",
    ]);
    assert!(run.status.success(), "{}", text(&run));
    let (_, worst, share) = cut_out_against_the_reference(&q8, 2);
    assert!(worst <= 8, "worst {worst} levels");
    assert!(share < 0.01, "{:.2} % beyond ±2 levels", share * 100.0);

    // q4 is not offered for ISNet: refused by name before anything is read.
    let run = orfeas(&[
        "convert-isnet",
        tmp.path().to_str().unwrap(),
        "-o",
        tmp.path().join("isnet-q4").to_str().unwrap(),
        "--quant",
        "q4",
    ]);
    assert!(!run.status.success());
    assert!(text(&run).contains("f16 or q8"), "{}", text(&run));
}
