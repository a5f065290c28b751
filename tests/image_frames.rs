//! Decoding into pooled frames (feature `image`) with real codecs: PNG (8-
//! and 16-bit, gray, RGB, RGBA), JPEG, a decompression bomb, truncated and
//! foreign data, limits, and encoding back into a pooled writer.

mod common;

use std::io::Cursor;

use common::png::with_dimensions;
use image::codecs::png::PngEncoder;
use image::{DynamicImage, ImageBuffer, ImageFormat, Limits, Rgb, Rgba};
use tierpool::{DecodeError, ImageCost, Pool, PooledImage};

fn encode(image: &DynamicImage, format: ImageFormat) -> Vec<u8> {
    let mut out = Vec::new();
    image.write_to(&mut Cursor::new(&mut out), format).unwrap();
    out
}

/// A noisy RGB image (incompressible enough to be realistic).
fn photo(width: u32, height: u32, seed: u32) -> DynamicImage {
    let mut state = seed.wrapping_mul(2_654_435_761).max(1);
    DynamicImage::ImageRgb8(ImageBuffer::from_fn(width, height, |x, y| {
        state ^= state << 13;
        state ^= state >> 17;
        state ^= state << 5;
        Rgb([(x + y) as u8, (state >> 8) as u8, (y * 3) as u8])
    }))
}

/// The reference decoding, by the `image` crate alone.
fn reference(bytes: &[u8]) -> DynamicImage {
    image::load_from_memory(bytes).unwrap()
}

#[test]
fn png_and_jpeg_decode_into_pooled_frames_equal_to_image_s_own() {
    let pool = Pool::new();
    let rgb = photo(640, 480, 1);
    let cases: Vec<(DynamicImage, ImageFormat)> = vec![
        (rgb.clone(), ImageFormat::Png),
        (DynamicImage::ImageRgba8(rgb.to_rgba8()), ImageFormat::Png),
        (DynamicImage::ImageLuma8(rgb.to_luma8()), ImageFormat::Png),
        (
            DynamicImage::ImageLumaA8(rgb.to_luma_alpha8()),
            ImageFormat::Png,
        ),
        (DynamicImage::ImageRgb16(rgb.to_rgb16()), ImageFormat::Png),
        (DynamicImage::ImageRgba16(rgb.to_rgba16()), ImageFormat::Png),
        (DynamicImage::ImageLuma16(rgb.to_luma16()), ImageFormat::Png),
        (rgb.clone(), ImageFormat::Jpeg),
    ];
    for (image, format) in cases {
        let file = encode(&image, format);
        let upload = pool.read_to_end(&file[..]).unwrap();
        let decoded = pool.decode_image(upload).unwrap();
        let expected = reference(&file);
        assert_eq!(decoded.color(), expected.color(), "{format:?}");
        assert_eq!((decoded.width(), decoded.height()), (640, 480));
        assert_eq!(
            decoded.as_bytes(),
            expected.as_bytes(),
            "{format:?} {:?}",
            expected.color()
        );
        assert_eq!(decoded.to_dynamic(), expected);
        assert!(
            pool.stats().in_use_bytes >= decoded.as_bytes().len(),
            "the frame is pooled"
        );
    }
    assert_eq!(pool.stats().in_use_bytes, 0);
}

#[test]
fn sixteen_bit_frames_work_as_image_buffers() {
    let pool = Pool::new();
    let original: ImageBuffer<Rgba<u16>, Vec<u16>> = ImageBuffer::from_fn(300, 200, |x, y| {
        Rgba([x as u16 * 200, y as u16 * 300, 7, 65535])
    });
    let file = encode(
        &DynamicImage::ImageRgba16(original.clone()),
        ImageFormat::Png,
    );
    let PooledImage::Rgba16(frame) = pool.decode_image(Cursor::new(&file)).unwrap() else {
        panic!("a 16-bit RGBA PNG decodes to Rgba16");
    };
    assert_eq!(frame.get_pixel(299, 199), original.get_pixel(299, 199));
    assert_eq!(&frame.as_raw()[..], &original.as_raw()[..]);
    // An ImageBuffer over the frame goes through imageops like any other.
    let flipped = image::imageops::flip_horizontal(&frame);
    assert_eq!(flipped.get_pixel(0, 0), original.get_pixel(299, 0));
}

#[test]
fn a_reused_frame_never_shows_the_previous_image() {
    let pool = Pool::new();
    // The same size twice: the second decode reuses the first frame's
    // (dirty, unzeroed) block, and the decoder overwrites all of it.
    let first = encode(&photo(800, 600, 1), ImageFormat::Png);
    let second_image = DynamicImage::ImageRgb8(ImageBuffer::from_pixel(800, 600, Rgb([9, 9, 9])));
    let second = encode(&second_image, ImageFormat::Png);
    drop(pool.decode_image(Cursor::new(&first)).unwrap());
    let hits_before: u64 = pool.stats().classes.iter().map(|c| c.hits).sum();
    let decoded = pool.decode_image(Cursor::new(&second)).unwrap();
    let hits_after: u64 = pool.stats().classes.iter().map(|c| c.hits).sum();
    assert!(hits_after > hits_before, "the frame's block was reused");
    assert!(decoded.as_bytes().iter().all(|&b| b == 9));
}

#[test]
fn a_decompression_bomb_is_refused_before_a_frame_is_taken() {
    let pool = Pool::new();
    // A 2 KB PNG whose header claims 100 000 x 100 000 RGBA pixels (40 GB).
    let bomb = with_dimensions(
        &encode(&photo(16, 16, 3).to_rgba8().into(), ImageFormat::Png),
        100_000,
        100_000,
    );
    assert!(bomb.len() < 4096);
    let err = pool.decode_image(Cursor::new(&bomb)).unwrap_err();
    assert!(err.is_too_large(), "{err}");
    match err {
        DecodeError::TooLarge {
            width,
            height,
            frame_bytes,
            limit,
        } => {
            assert_eq!((width, height), (100_000, 100_000));
            assert_eq!(frame_bytes, 40_000_000_000);
            assert_eq!(limit, 512 << 20);
        }
        other => panic!("expected TooLarge, got {other:?}"),
    }
    let stats = pool.stats();
    assert_eq!(
        stats.in_use_bytes + stats.retained_bytes,
        0,
        "no frame taken"
    );

    // A tighter byte limit refuses a real image the same way.
    let file = encode(&photo(640, 480, 1), ImageFormat::Png);
    let mut limits = Limits::default();
    limits.max_alloc = Some(640 * 480 * 3 - 1);
    let err = pool
        .decode_image_with_limits(Cursor::new(&file), limits)
        .unwrap_err();
    assert!(
        matches!(
            err,
            DecodeError::TooLarge {
                frame_bytes: 921_600,
                ..
            }
        ),
        "{err}"
    );
    // And a dimension limit, through image's own check.
    let mut limits = Limits::default();
    limits.max_image_width = Some(100);
    let err = pool
        .decode_image_with_limits(Cursor::new(&file), limits)
        .unwrap_err();
    assert!(
        matches!(err, DecodeError::Image(image::ImageError::Limits(_))),
        "{err}"
    );
    assert!(err.is_too_large());
}

#[test]
fn truncated_and_foreign_data_are_image_errors_and_free_the_frame() {
    let pool = Pool::new();
    for format in [ImageFormat::Png, ImageFormat::Jpeg] {
        let file = encode(&photo(640, 480, 5), format);
        let truncated = &file[..file.len() / 2];
        match pool.decode_image(Cursor::new(truncated)) {
            Err(DecodeError::Image(_)) if format == ImageFormat::Png => {}
            // A JPEG decoder pads a truncated scan with grey and succeeds:
            // the missing end marker is caught before decoding.
            Err(DecodeError::Truncated) if format == ImageFormat::Jpeg => {}
            other => panic!("{format:?}: {other:?}"),
        }
    }
    let err = pool
        .decode_image(Cursor::new(b"plain text, not an image"))
        .unwrap_err();
    assert!(matches!(err, DecodeError::Image(_)), "{err}");
    assert!(!err.is_too_large());
    assert!(
        err.to_string().starts_with("cannot decode the image"),
        "{err}"
    );
    assert_eq!(pool.stats().in_use_bytes, 0);
}

#[test]
fn admission_refuses_a_frame_with_a_typed_error() {
    let pool = Pool::builder().max_in_use_bytes(100_000).build();
    let file = encode(&photo(640, 480, 1), ImageFormat::Png);
    let err = pool.decode_image(Cursor::new(&file)).unwrap_err();
    match err {
        DecodeError::Pool(e) => assert!(e.is_refused(), "{e}"),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[test]
fn an_admitted_request_decodes_on_its_permit_where_a_plain_get_is_refused() {
    // 320 × 240 RGB: a 230 400-byte frame, in a 256 KiB class.
    let pool = Pool::builder().max_in_use_bytes(300_000).build();
    let file = encode(&photo(320, 240, 3), ImageFormat::Png);
    let permit = pool
        .admit(320 * 240 * 3, std::time::Duration::from_secs(1))
        .expect("room for one frame");
    // The permit holds the room: a request that was not admitted is refused.
    match pool.decode_image(Cursor::new(&file)).unwrap_err() {
        DecodeError::Pool(e) => assert!(e.is_refused(), "{e}"),
        other => panic!("expected a refusal, got {other:?}"),
    }
    // The admitted one decodes on what it was given, equal to image's own.
    let before = permit.remaining();
    let image = permit.decode_image(Cursor::new(&file)).unwrap();
    assert_eq!(image.to_dynamic(), reference(&file));
    assert!(
        before - permit.remaining() >= 320 * 240 * 3,
        "the frame drew on the permit"
    );
    drop(image);
    drop(permit);
    assert_eq!(pool.stats().in_use_bytes, 0);
}

#[test]
fn decode_resize_encode_all_in_the_pool() {
    let pool = Pool::new();
    let file = encode(&photo(1200, 900, 2), ImageFormat::Jpeg);
    let upload = pool.read_to_end(&file[..]).unwrap();
    let image = pool.decode_image(upload).unwrap();
    let thumb = image.thumbnail(128, 96);
    let mut out = pool.writer();
    thumb.write_with_encoder(PngEncoder::new(&mut out)).unwrap();
    let png = out.into_chunks().to_vec();
    let back = reference(&png);
    assert_eq!((back.width(), back.height()), (128, 96));
    assert_eq!(back, thumb);
    // The frame itself encodes too.
    let mut out = pool.writer();
    image.write_with_encoder(PngEncoder::new(&mut out)).unwrap();
    assert_eq!(
        reference(&out.into_chunks().to_vec()).as_bytes(),
        image.as_bytes()
    );
}

#[test]
fn a_truncated_jpeg_is_refused_from_its_missing_end_marker_at_every_cut() {
    let pool = Pool::new();
    let file = encode(&photo(320, 240, 9), ImageFormat::Jpeg);
    for cut in [file.len() / 3, file.len() / 2, file.len() - 2] {
        let err = pool.decode_image(Cursor::new(&file[..cut])).unwrap_err();
        assert!(matches!(err, DecodeError::Truncated), "cut at {cut}: {err}");
        let err = ImageCost::read(&mut Cursor::new(&file[..cut]), Limits::default()).unwrap_err();
        assert!(matches!(err, DecodeError::Truncated), "cut at {cut}: {err}");
    }
    // Bytes after the end marker (a camera's trailer) are fine.
    let mut trailer = file.clone();
    trailer.extend_from_slice(&[0; 100]);
    assert_eq!(
        pool.decode_image(Cursor::new(&trailer)).unwrap().width(),
        320
    );
    assert_eq!(pool.stats().in_use_bytes, 0);
}

#[test]
fn the_cost_of_an_image_comes_from_its_header_and_leaves_the_reader_in_place() {
    let pool = Pool::new();
    for (format, width, height) in [(ImageFormat::Png, 400, 300), (ImageFormat::Jpeg, 640, 480)] {
        let file = encode(&photo(width, height, 2), format);
        let mut upload = pool.read_to_end(&file[..]).unwrap();
        let cost = ImageCost::read(&mut upload, Limits::default()).unwrap();
        assert_eq!((cost.width, cost.height), (width, height));
        assert_eq!(cost.frame_bytes, u64::from(width * height * 3));
        assert!(cost.decoder_bytes > 0 && cost.decoder_bytes < cost.frame_bytes * 2);
        assert_eq!(cost.total(), cost.frame_bytes + cost.decoder_bytes);
        // The upload decodes from where it was.
        let image = pool.decode_image(upload).unwrap();
        assert_eq!(image.to_dynamic(), reference(&file));
    }
    // A decompression bomb is refused from its header.
    let small = encode(&photo(16, 16, 1), ImageFormat::Png);
    let bomb = with_dimensions(&small, 100_000, 100_000);
    let mut limits = Limits::default();
    limits.max_alloc = Some(256 << 20);
    limits.max_image_width = None;
    limits.max_image_height = None;
    match ImageCost::read(&mut Cursor::new(&bomb), limits) {
        Err(DecodeError::TooLarge { frame_bytes, .. }) => assert_eq!(frame_bytes, 30_000_000_000),
        other => panic!("{other:?}"),
    }
    assert!(ImageCost::read(&mut Cursor::new(b"not an image"), Limits::default()).is_err());
}

#[test]
fn a_permit_covers_the_frame_and_the_output_writer() {
    use std::io::Write;
    // Room for one request: its frame and its output, admitted together
    // by cost; meanwhile nothing else fits.
    let file = encode(&photo(320, 240, 4), ImageFormat::Png);
    let cost = ImageCost::read(&mut Cursor::new(&file), Limits::default()).unwrap();
    let budget = (cost.total() as usize + (64 << 10)) * 2;
    let pool = Pool::builder().max_in_use_bytes(budget).build();
    let permit = pool
        .admit(
            cost.total() as usize + (64 << 10),
            std::time::Duration::from_secs(1),
        )
        .unwrap();
    assert!(
        pool.try_get(budget / 2).is_err(),
        "the permit holds the room"
    );
    let image = permit.decode_image(Cursor::new(&file)).unwrap();
    let mut out = permit.writer_with_capacity(1 << 20);
    image
        .write_with_encoder(PngEncoder::new(&mut out))
        .expect("never refused on the permit");
    out.write_all(b"").unwrap();
    drop(permit); // the writer keeps what it still needs set aside
    let png = out.into_chunks().to_vec();
    assert_eq!(reference(&png), reference(&file));
    drop(image);
    assert_eq!(pool.stats().set_aside_bytes, 0);
}
