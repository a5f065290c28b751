//! The work of an image, QR and PDF service, written twice: with plain `Vec`
//! everywhere and with tierpool, producing the same bytes. Shared by the
//! service example and the main job (the harness library includes it).
#![allow(dead_code, unreachable_pub)] // each includer uses its part; public for the harness library

use std::io::Cursor;

use image::codecs::png::PngEncoder;
use image::{DynamicImage, ExtendedColorType, ImageEncoder, ImageReader, Limits};
use qrcode::{Color, EcLevel, QrCode};
use tierpool::{Chunks, DecodeError, ImageCost, Permit};

/// The most bytes of text a QR code is made from (version 40 at level M
/// holds 2331).
pub const QR_MAX_TEXT: usize = 2048;
/// Pixels per QR module, and modules of quiet zone around the code.
const QR_SCALE: usize = 8;
const QR_QUIET: usize = 4;
/// PDF layout: A4 in points, Helvetica 10 pt.
const PAGE_WIDTH: f32 = 595.0;
const PAGE_HEIGHT: f32 = 842.0;
const LINE_CHARS: usize = 95;
const PAGE_LINES: usize = 70;

/// Why a request could not be served, and the status a service answers.
#[derive(Debug)]
pub enum Failure {
    /// 400: empty or malformed request.
    BadRequest(String),
    /// 413: over a size limit.
    TooLarge(String),
    /// 422: the content cannot be processed (not an image, truncated, a
    /// decompression bomb, not UTF-8).
    Unprocessable(String),
    /// 503: admission refused the memory; retry later.
    Refused(String),
}

impl Failure {
    pub fn status(&self) -> u16 {
        match self {
            Failure::BadRequest(_) => 400,
            Failure::TooLarge(_) => 413,
            Failure::Unprocessable(_) => 422,
            Failure::Refused(_) => 503,
        }
    }

    pub fn message(&self) -> &str {
        match self {
            Failure::BadRequest(m)
            | Failure::TooLarge(m)
            | Failure::Unprocessable(m)
            | Failure::Refused(m) => m,
        }
    }
}

/// The decoder limits: a frame of at most `max_frame` bytes.
fn limits(max_frame: u64) -> Limits {
    let mut limits = Limits::default();
    limits.max_alloc = Some(max_frame);
    limits
}

/// The thumbnail's height for `width`, keeping the aspect ratio.
pub fn thumbnail_height(width: u32, (w, h): (u32, u32)) -> u32 {
    ((u64::from(h) * u64::from(width) + u64::from(w) / 2) / u64::from(w)).max(1) as u32
}

// === thumbnails ===

/// What a thumbnail of `upload` takes beside the upload itself, read from
/// the image's header before anything is decoded: the frame and the
/// decoder's working memory, the thumbnail and its PNG. A decompression
/// bomb or a truncated JPEG is refused here (422).
pub fn thumbnail_cost(upload: &mut Chunks, width: u32, max_frame: u64) -> Result<usize, Failure> {
    if upload.is_empty() {
        return Err(Failure::BadRequest("empty body".into()));
    }
    let cost = ImageCost::read(upload, limits(max_frame)).map_err(decode_failure)?;
    let height = thumbnail_height(width, (cost.width, cost.height));
    // The thumbnail (a `Vec`, at most 16 bytes a pixel) and its PNG.
    let thumb = u64::from(width) * u64::from(height) * 16;
    Ok((cost.total() + thumb + thumb / 2 + (64 << 10)) as usize)
}

/// How a decoding failure is answered.
fn decode_failure(e: DecodeError) -> Failure {
    match e {
        DecodeError::Pool(e) if e.is_refused() => Failure::Refused(e.to_string()),
        e => Failure::Unprocessable(e.to_string()),
    }
}

/// Decodes `upload` into a pooled frame, makes a `width`-wide thumbnail and
/// encodes it as PNG into pooled chunks, all on an admitted request's
/// `permit` (see [`thumbnail_cost`]): nothing inside is refused.
pub fn thumbnail_pool(
    permit: &Permit,
    upload: Chunks,
    width: u32,
    max_frame: u64,
) -> Result<Chunks, Failure> {
    if upload.is_empty() {
        return Err(Failure::BadRequest("empty body".into()));
    }
    let image = permit
        .decode_image_with_limits(upload, limits(max_frame))
        .map_err(decode_failure)?;
    let height = thumbnail_height(width, (image.width(), image.height()));
    let thumb = image.thumbnail(width, height);
    drop(image); // the frame back to the pool before encoding
    let mut out = permit.writer_with_capacity(png_estimate(&thumb));
    thumb
        .write_with_encoder(PngEncoder::new(&mut out))
        .map_err(|e| Failure::Unprocessable(e.to_string()))?;
    Ok(out.into_chunks())
}

/// The same with plain `Vec`s: `image`'s own decode, the same thumbnail.
pub fn thumbnail_vec(upload: &[u8], width: u32, max_frame: u64) -> Result<Vec<u8>, Failure> {
    if upload.is_empty() {
        return Err(Failure::BadRequest("empty body".into()));
    }
    let unprocessable =
        |e: image::ImageError| Failure::Unprocessable(format!("cannot decode the image: {e}"));
    let mut reader = ImageReader::new(Cursor::new(upload))
        .with_guessed_format()
        .map_err(|e| unprocessable(e.into()))?;
    reader.limits(limits(max_frame));
    let image = reader.decode().map_err(unprocessable)?;
    let height = thumbnail_height(width, (image.width(), image.height()));
    // The same operation on the same pixel type as the pooled path, so the
    // outputs are byte for byte equal.
    let thumb: DynamicImage = match &image {
        DynamicImage::ImageLuma8(i) => image::imageops::thumbnail(i, width, height).into(),
        DynamicImage::ImageLumaA8(i) => image::imageops::thumbnail(i, width, height).into(),
        DynamicImage::ImageRgb8(i) => image::imageops::thumbnail(i, width, height).into(),
        DynamicImage::ImageRgba8(i) => image::imageops::thumbnail(i, width, height).into(),
        DynamicImage::ImageLuma16(i) => image::imageops::thumbnail(i, width, height).into(),
        DynamicImage::ImageLumaA16(i) => image::imageops::thumbnail(i, width, height).into(),
        DynamicImage::ImageRgb16(i) => image::imageops::thumbnail(i, width, height).into(),
        DynamicImage::ImageRgba16(i) => image::imageops::thumbnail(i, width, height).into(),
        DynamicImage::ImageRgb32F(i) => image::imageops::thumbnail(i, width, height).into(),
        DynamicImage::ImageRgba32F(i) => image::imageops::thumbnail(i, width, height).into(),
        other => other.thumbnail_exact(width, height),
    };
    drop(image);
    let mut out = Vec::with_capacity(png_estimate(&thumb));
    thumb
        .write_with_encoder(PngEncoder::new(&mut out))
        .map_err(|e| Failure::Unprocessable(e.to_string()))?;
    Ok(out)
}

/// A first guess at a PNG's size: half the raw pixels, plus headers.
fn png_estimate(image: &DynamicImage) -> usize {
    image.as_bytes().len() / 2 + 1024
}

// === QR codes ===

/// The QR code of `text`: its modules, and its width in modules.
fn qr_modules(text: &[u8]) -> Result<(Vec<Color>, usize), Failure> {
    if text.is_empty() {
        return Err(Failure::BadRequest("empty body".into()));
    }
    if text.len() > QR_MAX_TEXT {
        return Err(Failure::TooLarge(format!(
            "QR text of {} bytes, at most {QR_MAX_TEXT}",
            text.len()
        )));
    }
    if std::str::from_utf8(text).is_err() {
        return Err(Failure::Unprocessable("QR text is not UTF-8".into()));
    }
    let code = QrCode::with_error_correction_level(text, EcLevel::M)
        .map_err(|e| Failure::Unprocessable(format!("QR: {e}")))?;
    Ok((code.to_colors(), code.width()))
}

/// Rasterises the modules, one row at a time, into `out` (8-bit gray).
fn qr_pixels(modules: &[Color], width: usize, mut row: impl FnMut(&[u8])) {
    let side = (width + 2 * QR_QUIET) * QR_SCALE;
    let mut line = vec![255u8; side];
    for y in 0..side {
        let my = (y / QR_SCALE).wrapping_sub(QR_QUIET);
        for (x, px) in line.iter_mut().enumerate() {
            let mx = (x / QR_SCALE).wrapping_sub(QR_QUIET);
            let dark = my < width && mx < width && modules[my * width + mx] == Color::Dark;
            *px = if dark { 0 } else { 255 };
        }
        row(&line);
    }
}

/// What a QR code takes at most: the largest code's frame (version 40,
/// 1480 pixels a side) and its PNG, with room to spare.
pub const QR_COST: usize = 4 << 20;

/// A QR code as PNG: rendered into a pooled frame, encoded into pooled
/// chunks, on an admitted request's `permit` (of [`QR_COST`]).
pub fn qr_pool(permit: &Permit, text: &[u8]) -> Result<Chunks, Failure> {
    let (modules, width) = qr_modules(text)?;
    let side = (width + 2 * QR_QUIET) * QR_SCALE;
    let mut frame = permit.get(side * side);
    qr_pixels(&modules, width, |row| frame.extend_from_slice(row));
    let mut out = permit.writer_with_capacity(side * side / 16 + 1024);
    PngEncoder::new(&mut out)
        .write_image(&frame, side as u32, side as u32, ExtendedColorType::L8)
        .map_err(|e| Failure::Unprocessable(e.to_string()))?;
    Ok(out.into_chunks())
}

/// The same with plain `Vec`s.
pub fn qr_vec(text: &[u8]) -> Result<Vec<u8>, Failure> {
    let (modules, width) = qr_modules(text)?;
    let side = (width + 2 * QR_QUIET) * QR_SCALE;
    let mut frame = Vec::with_capacity(side * side);
    qr_pixels(&modules, width, |row| frame.extend_from_slice(row));
    let mut out = Vec::with_capacity(side * side / 16 + 1024);
    PngEncoder::new(&mut out)
        .write_image(&frame, side as u32, side as u32, ExtendedColorType::L8)
        .map_err(|e| Failure::Unprocessable(e.to_string()))?;
    Ok(out)
}

// === PDFs ===

/// What a PDF of `text_len` bytes of text takes: pdf-writer's own `Vec`
/// (the text, its page objects, and a doubling as it grows) and the lines.
pub fn pdf_cost(text_len: usize) -> usize {
    text_len.saturating_mul(4).saturating_add(256 << 10)
}

/// A PDF of `text` in Helvetica, wrapped at 95 characters and paginated at
/// 70 lines (pdf-writer builds it in its own `Vec`; the PDF is small beside
/// the images).
pub fn pdf(text: &[u8]) -> Result<Vec<u8>, Failure> {
    use pdf_writer::{Content, Finish, Name, Pdf, Rect, Ref, Str};

    if text.is_empty() {
        return Err(Failure::BadRequest("empty body".into()));
    }
    let text = std::str::from_utf8(text)
        .map_err(|_| Failure::Unprocessable("text is not UTF-8".into()))?;
    let lines = wrap(text);
    let pages: Vec<&[Vec<u8>]> = lines.chunks(PAGE_LINES).collect();
    let catalog = Ref::new(1);
    let tree = Ref::new(2);
    let font = Ref::new(3);
    let page_ids: Vec<Ref> = (0..pages.len())
        .map(|i| Ref::new(4 + 2 * i as i32))
        .collect();
    let mut pdf = Pdf::with_capacity(text.len() + 4096);
    pdf.catalog(catalog).pages(tree);
    pdf.pages(tree)
        .kids(page_ids.iter().copied())
        .count(pages.len() as i32);
    pdf.type1_font(font)
        .base_font(Name(b"Helvetica"))
        .encoding_predefined(Name(b"WinAnsiEncoding"));
    for (page_lines, &id) in pages.iter().zip(&page_ids) {
        let contents = Ref::new(id.get() + 1);
        let mut page = pdf.page(id);
        page.media_box(Rect::new(0.0, 0.0, PAGE_WIDTH, PAGE_HEIGHT));
        page.parent(tree);
        page.contents(contents);
        page.resources().fonts().pair(Name(b"F1"), font);
        page.finish();
        let mut content = Content::new();
        content.begin_text();
        content.set_font(Name(b"F1"), 10.0);
        content.set_leading(11.0);
        content.next_line(40.0, PAGE_HEIGHT - 50.0);
        for line in page_lines.iter() {
            content.show(Str(line));
            content.next_line_using_leading();
        }
        content.end_text();
        pdf.stream(contents, &content.finish());
    }
    Ok(pdf.finish())
}

/// The text as lines of WinAnsi bytes (Latin-1 here; other characters
/// become `?`), wrapped at word boundaries.
fn wrap(text: &str) -> Vec<Vec<u8>> {
    let mut lines = Vec::new();
    for paragraph in text.lines() {
        let mut line: Vec<u8> = Vec::new();
        for word in paragraph.split(' ') {
            let word: Vec<u8> = word
                .chars()
                .map(|c| {
                    if (c as u32) < 256 && !c.is_control() {
                        c as u32 as u8
                    } else {
                        b'?'
                    }
                })
                .collect();
            if !line.is_empty() && line.len() + 1 + word.len() > LINE_CHARS {
                lines.push(std::mem::take(&mut line));
            }
            if !line.is_empty() {
                line.push(b' ');
            }
            for piece in word.chunks(LINE_CHARS) {
                if line.len() + piece.len() > LINE_CHARS {
                    lines.push(std::mem::take(&mut line));
                }
                line.extend_from_slice(piece);
            }
        }
        lines.push(line);
    }
    lines
}
