//! The user's image: decoded from PNG, JPEG (CMYK too) or WebP bytes with its EXIF orientation
//! applied, into RGBA8; every way it can be unusable is an error that says which.

use std::io::Cursor;

use image::{DynamicImage, ImageDecoder, ImageReader, RgbaImage};
use thiserror::Error;

/// The largest image accepted, in pixels (64 MP, as the server's upload limit implies).
pub const MAX_PIXELS: u64 = 64_000_000;

/// The most bytes an image may decode to, whatever its pixel format: a 64 MP image in 8-bit
/// RGBA. A 16-bit image (8 bytes a pixel in RGBA) is limited to half the pixels, so no upload
/// costs more than this before it is shrunk.
pub const MAX_DECODED_BYTES: u64 = 256 << 20;

/// The longest side accepted: a 32 000 000 × 2 strip is within the pixel count, but the shape
/// pre-processor squares the longer side.
pub const MAX_SIDE: u32 = 8192;

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ImageError {
    #[error("the image is empty")]
    Empty,
    #[error("not an image (expected PNG, JPEG or WebP)")]
    NotAnImage,
    #[error("the image is {width}×{height}: nothing to see")]
    ZeroSized { width: u32, height: u32 },
    #[error("the image is {width}×{height} ({:.0} MP); at most 64 MP", f64::from(*width) * f64::from(*height) / 1e6)]
    TooLarge { width: u32, height: u32 },
    #[error("the image is {width}×{height}; its longer side may be at most {MAX_SIDE} pixels")]
    TooLong { width: u32, height: u32 },
    #[error("the image is {width}×{height} at {} bytes a pixel: it decodes to {} MB; at most {} MB", bytes / (u64::from(*width) * u64::from(*height)).max(1), bytes >> 20, MAX_DECODED_BYTES >> 20)]
    TooManyBytes { width: u32, height: u32, bytes: u64 },
    #[error("not a readable image: {0}")]
    Corrupt(String),
}

/// Decode `bytes` to upright RGBA8 (grayscale, palette, 16-bit and CMYK are converted).
pub fn decode_image(bytes: &[u8]) -> Result<RgbaImage, ImageError> {
    decode_image_within(bytes, u32::MAX)
}

/// As [`decode_image`], shrunk (never enlarged) so that the longer side is at most `max_side`.
/// The shrinking comes before the rotation and the conversion to 8-bit RGBA, so a large or
/// deep picture is copied only once it is small: the decoded bytes (at most
/// [`MAX_DECODED_BYTES`]) are the peak.
pub fn decode_image_within(bytes: &[u8], max_side: u32) -> Result<RgbaImage, ImageError> {
    if bytes.is_empty() {
        return Err(ImageError::Empty);
    }
    let reader = ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| ImageError::Corrupt(e.to_string()))?;
    if reader.format().is_none() {
        return Err(ImageError::NotAnImage);
    }
    let mut decoder = reader
        .into_decoder()
        .map_err(|e| ImageError::Corrupt(e.to_string()))?;
    let (width, height) = decoder.dimensions();
    if width == 0 || height == 0 {
        return Err(ImageError::ZeroSized { width, height });
    }
    // Checked before any pixel is decoded, so a decompression bomb costs nothing.
    if width.max(height) > MAX_SIDE {
        return Err(ImageError::TooLong { width, height });
    }
    if u64::from(width) * u64::from(height) > MAX_PIXELS {
        return Err(ImageError::TooLarge { width, height });
    }
    let decoded_bytes = decoder.total_bytes();
    if decoded_bytes > MAX_DECODED_BYTES {
        return Err(ImageError::TooManyBytes {
            width,
            height,
            bytes: decoded_bytes,
        });
    }
    // The decoders' own buffers are held to the same budget (plus room for a row or a strip).
    let mut limits = image::Limits::default();
    limits.max_alloc = Some(MAX_DECODED_BYTES + (16 << 20));
    decoder
        .set_limits(limits)
        .map_err(|e| ImageError::Corrupt(e.to_string()))?;
    let orientation = decoder.orientation().ok();
    let image =
        DynamicImage::from_decoder(decoder).map_err(|e| ImageError::Corrupt(e.to_string()))?;
    let mut image = shrink_dynamic(image, max_side);
    if let Some(orientation) = orientation {
        image.apply_orientation(orientation);
    }
    // No copy when the image is already RGBA8 (a 64 MP one is 256 MB).
    Ok(image.into_rgba8())
}

/// The size [`fit_within`] shrinks a `w × h` picture to, and whether that is by half or more.
fn fitted(w: u32, h: u32, max_side: u32) -> Option<(u32, u32, bool)> {
    let longer = w.max(h);
    if longer <= max_side {
        return None;
    }
    let scale = f64::from(max_side) / f64::from(longer);
    let nw = ((f64::from(w) * scale).round() as u32).max(1);
    let nh = ((f64::from(h) * scale).round() as u32).max(1);
    Some((nw, nh, scale <= 0.5))
}

/// [`fit_within`] for any pixel format, taking the image (one that already fits is returned as
/// it is; a 16-bit picture stays 16-bit until it is small).
fn shrink_dynamic(image: DynamicImage, max_side: u32) -> DynamicImage {
    match fitted(image.width(), image.height(), max_side) {
        None => image,
        Some((nw, nh, true)) => image.thumbnail_exact(nw, nh),
        Some((nw, nh, false)) => image.resize_exact(nw, nh, image::imageops::FilterType::Triangle),
    }
}

/// Shrink (never enlarge) so that the longer side is at most `max_side`, keeping the aspect.
pub fn fit_within(image: &RgbaImage, max_side: u32) -> RgbaImage {
    let (w, h) = image.dimensions();
    match fitted(w, h, max_side) {
        None => image.clone(),
        // Each target pixel averages its block of source pixels: no aliasing at this ratio, and
        // no float intermediate (the filtered resize keeps one of width × new height × 16
        // bytes: 260 MB for a 64 MP image).
        Some((nw, nh, true)) => image::imageops::thumbnail(image, nw, nh),
        Some((nw, nh, false)) => {
            image::imageops::resize(image, nw, nh, image::imageops::FilterType::Triangle)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::{ImageFormat, Rgba};

    fn encode(image: &DynamicImage, format: ImageFormat) -> Vec<u8> {
        let mut out = Cursor::new(Vec::new());
        image.write_to(&mut out, format).unwrap();
        out.into_inner()
    }

    #[test]
    fn decodes_png_jpeg_webp_grayscale_and_16_bit_to_rgba() {
        let rgb =
            DynamicImage::ImageRgb8(image::RgbImage::from_pixel(5, 3, image::Rgb([200, 10, 10])));
        for format in [ImageFormat::Png, ImageFormat::Jpeg, ImageFormat::WebP] {
            let decoded = decode_image(&encode(&rgb, format)).unwrap();
            assert_eq!(decoded.dimensions(), (5, 3), "{format:?}");
            let px = decoded.get_pixel(2, 1);
            assert!(
                px[0] > 150 && px[1] < 60 && px[3] == 255,
                "{format:?} {px:?}"
            );
        }
        let gray = DynamicImage::ImageLuma8(image::GrayImage::from_pixel(2, 2, image::Luma([77])));
        assert_eq!(
            decode_image(&encode(&gray, ImageFormat::Png))
                .unwrap()
                .get_pixel(0, 0),
            &Rgba([77, 77, 77, 255])
        );
        let deep = DynamicImage::ImageRgba16(image::ImageBuffer::from_pixel(
            2,
            2,
            Rgba([65535u16, 0, 32896, 0]),
        ));
        assert_eq!(
            decode_image(&encode(&deep, ImageFormat::Png))
                .unwrap()
                .get_pixel(1, 1),
            &Rgba([255, 0, 128, 0])
        );
    }

    fn data(name: &str) -> Vec<u8> {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data");
        std::fs::read(dir.join(name)).unwrap()
    }

    /// `scripts/image_vectors.py`: 8×4, left half red, right half blue.
    #[test]
    fn cmyk_jpeg_exif_orientation_and_palette_png_decode_upright() {
        let red = |p: &Rgba<u8>| p[0] > 150 && p[2] < 90 && p[3] == 255;
        let blue = |p: &Rgba<u8>| p[2] > 150 && p[0] < 90 && p[3] == 255;
        for name in ["cmyk.jpg", "palette.png"] {
            let image = decode_image(&data(name)).unwrap();
            assert_eq!(image.dimensions(), (8, 4), "{name}");
            assert!(
                red(image.get_pixel(1, 2)),
                "{name}: {:?}",
                image.get_pixel(1, 2)
            );
            assert!(
                blue(image.get_pixel(6, 2)),
                "{name}: {:?}",
                image.get_pixel(6, 2)
            );
        }
        // Orientation 6: stored 8×4, shown rotated 90° clockwise, so red is on top.
        let image = decode_image(&data("orientation6.jpg")).unwrap();
        assert_eq!(image.dimensions(), (4, 8));
        assert!(red(image.get_pixel(2, 1)), "{:?}", image.get_pixel(2, 1));
        assert!(blue(image.get_pixel(2, 6)), "{:?}", image.get_pixel(2, 6));
    }

    #[test]
    fn a_deep_picture_is_limited_by_its_bytes_and_shrunk_before_it_is_turned() {
        // A 16-bit RGBA PNG whose header says 5800² is within the pixel count (33.6 MP) but
        // decodes to 257 MB: refused from the header, before a pixel is read.
        let deep = DynamicImage::ImageRgba16(image::ImageBuffer::new(1, 1));
        let mut png = encode(&deep, ImageFormat::Png);
        png[16..20].copy_from_slice(&5800u32.to_be_bytes());
        png[20..24].copy_from_slice(&5800u32.to_be_bytes());
        let crc = crc32fast::hash(&png[12..29]);
        png[29..33].copy_from_slice(&crc.to_be_bytes());
        let error = decode_image(&png).unwrap_err();
        assert!(
            matches!(error, ImageError::TooManyBytes { bytes, .. } if bytes > MAX_DECODED_BYTES),
            "{error}"
        );
        assert!(error.to_string().contains("8 bytes a pixel"), "{error}");
        // Shrunk to 4 on the longer side first, then turned upright: 2×4, red on top.
        let red = |p: &Rgba<u8>| p[0] > 120 && p[2] < 120;
        let image = decode_image_within(&data("orientation6.jpg"), 4).unwrap();
        assert_eq!(image.dimensions(), (2, 4));
        assert!(red(image.get_pixel(1, 0)), "{:?}", image.get_pixel(1, 0));
        assert!(!red(image.get_pixel(1, 3)), "{:?}", image.get_pixel(1, 3));
    }

    #[test]
    fn bad_input_is_named() {
        assert_eq!(decode_image(b""), Err(ImageError::Empty));
        assert_eq!(
            decode_image(b"<html><body>404</body></html>"),
            Err(ImageError::NotAnImage)
        );
        let png = encode(&DynamicImage::new_rgb8(8, 8), ImageFormat::Png);
        assert!(matches!(
            decode_image(&png[..png.len() / 2]),
            Err(ImageError::Corrupt(_))
        ));
        // PNG headers claiming more than we take: refused before decoding.
        let claiming = |width: u32, height: u32| {
            let mut png = encode(&DynamicImage::new_rgb8(1, 1), ImageFormat::Png);
            png[16..20].copy_from_slice(&width.to_be_bytes());
            png[20..24].copy_from_slice(&height.to_be_bytes());
            let crc = crc32fast::hash(&png[12..29]);
            png[29..33].copy_from_slice(&crc.to_be_bytes());
            png
        };
        let huge = claiming(8000, 8001);
        assert_eq!(
            decode_image(&huge),
            Err(ImageError::TooLarge {
                width: 8000,
                height: 8001
            })
        );
        // 64 MP in a strip: within the pixel count, but the longer side is refused.
        assert_eq!(
            decode_image(&claiming(32_000_000, 2)),
            Err(ImageError::TooLong {
                width: 32_000_000,
                height: 2
            })
        );
        // A header claiming 0 × 10: refused (by us or by the PNG decoder), never decoded.
        let mut empty = huge.clone();
        empty[16..20].copy_from_slice(&0u32.to_be_bytes());
        let crc = crc32fast::hash(&empty[12..29]);
        empty[29..33].copy_from_slice(&crc.to_be_bytes());
        let error = decode_image(&empty).unwrap_err();
        assert!(
            matches!(error, ImageError::ZeroSized { .. } | ImageError::Corrupt(_)),
            "{error}"
        );
    }

    #[test]
    fn fit_within_keeps_the_aspect_and_never_enlarges() {
        let image = RgbaImage::new(1000, 500);
        assert_eq!(fit_within(&image, 512).dimensions(), (512, 256));
        assert_eq!(fit_within(&image, 2000).dimensions(), (1000, 500));
        let image = DynamicImage::ImageRgba8(image);
        let shrunk = shrink_dynamic(image, 700);
        assert_eq!((shrunk.width(), shrunk.height()), (700, 350));
    }

    #[test]
    fn a_large_reduction_averages_instead_of_aliasing() {
        // One-pixel stripes, shrunk 8×: every target pixel is their mean, not one stripe.
        let stripes = RgbaImage::from_fn(4096, 2048, |x, _| {
            let v = if x % 2 == 0 { 0 } else { 255 };
            Rgba([v, v, v, 255])
        });
        let small = fit_within(&stripes, 512);
        assert_eq!(small.dimensions(), (512, 256));
        for pixel in small.pixels() {
            assert!((pixel[0] as i32 - 128).abs() <= 1, "{pixel:?}");
            assert_eq!(pixel[3], 255);
        }
    }
}
