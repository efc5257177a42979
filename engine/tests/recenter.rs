//! The shape pre-processor (`ImageProcessorV2`) against the official outputs in
//! `preprocess.io.safetensors`: every stage bit for bit.

use orfeas_engine::input::decode_image;
use orfeas_engine::recenter::opencv::{Image8, resize_cubic};
use orfeas_engine::recenter::{BORDER_RATIO, SIZE, recenter, shape_input};

mod fixtures;
use fixtures::*;

/// Where two buffers differ: (count, largest difference, first index).
fn differences(ours: &[u8], reference: &[u8]) -> (usize, u8, Option<usize>) {
    assert_eq!(ours.len(), reference.len());
    let mut count = 0;
    let mut largest = 0;
    let mut first = None;
    for (i, (a, b)) in ours.iter().zip(reference).enumerate() {
        if a != b {
            count += 1;
            largest = largest.max(a.abs_diff(*b));
            first.get_or_insert(i);
        }
    }
    (count, largest, first)
}

#[test]
fn recenter_matches_the_reference_bit_for_bit() {
    let io = Io::read("preprocess.io.safetensors");
    for i in 0..2 {
        let png = std::fs::read(fixtures().join(format!("preprocess_input_{i}.png"))).unwrap();
        let (rgb, mask) = recenter(&decode_image(&png).unwrap(), BORDER_RATIO).unwrap();
        let (reference_rgb, shape) = io.bytes(&format!("img{i}.recenter_rgb_u8"));
        assert_eq!(shape, [rgb.height, rgb.width, 3]);
        let (reference_mask, _) = io.bytes(&format!("img{i}.recenter_mask_u8"));
        let rgb_diff = differences(&rgb.data, &reference_rgb);
        let mask_diff = differences(&mask.data, &reference_mask);
        eprintln!("img{i}: recenter rgb {rgb_diff:?}, mask {mask_diff:?}");
        assert_eq!(rgb_diff.0, 0, "img{i}: recentred RGB differs");
        assert_eq!(mask_diff.0, 0, "img{i}: recentred mask differs");

        // The cubic resize alone, from the reference's own recentred image.
        let side = rgb.width;
        let cubic = resize_cubic(&Image8::new(side, side, 3, reference_rgb), SIZE, SIZE);
        let (image, _) = io.tensor(&format!("img{i}.image"));
        let reference: Vec<u8> = (0..SIZE * SIZE * 3)
            .map(|j| {
                let (p, c) = (j / 3, j % 3);
                ((image[c * SIZE * SIZE + p] + 1.0) / 2.0 * 255.0).round() as u8
            })
            .collect();
        let cubic_diff = differences(&cubic.data, &reference);
        eprintln!("img{i}: cubic 512² {cubic_diff:?}");
        // INTER_CUBIC runs in Intel IPP inside OpenCV (see `opencv`): a few values may differ
        // by one level; OpenCV's own fixed-point code would differ in ~14 000.
        assert!(
            cubic_diff.0 <= 8 && cubic_diff.1 <= 1,
            "img{i}: INTER_CUBIC output differs: {cubic_diff:?}"
        );
    }
}

#[test]
fn the_shape_input_is_the_official_tensor() {
    let io = Io::read("preprocess.io.safetensors");
    for i in 0..2 {
        let png = std::fs::read(fixtures().join(format!("preprocess_input_{i}.png"))).unwrap();
        let input = shape_input(&decode_image(&png).unwrap(), SIZE).unwrap();
        let (image, shape) = io.tensor(&format!("img{i}.image"));
        assert_eq!(shape, [1, 3, SIZE, SIZE]);
        // Both sides compute u8 / 255 · 2 − 1 in f32: only the IPP levels above differ.
        let differing: Vec<f32> = input
            .image
            .iter()
            .zip(&image)
            .filter(|(a, b)| a != b)
            .map(|(a, b)| (a - b).abs() * 127.5)
            .collect();
        eprintln!("img{i}: shape input differs in {} values", differing.len());
        assert!(
            differing.len() <= 8,
            "img{i}: {} values differ",
            differing.len()
        );
        assert!(
            differing.iter().all(|d| *d <= 1.0 + 1e-4),
            "img{i}: {differing:?}"
        );
        let (mask, _) = io.tensor(&format!("img{i}.mask"));
        let mask: Vec<u8> = mask
            .iter()
            .map(|m| ((m + 1.0) / 2.0 * 255.0).round() as u8)
            .collect();
        let (differing, ..) = differences(&input.mask, &mask);
        assert_eq!(differing, 0, "img{i}: {differing} mask values differ");
    }
}

/// `scripts/opencv_vectors.py`: `cv2.resize` on seeded images for every path the port takes.
#[test]
fn resizes_match_opencv_test_vectors() {
    use orfeas_engine::recenter::opencv::{resize_area, resize_nearest};
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/opencv_resize.safetensors");
    let bytes = std::fs::read(path).unwrap();
    let vectors = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut names: Vec<String> = vectors
        .names()
        .into_iter()
        .filter_map(|n| n.strip_suffix(".src").map(str::to_string))
        .collect();
    names.sort();
    assert_eq!(names.len(), 9);
    for name in names {
        let src = vectors.tensor(&format!("{name}.src")).unwrap();
        let dst = vectors.tensor(&format!("{name}.dst")).unwrap();
        let (s, d) = (src.shape(), dst.shape());
        let src = Image8::new(s[1], s[0], s[2], src.data().to_vec());
        let ours = match name.split('_').next().unwrap() {
            "area" => resize_area(&src, d[1], d[0]),
            "cubic" => resize_cubic(&src, d[1], d[0]),
            "nearest" => resize_nearest(&src, d[1], d[0]),
            other => panic!("unknown case {other}"),
        };
        let diff = differences(&ours.data, dst.data());
        eprintln!("{name}: {diff:?}");
        if name.starts_with("cubic") {
            // IPP's kernel, modelled (see `opencv`).
            assert!(
                diff.0 * 1000 <= ours.data.len() && diff.1 <= 1,
                "{name}: {diff:?}"
            );
        } else {
            assert_eq!(diff.0, 0, "{name}: {diff:?}");
        }
    }
}

#[test]
fn an_invisible_image_is_refused() {
    let clear = image::RgbaImage::new(40, 30);
    assert!(shape_input(&clear, SIZE).is_err());
}
