//! The shape pre-processor (`ImageProcessorV2`) against the official outputs in
//! `preprocess.io.safetensors` (float filters here; the bit-exact port is issue 4's).

use orfeas_engine::input::decode_image;
use orfeas_engine::recenter::{SIZE, shape_input};

mod fixtures;
use fixtures::*;

#[test]
fn the_shape_input_follows_the_official_pre_processor() {
    let io = Io::read("preprocess.io.safetensors");
    for i in 0..2 {
        let png = std::fs::read(fixtures().join(format!("preprocess_input_{i}.png"))).unwrap();
        let input = shape_input(&decode_image(&png).unwrap(), SIZE).unwrap();
        let (image, shape) = io.tensor(&format!("img{i}.image"));
        assert_eq!(shape, [1, 3, SIZE, SIZE]);
        let (mask, _) = io.tensor(&format!("img{i}.mask"));
        let diffs: Vec<f32> = input
            .image
            .iter()
            .zip(&image)
            .map(|(a, b)| (a - b).abs())
            .collect();
        let max = diffs.iter().copied().fold(0.0, f32::max);
        let mean = diffs.iter().sum::<f32>() / diffs.len() as f32;
        let exact = diffs.iter().filter(|d| **d == 0.0).count() as f32 / diffs.len() as f32;
        let mask_levels = input
            .mask
            .iter()
            .zip(&mask)
            .map(|(a, b)| (*a as f32 - (b + 1.0) * 127.5).abs())
            .fold(0.0, f32::max);
        eprintln!(
            "img{i}: image max |Δ| {:.1}/255, mean {:.3}/255, {:.2} % exact; mask max |Δ| {mask_levels:.1}/255",
            max * 127.5,
            mean * 127.5,
            exact * 100.0,
        );
        // The fixture README: exact, or within 2/255 where a resize differs by one LSB.
        assert!(
            max * 127.5 <= 2.0 + 1e-3,
            "img{i}: a pixel differs by {} levels",
            max * 127.5
        );
        assert!(
            mean * 127.5 < 0.1,
            "img{i}: mean difference {} levels",
            mean * 127.5
        );
        assert!(
            mask_levels <= 2.0 + 1e-3,
            "img{i}: mask differs by {mask_levels} levels"
        );
    }
}

#[test]
fn an_invisible_image_is_refused() {
    let clear = image::RgbaImage::new(40, 30);
    assert!(shape_input(&clear, SIZE).is_err());
}
