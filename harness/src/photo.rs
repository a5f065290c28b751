//! Photo-like uploads for the service's load test and drill: gradients
//! that codecs treat as they treat real photos.

use std::io::Cursor;

/// A `w` × `h` RGB gradient encoded as `format`.
pub fn photo(w: u32, h: u32, format: image::ImageFormat) -> Vec<u8> {
    let image = image::DynamicImage::ImageRgb8(image::ImageBuffer::from_fn(w, h, |x, y| {
        image::Rgb([
            (x * 255 / w) as u8,
            (y * 255 / h) as u8,
            ((x ^ y) & 63) as u8,
        ])
    }));
    let mut out = Vec::new();
    image
        .write_to(&mut Cursor::new(&mut out), format)
        .expect("encodes");
    out
}
