//! Decoded images in pooled memory (feature `image`): [`Pool::decode_image`]
//! decodes straight into a pooled [`Frame`], checked against the limits
//! before the frame is taken, and [`PooledImage`] works as the `image`
//! crate's `ImageBuffer` over it.
//!
//! The decoded pixels are where an image service's memory goes (a 12
//! megapixel photo is 36 MB of RGB), so they are what the pool must hold.

use std::fmt;
use std::io::{BufRead, Seek};
use std::marker::PhantomData;
use std::ops::{Deref, DerefMut};

use image::error::{ImageFormatHint, UnsupportedError, UnsupportedErrorKind};
use image::imageops::FilterType;
use image::{
    ColorType, DynamicImage, ImageBuffer, ImageDecoder, ImageEncoder, ImageError, ImageReader,
    ImageResult, Limits, Luma, LumaA, Rgb, Rgba,
};

use crate::pool::Draw;
use crate::{Error, Permit, Pool, PooledBuf};

mod cost;

pub use cost::ImageCost;
use cost::jpeg_truncated;

mod sealed {
    pub trait Sealed {}
    impl Sealed for u8 {}
    impl Sealed for u16 {}
    impl Sealed for f32 {}
}

/// The sample types a decoder yields: `u8`, `u16` and `f32`. Every bit
/// pattern is a valid value of each, so decoded bytes can be viewed as
/// samples. Sealed: no other type can implement it.
pub trait Sample: sealed::Sealed + Copy + Send + Sync + 'static {}
impl Sample for u8 {}
impl Sample for u16 {}
impl Sample for f32 {}

/// The samples of a decoded image, in a pooled buffer: `Deref<Target = [T]>`,
/// so it serves as the container of an `image::ImageBuffer`. The buffer goes
/// back to the pool when the frame drops.
pub struct Frame<T: Sample> {
    buf: PooledBuf,
    /// Bytes skipped at the start of `buf` so the samples are aligned for
    /// `T` (0 for `u8`, and for every block the pool hands out in practice).
    offset: usize,
    /// The number of samples.
    len: usize,
    _sample: PhantomData<T>,
}

// === impl Frame ===

impl<T: Sample> Frame<T> {
    /// Takes a frame of `len` samples through `draw` (the pool, refusably,
    /// or an admitted request's permit), zeroed: a decoder is safe code that
    /// may read its buffer or leave some of it unwritten, and neither may
    /// show a previous user's bytes.
    fn take(draw: &Draw, len: usize) -> Result<Frame<T>, Error> {
        let size = std::mem::size_of::<T>();
        let align = std::mem::align_of::<T>();
        let bytes = len
            .checked_mul(size)
            .and_then(|b| b.checked_add(align - 1))
            .ok_or(Error::CapacityOverflow {
                requested: usize::MAX,
            })?;
        let mut buf = draw.take(bytes)?;
        let offset = buf.as_ptr().addr().wrapping_neg() % align;
        buf.resize(offset + len * size, 0);
        Ok(Frame {
            buf,
            offset,
            len,
            _sample: PhantomData,
        })
    }

    /// The frame's bytes, for a decoder that writes every one of them.
    fn overwrite(&mut self) -> &mut [u8] {
        let end = self.offset + self.len * std::mem::size_of::<T>();
        &mut self.buf[self.offset..end]
    }

    /// The samples as bytes (native endian).
    pub fn as_bytes(&self) -> &[u8] {
        &self.buf[self.offset..self.offset + self.len * std::mem::size_of::<T>()]
    }

    /// The pooled capacity behind the frame.
    pub fn capacity(&self) -> usize {
        self.buf.capacity()
    }
}

impl<T: Sample> Deref for Frame<T> {
    type Target = [T];

    fn deref(&self) -> &[T] {
        let bytes = self.as_bytes();
        // SAFETY: `bytes` starts `offset` bytes into the buffer, which `take`
        // chose so that it is aligned for `T`; it holds `len * size_of::<T>()`
        // initialised bytes, and every bit pattern is a valid `T` (`Sample`
        // is sealed to `u8`, `u16` and `f32`). The slice borrows `self`.
        unsafe { std::slice::from_raw_parts(bytes.as_ptr().cast::<T>(), self.len) }
    }
}

impl<T: Sample> DerefMut for Frame<T> {
    fn deref_mut(&mut self) -> &mut [T] {
        let len = self.len;
        let bytes = self.overwrite();
        // SAFETY: as in `deref`; any `T` written is valid bytes, and the
        // slice borrows `self` mutably.
        unsafe { std::slice::from_raw_parts_mut(bytes.as_mut_ptr().cast::<T>(), len) }
    }
}

/// Shows sizes, never the pixels.
impl<T: Sample> fmt::Debug for Frame<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Frame")
            .field("samples", &self.len)
            .field("sample", &std::any::type_name::<T>())
            .field("capacity", &self.buf.capacity())
            .finish()
    }
}

/// A decoded image whose pixels live in a pooled [`Frame`]: one
/// `image::ImageBuffer` per color type a decoder yields, like
/// `image::DynamicImage`.
#[derive(Debug)]
#[non_exhaustive]
#[allow(missing_docs)] // the variants are `DynamicImage`'s
pub enum PooledImage {
    L8(ImageBuffer<Luma<u8>, Frame<u8>>),
    La8(ImageBuffer<LumaA<u8>, Frame<u8>>),
    Rgb8(ImageBuffer<Rgb<u8>, Frame<u8>>),
    Rgba8(ImageBuffer<Rgba<u8>, Frame<u8>>),
    L16(ImageBuffer<Luma<u16>, Frame<u16>>),
    La16(ImageBuffer<LumaA<u16>, Frame<u16>>),
    Rgb16(ImageBuffer<Rgb<u16>, Frame<u16>>),
    Rgba16(ImageBuffer<Rgba<u16>, Frame<u16>>),
    Rgb32F(ImageBuffer<Rgb<f32>, Frame<f32>>),
    Rgba32F(ImageBuffer<Rgba<f32>, Frame<f32>>),
}

/// Runs `$body` with `$img` bound to the image buffer, whatever its type.
macro_rules! each {
    ($image:expr, $img:ident => $body:expr) => {
        match $image {
            PooledImage::L8($img) => $body,
            PooledImage::La8($img) => $body,
            PooledImage::Rgb8($img) => $body,
            PooledImage::Rgba8($img) => $body,
            PooledImage::L16($img) => $body,
            PooledImage::La16($img) => $body,
            PooledImage::Rgb16($img) => $body,
            PooledImage::Rgba16($img) => $body,
            PooledImage::Rgb32F($img) => $body,
            PooledImage::Rgba32F($img) => $body,
        }
    };
}

// === impl PooledImage ===

impl PooledImage {
    /// Width in pixels.
    pub fn width(&self) -> u32 {
        each!(self, img => img.width())
    }

    /// Height in pixels.
    pub fn height(&self) -> u32 {
        each!(self, img => img.height())
    }

    /// The color type the decoder yielded.
    pub fn color(&self) -> ColorType {
        match self {
            PooledImage::L8(_) => ColorType::L8,
            PooledImage::La8(_) => ColorType::La8,
            PooledImage::Rgb8(_) => ColorType::Rgb8,
            PooledImage::Rgba8(_) => ColorType::Rgba8,
            PooledImage::L16(_) => ColorType::L16,
            PooledImage::La16(_) => ColorType::La16,
            PooledImage::Rgb16(_) => ColorType::Rgb16,
            PooledImage::Rgba16(_) => ColorType::Rgba16,
            PooledImage::Rgb32F(_) => ColorType::Rgb32F,
            PooledImage::Rgba32F(_) => ColorType::Rgba32F,
        }
    }

    /// The pixels as bytes, row by row, samples in native endian (what
    /// `ImageEncoder::write_image` takes).
    pub fn as_bytes(&self) -> &[u8] {
        each!(self, img => img.as_raw().as_bytes())
    }

    /// The pooled capacity holding the pixels.
    pub fn capacity(&self) -> usize {
        each!(self, img => img.as_raw().capacity())
    }

    /// A thumbnail of exactly `width` × `height` (`image::imageops::thumbnail`:
    /// fast, area-averaged). Small, so it lives in a plain `Vec`.
    pub fn thumbnail(&self, width: u32, height: u32) -> DynamicImage {
        each!(self, img => image::imageops::thumbnail(img, width, height).into())
    }

    /// The image resized to exactly `width` × `height` with `filter`
    /// (`image::imageops::resize`).
    pub fn resize_exact(&self, width: u32, height: u32, filter: FilterType) -> DynamicImage {
        each!(self, img => image::imageops::resize(img, width, height, filter).into())
    }

    /// Encodes the image with `encoder`: for example
    /// `image::codecs::png::PngEncoder::new(&mut writer)` over a
    /// [`PooledWriter`](crate::PooledWriter), so the output lands in the
    /// pool too.
    ///
    /// # Errors
    ///
    /// The encoder's (an unsupported color type, a failed write).
    pub fn write_with_encoder(&self, encoder: impl ImageEncoder) -> ImageResult<()> {
        encoder.write_image(
            self.as_bytes(),
            self.width(),
            self.height(),
            self.color().into(),
        )
    }

    /// A copy in a `DynamicImage` (plain `Vec` memory), for whatever the
    /// `image` crate offers beyond this type.
    pub fn to_dynamic(&self) -> DynamicImage {
        each!(self, img => copied(img).into())
    }
}

/// A copy of an image in a `Vec`.
fn copied<P>(img: &ImageBuffer<P, Frame<P::Subpixel>>) -> ImageBuffer<P, Vec<P::Subpixel>>
where
    P: image::Pixel,
    P::Subpixel: Sample,
{
    ImageBuffer::from_raw(img.width(), img.height(), img.as_raw().to_vec())
        .expect("the frame holds the whole image")
}

/// Why [`Pool::decode_image`] failed. The frame, if one was taken, went back
/// to the pool.
#[derive(Debug)]
#[non_exhaustive]
pub enum DecodeError {
    /// The decoded frame would be larger than the limit (`Limits::max_alloc`;
    /// a decompression bomb is refused here), found from the image's header
    /// before any pixel was decoded or any frame taken.
    TooLarge {
        /// Width in pixels, from the header.
        width: u32,
        /// Height in pixels, from the header.
        height: u32,
        /// The frame's size: width × height × bytes per pixel.
        frame_bytes: u64,
        /// The limit it passed.
        limit: u64,
    },
    /// The image could not be decoded: not an image, an unsupported format
    /// or color type, corrupt or truncated data, or a dimension over
    /// `Limits::max_image_width`/`max_image_height` (`ImageError::Limits`).
    Image(ImageError),
    /// The pool could not give the frame: admission refused, or the
    /// allocator failed.
    Pool(Error),
    /// The data ends before the image does: a JPEG without its end marker
    /// (which decoders would otherwise fill out with grey), found before
    /// anything is decoded.
    Truncated,
}

impl DecodeError {
    /// Whether the image was refused for its size: a frame over the byte
    /// limit or a dimension over `image::Limits`.
    pub fn is_too_large(&self) -> bool {
        matches!(
            self,
            DecodeError::TooLarge { .. } | DecodeError::Image(ImageError::Limits(_))
        )
    }
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DecodeError::TooLarge {
                width,
                height,
                frame_bytes,
                limit,
            } => write!(
                f,
                "image too large: {width}x{height} would decode to {frame_bytes} bytes, \
                 the limit is {limit}"
            ),
            DecodeError::Image(e) => write!(f, "cannot decode the image: {e}"),
            DecodeError::Pool(e) => write!(f, "no memory for the decoded image: {e}"),
            DecodeError::Truncated => f.write_str("the image data is truncated"),
        }
    }
}

impl std::error::Error for DecodeError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            DecodeError::TooLarge { .. } | DecodeError::Truncated => None,
            DecodeError::Image(e) => Some(e),
            DecodeError::Pool(e) => Some(e),
        }
    }
}

impl From<ImageError> for DecodeError {
    fn from(e: ImageError) -> Self {
        DecodeError::Image(e)
    }
}

impl From<Error> for DecodeError {
    fn from(e: Error) -> Self {
        DecodeError::Pool(e)
    }
}

// === impl Pool (images) ===

#[cfg_attr(docsrs, doc(cfg(feature = "image")))]
impl Pool {
    /// Decodes an image (its format guessed from its first bytes) into a
    /// pooled frame, with `image::Limits::default()` (a 512 MiB frame at
    /// most). See [`decode_image_with_limits`](Self::decode_image_with_limits).
    ///
    /// # Errors
    ///
    /// As `decode_image_with_limits`.
    pub fn decode_image<R: BufRead + Seek>(&self, reader: R) -> Result<PooledImage, DecodeError> {
        self.decode_image_with_limits(reader, Limits::default())
    }

    /// Decodes an image (its format guessed from its first bytes; the codecs
    /// are the `image` crate's features that the build enables) into a
    /// pooled frame.
    ///
    /// The header is read first, and the image refused before any frame is
    /// taken if its dimensions pass `limits.max_image_width`/`height`
    /// ([`DecodeError::Image`] with `ImageError::Limits`) or its frame
    /// (width × height × bytes per pixel) passes `limits.max_alloc`
    /// ([`DecodeError::TooLarge`]): a few hundred bytes claiming
    /// 100 000 × 100 000 pixels cost nothing. The decoder then gets what is
    /// left of `max_alloc` for its own buffers.
    ///
    /// The frame is zeroed before the decoder gets it: whatever a decoder
    /// reads or leaves unwritten, no previous user's bytes show.
    ///
    /// ```
    /// # let png = { let mut v = Vec::new(); image::RgbImage::new(64, 48).write_to(&mut std::io::Cursor::new(&mut v), image::ImageFormat::Png).unwrap(); v };
    /// let pool = tierpool::Pool::new();
    /// let upload = pool.read_to_end(&png[..])?;          // a request body
    /// let image = pool.decode_image(upload).unwrap();     // pixels in the pool
    /// assert_eq!((image.width(), image.height()), (64, 48));
    /// let thumb = image.thumbnail(32, 24);
    /// let mut out = pool.writer();
    /// thumb.write_with_encoder(image::codecs::png::PngEncoder::new(&mut out)).unwrap();
    /// assert!(out.len() > 0);
    /// # Ok::<(), std::io::Error>(())
    /// ```
    ///
    /// # Errors
    ///
    /// [`DecodeError::TooLarge`], [`DecodeError::Image`] (not an image,
    /// corrupt or truncated, a limit), [`DecodeError::Pool`].
    pub fn decode_image_with_limits<R: BufRead + Seek>(
        &self,
        reader: R,
        limits: Limits,
    ) -> Result<PooledImage, DecodeError> {
        decode_reader(reader, limits, &Draw::Pool(self.clone()))
    }

    /// Decodes with a decoder the caller made (a format chosen by hand, a
    /// decoder's own options) into a pooled frame, with the checks of
    /// [`decode_image_with_limits`](Self::decode_image_with_limits).
    ///
    /// # Errors
    ///
    /// As `decode_image_with_limits`.
    pub fn decode_with<D: ImageDecoder>(
        &self,
        decoder: D,
        limits: Limits,
    ) -> Result<PooledImage, DecodeError> {
        decode_into(decoder, limits, &Draw::Pool(self.clone()))
    }
}

// === impl Permit (images) ===

#[cfg_attr(docsrs, doc(cfg(feature = "image")))]
impl Permit {
    /// [`Pool::decode_image`] for an admitted request: the frame comes out
    /// of what the permit set aside, and is never refused.
    ///
    /// ```
    /// # let png = { let mut v = Vec::new(); image::RgbImage::new(64, 48).write_to(&mut std::io::Cursor::new(&mut v), image::ImageFormat::Png).unwrap(); v };
    /// let pool = tierpool::Pool::new();
    /// // Admitted for its frame: 64 × 48 RGB.
    /// let permit = pool.admit(64 * 48 * 3, std::time::Duration::from_secs(1)).unwrap();
    /// let upload = pool.read_to_end(&png[..])?;
    /// let before = permit.remaining();
    /// let image = permit.decode_image(upload).unwrap();
    /// assert_eq!((image.width(), image.height()), (64, 48));
    /// assert!(permit.remaining() < before, "the frame drew on the permit");
    /// # Ok::<(), std::io::Error>(())
    /// ```
    ///
    /// # Errors
    ///
    /// As [`Pool::decode_image_with_limits`], except that the frame is never
    /// refused by admission.
    pub fn decode_image<R: BufRead + Seek>(&self, reader: R) -> Result<PooledImage, DecodeError> {
        self.decode_image_with_limits(reader, Limits::default())
    }

    /// [`Pool::decode_image_with_limits`] for an admitted request: the frame
    /// comes out of what the permit set aside, and is never refused.
    ///
    /// # Errors
    ///
    /// As [`Pool::decode_image_with_limits`], except that the frame is never
    /// refused by admission.
    pub fn decode_image_with_limits<R: BufRead + Seek>(
        &self,
        reader: R,
        limits: Limits,
    ) -> Result<PooledImage, DecodeError> {
        decode_reader(reader, limits, &self.draw())
    }

    /// [`Pool::decode_with`] for an admitted request: the frame comes out
    /// of what the permit set aside, and is never refused.
    ///
    /// # Errors
    ///
    /// As [`Pool::decode_with`], except that the frame is never refused by
    /// admission.
    pub fn decode_with<D: ImageDecoder>(
        &self,
        decoder: D,
        limits: Limits,
    ) -> Result<PooledImage, DecodeError> {
        decode_into(decoder, limits, &self.draw())
    }
}

/// Reads the header, makes the decoder for the format it names (with
/// `limits` on its own allocations) and decodes through [`decode_into`].
fn decode_reader<R: BufRead + Seek>(
    mut reader: R,
    limits: Limits,
    draw: &Draw,
) -> Result<PooledImage, DecodeError> {
    if jpeg_truncated(&mut reader).map_err(ImageError::IoError)? {
        return Err(DecodeError::Truncated);
    }
    let mut reader = ImageReader::new(reader)
        .with_guessed_format()
        .map_err(ImageError::IoError)?;
    reader.limits(limits.clone());
    let decoder = reader.into_decoder()?;
    decode_into(decoder, limits, draw)
}

/// The decoded frame's size, from the header: refused over
/// `limits.max_alloc` (a decompression bomb), before any frame is taken.
fn frame_within_limit(decoder: &impl ImageDecoder, limits: &Limits) -> Result<u64, DecodeError> {
    let (width, height) = decoder.dimensions();
    let frame_bytes = decoder.total_bytes();
    let limit = limits.max_alloc.unwrap_or(u64::MAX);
    if frame_bytes > limit {
        return Err(DecodeError::TooLarge {
            width,
            height,
            frame_bytes,
            limit,
        });
    }
    Ok(frame_bytes)
}

/// The one decode path of `Pool` and `Permit`: the checks and the
/// decoding of [`Pool::decode_with`], the frame taken through `draw`.
fn decode_into<D: ImageDecoder>(
    mut decoder: D,
    mut limits: Limits,
    draw: &Draw,
) -> Result<PooledImage, DecodeError> {
    let (width, height) = decoder.dimensions();
    let color = decoder.color_type();
    let frame_bytes = frame_within_limit(&decoder, &limits)?;
    limits.reserve(frame_bytes)?;
    decoder.set_limits(limits)?;
    let bytes = usize::try_from(frame_bytes).map_err(|_| Error::CapacityOverflow {
        requested: usize::MAX,
    })?;
    macro_rules! decode {
        ($variant:ident, $sample:ty) => {{
            let mut frame = Frame::<$sample>::take(draw, bytes / std::mem::size_of::<$sample>())?;
            decoder.read_image(frame.overwrite())?;
            let image = ImageBuffer::from_raw(width, height, frame).ok_or_else(|| {
                ImageError::Parameter(image::error::ParameterError::from_kind(
                    image::error::ParameterErrorKind::DimensionMismatch,
                ))
            })?;
            Ok(PooledImage::$variant(image))
        }};
    }
    match color {
        ColorType::L8 => decode!(L8, u8),
        ColorType::La8 => decode!(La8, u8),
        ColorType::Rgb8 => decode!(Rgb8, u8),
        ColorType::Rgba8 => decode!(Rgba8, u8),
        ColorType::L16 => decode!(L16, u16),
        ColorType::La16 => decode!(La16, u16),
        ColorType::Rgb16 => decode!(Rgb16, u16),
        ColorType::Rgba16 => decode!(Rgba16, u16),
        ColorType::Rgb32F => decode!(Rgb32F, f32),
        ColorType::Rgba32F => decode!(Rgba32F, f32),
        other => Err(DecodeError::Image(ImageError::Unsupported(
            UnsupportedError::from_format_and_kind(
                ImageFormatHint::Unknown,
                UnsupportedErrorKind::Color(other.into()),
            ),
        ))),
    }
}

#[cfg(all(test, not(tierpool_loom)))]
mod tests;
