//! Unit tests of the frames, with decoders made here (no codec needed, so
//! miri runs them).

use std::sync::Arc as StdArc;
use std::sync::atomic::{AtomicBool, Ordering as AtomicOrdering};

use super::*;

/// A decoder of a `width` × `height` image of `color` whose bytes count
/// up from `seed`: no codec needed, so miri runs these.
struct Counting {
    width: u32,
    height: u32,
    color: ColorType,
    seed: u8,
}

impl ImageDecoder for Counting {
    fn dimensions(&self) -> (u32, u32) {
        (self.width, self.height)
    }

    fn color_type(&self) -> ColorType {
        self.color
    }

    fn read_image(self, buf: &mut [u8]) -> ImageResult<()> {
        assert_eq!(buf.len() as u64, self.total_bytes());
        for (i, b) in buf.iter_mut().enumerate() {
            *b = self.seed.wrapping_add(i as u8);
        }
        Ok(())
    }

    fn read_image_boxed(self: Box<Self>, buf: &mut [u8]) -> ImageResult<()> {
        (*self).read_image(buf)
    }
}

fn decode(pool: &Pool, color: ColorType, seed: u8) -> PooledImage {
    let decoder = Counting {
        width: 7,
        height: 5,
        color,
        seed,
    };
    pool.decode_with(decoder, Limits::default()).unwrap()
}

#[test]
fn frames_of_every_sample_type_are_aligned_and_hold_the_decoded_bytes() {
    let pool = Pool::new();
    for color in [
        ColorType::L8,
        ColorType::Rgba8,
        ColorType::La16,
        ColorType::Rgb16,
        ColorType::Rgb32F,
        ColorType::Rgba32F,
    ] {
        // Twice: the second decode reuses the first one's block.
        for seed in [1, 100] {
            let image = decode(&pool, color, seed);
            assert_eq!(image.color(), color);
            let bytes = image.as_bytes();
            assert_eq!(
                bytes.len() as u64,
                7 * 5 * u64::from(color.bytes_per_pixel())
            );
            for (i, &b) in bytes.iter().enumerate() {
                assert_eq!(b, seed.wrapping_add(i as u8));
            }
            match &image {
                PooledImage::Rgb16(img) => {
                    let samples: &[u16] = img.as_raw();
                    assert!(samples.as_ptr().is_aligned());
                    assert_eq!(samples[0], u16::from_ne_bytes([seed, seed.wrapping_add(1)]));
                }
                PooledImage::Rgba32F(img) => {
                    let samples: &[f32] = img.as_raw();
                    assert!(samples.as_ptr().is_aligned());
                    assert_eq!(samples.len(), 7 * 5 * 4);
                }
                _ => {}
            }
        }
    }
    assert_eq!(pool.stats().in_use_bytes, 0);
}

#[test]
fn a_frame_can_be_written_through_the_image_buffer() {
    let pool = Pool::new();
    let PooledImage::Rgba16(mut img) = decode(&pool, ColorType::Rgba16, 0) else {
        unreachable!()
    };
    img.put_pixel(6, 4, Rgba([1, 2, 3, 65535]));
    assert_eq!(img.get_pixel(6, 4), &Rgba([1, 2, 3, 65535]));
    let copy = PooledImage::Rgba16(img).to_dynamic();
    assert_eq!(
        copy.as_rgba16().unwrap().get_pixel(6, 4),
        &Rgba([1, 2, 3, 65535])
    );
}

#[test]
fn the_byte_limit_is_checked_before_a_frame_is_taken() {
    let pool = Pool::new();
    let decoder = Counting {
        width: 1000,
        height: 1000,
        color: ColorType::Rgba8,
        seed: 0,
    };
    let mut limits = Limits::default();
    limits.max_alloc = Some(3_999_999);
    let err = pool.decode_with(decoder, limits).unwrap_err();
    assert!(
        matches!(
            err,
            DecodeError::TooLarge {
                frame_bytes: 4_000_000,
                limit: 3_999_999,
                ..
            }
        ),
        "{err}"
    );
    let stats = pool.stats();
    assert_eq!(stats.in_use_bytes + stats.retained_bytes, 0);
}

/// The lazy decoder's width: its frame is 1 MiB, a mapped block whose
/// pages the pool keeps as they are (smaller under miri).
const LAZY_WIDTH: u32 = if cfg!(miri) { 32 } else { 1024 };

/// A safe decoder that records what its buffer held and writes nothing.
struct Lazy {
    saw_nonzero: StdArc<AtomicBool>,
}

impl ImageDecoder for Lazy {
    fn dimensions(&self) -> (u32, u32) {
        (LAZY_WIDTH, 256)
    }

    fn color_type(&self) -> ColorType {
        ColorType::Rgba8
    }

    fn read_image(self, buf: &mut [u8]) -> ImageResult<()> {
        if buf.iter().any(|&b| b != 0) {
            self.saw_nonzero.store(true, AtomicOrdering::Relaxed);
        }
        Ok(())
    }

    fn read_image_boxed(self: Box<Self>, buf: &mut [u8]) -> ImageResult<()> {
        (*self).read_image(buf)
    }
}

#[test]
fn a_custom_decoder_sees_and_leaves_only_zeros_in_a_reused_frame() {
    let pool = Pool::new();
    // A previous user's bytes in the block the frame will reuse.
    let size = LAZY_WIDTH as usize * 256 * 4;
    let mut secret = pool.get(size);
    secret.resize(size, 0xA5);
    let ptr = secret.as_ptr();
    drop(secret);
    let saw_nonzero = StdArc::new(AtomicBool::new(false));
    let image = pool
        .decode_with(
            Lazy {
                saw_nonzero: saw_nonzero.clone(),
            },
            Limits::default(),
        )
        .unwrap();
    let PooledImage::Rgba8(image) = image else {
        panic!("an RGBA frame")
    };
    assert_eq!(image.as_raw().capacity(), size);
    assert_eq!(
        image.as_raw().as_bytes().as_ptr().addr() & !63,
        ptr.addr() & !63,
        "the block was reused"
    );
    assert!(
        !saw_nonzero.load(AtomicOrdering::Relaxed),
        "the decoder saw stale bytes"
    );
    assert!(
        image.as_raw().as_bytes().iter().all(|&b| b == 0),
        "stale bytes in the image"
    );
}
