//! Real codecs through the adapters: PNG and JPEG decoded straight from
//! `Chunks` give the same pixels as decoding from a `Vec`; encoding into a
//! `PooledWriter` gives the same bytes as encoding into a `Vec`. The test
//! images are made here.

use std::io::{Cursor, Write};

use image::{ImageEncoder, ImageFormat, ImageReader, RgbImage};
use tierpool::Pool;

/// A 640x480 gradient with some structure, so the codecs have work to do.
fn picture() -> RgbImage {
    RgbImage::from_fn(640, 480, |x, y| {
        image::Rgb([(x % 256) as u8, (y % 256) as u8, ((x * y) % 251) as u8])
    })
}

fn encoded(format: ImageFormat) -> Vec<u8> {
    let mut out = Cursor::new(Vec::new());
    picture().write_to(&mut out, format).unwrap();
    out.into_inner()
}

#[test]
fn decoding_from_chunks_gives_the_same_pixels() {
    let pool = Pool::new();
    for format in [ImageFormat::Png, ImageFormat::Jpeg] {
        let bytes = encoded(format);
        // A reader that hands the file over in small pieces.
        let chunks = pool
            .read_to_end(std::io::Read::chain(&bytes[..1000], &bytes[1000..]))
            .unwrap();
        assert!(chunks.iter().count() > 1 || bytes.len() < 16 << 10);
        let from_chunks = ImageReader::with_format(chunks, format).decode().unwrap();
        let from_vec = ImageReader::with_format(Cursor::new(&bytes), format)
            .decode()
            .unwrap();
        assert_eq!(from_chunks.as_bytes(), from_vec.as_bytes(), "{format:?}");
    }
    assert_eq!(pool.stats().in_use_bytes, 0);
}

#[test]
fn encoding_into_a_pooled_writer_gives_the_same_bytes() {
    let pool = Pool::new();
    let img = picture();
    let mut vec = Vec::new();
    image::codecs::png::PngEncoder::new(&mut vec)
        .write_image(img.as_raw(), 640, 480, image::ExtendedColorType::Rgb8)
        .unwrap();
    let mut writer = pool.writer();
    image::codecs::png::PngEncoder::new(&mut writer)
        .write_image(img.as_raw(), 640, 480, image::ExtendedColorType::Rgb8)
        .unwrap();
    writer.flush().unwrap();
    assert_eq!(writer.into_chunks().to_vec(), vec, "png");

    let mut vec = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut vec, 85)
        .encode_image(&img)
        .unwrap();
    let mut writer = pool.writer();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut writer, 85)
        .encode_image(&img)
        .unwrap();
    assert_eq!(writer.freeze(), vec, "jpeg");
}
