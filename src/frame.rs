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

use crate::{Error, Permit, Pool, PooledBuf};

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
    /// Takes a frame of `len` samples through `get` (a pool's `try_get`, or
    /// an admitted request's permit), zeroed: a decoder is safe code that
    /// may read its buffer or leave some of it unwritten, and neither may
    /// show a previous user's bytes.
    fn take(
        get: &mut dyn FnMut(usize) -> Result<PooledBuf, Error>,
        len: usize,
    ) -> Result<Frame<T>, Error> {
        let size = std::mem::size_of::<T>();
        let align = std::mem::align_of::<T>();
        let bytes = len
            .checked_mul(size)
            .and_then(|b| b.checked_add(align - 1))
            .ok_or(Error::CapacityOverflow {
                requested: usize::MAX,
            })?;
        let mut buf = get(bytes)?;
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
        decode_reader(reader, limits, &mut |bytes| self.try_get(bytes))
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
        decode_into(decoder, limits, &mut |bytes| self.try_get(bytes))
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
        decode_reader(reader, limits, &mut |bytes| Ok(self.get(bytes)))
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
        decode_into(decoder, limits, &mut |bytes| Ok(self.get(bytes)))
    }
}

/// Reads the header, makes the decoder for the format it names (with
/// `limits` on its own allocations) and decodes through [`decode_into`].
fn decode_reader<R: BufRead + Seek>(
    mut reader: R,
    limits: Limits,
    get: &mut dyn FnMut(usize) -> Result<PooledBuf, Error>,
) -> Result<PooledImage, DecodeError> {
    if jpeg_truncated(&mut reader).map_err(ImageError::IoError)? {
        return Err(DecodeError::Truncated);
    }
    let mut reader = ImageReader::new(reader)
        .with_guessed_format()
        .map_err(ImageError::IoError)?;
    reader.limits(limits.clone());
    let decoder = reader.into_decoder()?;
    decode_into(decoder, limits, get)
}

/// What decoding an image will take, read from its header alone, so a
/// service can admit the request by its real cost ([`Pool::admit`]) before
/// it decodes anything.
///
/// ```
/// # let png = { let mut v = Vec::new(); image::RgbImage::new(640, 480).write_to(&mut std::io::Cursor::new(&mut v), image::ImageFormat::Png).unwrap(); v };
/// use std::time::Duration;
/// use tierpool::ImageCost;
///
/// let pool = tierpool::Pool::new();
/// let mut upload = pool.read_to_end(&png[..])?;
/// let cost = ImageCost::read(&mut upload, image::Limits::default()).unwrap();
/// assert_eq!((cost.width, cost.height, cost.frame_bytes), (640, 480, 640 * 480 * 3));
/// let permit = pool.admit(cost.total() as usize, Duration::from_secs(1)).unwrap();
/// let image = permit.decode_image(upload).unwrap(); // never refused now
/// # assert_eq!(image.width(), 640);
/// # Ok::<(), std::io::Error>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct ImageCost {
    /// Width in pixels, from the header.
    pub width: u32,
    /// Height in pixels, from the header.
    pub height: u32,
    /// The decoded frame's size: width × height × bytes per pixel.
    pub frame_bytes: u64,
    /// An upper estimate of the decoder's own working memory beside the
    /// frame: for a progressive JPEG, its coefficients (two bytes a sample);
    /// for a baseline JPEG or a PNG, rows and inflate state; for other
    /// formats, as much as the frame again.
    pub decoder_bytes: u64,
}

impl ImageCost {
    /// Reads the cost from the header of the image in `reader` (its format
    /// guessed from its first bytes), leaving the reader where it was.
    ///
    /// # Errors
    ///
    /// [`DecodeError::TooLarge`] for a frame over `limits.max_alloc` (a
    /// decompression bomb, refused from a few hundred bytes);
    /// [`DecodeError::Truncated`] for a JPEG without its end marker;
    /// [`DecodeError::Image`] for data that is no image of a known format,
    /// or a dimension over `limits`.
    pub fn read<R: BufRead + Seek>(
        reader: &mut R,
        limits: Limits,
    ) -> Result<ImageCost, DecodeError> {
        let start = reader.stream_position().map_err(ImageError::IoError)?;
        let cost = Self::read_from(&mut *reader, limits);
        reader
            .seek(std::io::SeekFrom::Start(start))
            .map_err(ImageError::IoError)?;
        cost
    }

    fn read_from<R: BufRead + Seek>(
        reader: &mut R,
        limits: Limits,
    ) -> Result<ImageCost, DecodeError> {
        if jpeg_truncated(reader).map_err(ImageError::IoError)? {
            return Err(DecodeError::Truncated);
        }
        let progressive = jpeg_progressive(reader).map_err(ImageError::IoError)?;
        let mut image = ImageReader::new(&mut *reader)
            .with_guessed_format()
            .map_err(ImageError::IoError)?;
        image.limits(limits.clone());
        let format = image.format();
        let decoder = image.into_decoder()?;
        let (width, height) = decoder.dimensions();
        let color = decoder.color_type();
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
        let row = u64::from(width) * u64::from(color.bytes_per_pixel());
        let decoder_bytes = match (format, progressive) {
            // i16 coefficients for every sample until the last scan.
            (Some(image::ImageFormat::Jpeg), true) => {
                u64::from(width) * u64::from(height) * u64::from(color.channel_count()) * 2
            }
            // An MCU row (up to 16 pixel rows) of upsampling buffers.
            (Some(image::ImageFormat::Jpeg), false) => row * 32 + (256 << 10),
            // The previous and current row, and the inflate window.
            (Some(image::ImageFormat::Png), _) => row * 2 + (512 << 10),
            _ => frame_bytes,
        };
        Ok(ImageCost {
            width,
            height,
            frame_bytes,
            decoder_bytes,
        })
    }

    /// The frame and the decoder's working memory together.
    pub fn total(&self) -> u64 {
        self.frame_bytes.saturating_add(self.decoder_bytes)
    }
}

/// The bytes at the end of a JPEG searched for its end marker (an encoder
/// or a camera may append some after it).
const JPEG_TAIL: u64 = 4096;

/// Whether `reader` holds a JPEG (it starts with SOI) whose last
/// [`JPEG_TAIL`] bytes have no end-of-image marker: cut short, which
/// decoders fill out with grey instead of failing. The reader is left
/// where it was.
fn jpeg_truncated<R: BufRead + Seek>(reader: &mut R) -> std::io::Result<bool> {
    use std::io::{Read, SeekFrom};
    let start = reader.stream_position()?;
    let mut soi = [0u8; 2];
    let is_jpeg = reader.read_exact(&mut soi).is_ok() && soi == [0xFF, 0xD8];
    let truncated = if is_jpeg {
        let end = reader.seek(SeekFrom::End(0))?;
        let from = end.saturating_sub(JPEG_TAIL).max(start + 2);
        reader.seek(SeekFrom::Start(from))?;
        let mut tail = Vec::with_capacity((end - from) as usize);
        reader.take(end - from).read_to_end(&mut tail)?;
        !tail.windows(2).any(|w| w == [0xFF, 0xD9])
    } else {
        false
    };
    reader.seek(SeekFrom::Start(start))?;
    Ok(truncated)
}

/// Whether `reader` holds a progressive JPEG (its frame header is SOF2,
/// SOF6, SOF10 or SOF14), found by walking the marker segments before the
/// first scan. The reader is left where it was.
fn jpeg_progressive<R: BufRead + Seek>(reader: &mut R) -> std::io::Result<bool> {
    use std::io::SeekFrom;
    let start = reader.stream_position()?;
    let mut found = false;
    let mut marker = [0u8; 2];
    if reader.read_exact(&mut marker).is_ok() && marker == [0xFF, 0xD8] {
        // Segments: FF, a marker byte, then a big-endian length that
        // counts itself; the frame header comes before the first scan.
        for _ in 0..256 {
            if reader.read_exact(&mut marker).is_err() || marker[0] != 0xFF {
                break;
            }
            match marker[1] {
                0xFF => {
                    // Fill byte: the marker byte follows.
                    reader.seek(SeekFrom::Current(-1))?;
                    continue;
                }
                0xC2 | 0xC6 | 0xCA | 0xCE => {
                    found = true;
                    break;
                }
                0xC0 | 0xC1 | 0xC3 | 0xC5 | 0xC7 | 0xC9 | 0xCB | 0xCD | 0xCF | 0xDA | 0xD9 => {
                    break;
                }
                _ => {}
            }
            let mut len = [0u8; 2];
            if reader.read_exact(&mut len).is_err() {
                break;
            }
            let len = u16::from_be_bytes(len);
            if len < 2 {
                break;
            }
            reader.seek(SeekFrom::Current(i64::from(len) - 2))?;
        }
    }
    reader.seek(SeekFrom::Start(start))?;
    Ok(found)
}

/// The checks and the decoding of [`Pool::decode_with`], the frame taken
/// through `get`.
fn decode_into<D: ImageDecoder>(
    mut decoder: D,
    mut limits: Limits,
    get: &mut dyn FnMut(usize) -> Result<PooledBuf, Error>,
) -> Result<PooledImage, DecodeError> {
    let (width, height) = decoder.dimensions();
    let color = decoder.color_type();
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
    limits.reserve(frame_bytes)?;
    decoder.set_limits(limits)?;
    let bytes = usize::try_from(frame_bytes).map_err(|_| Error::CapacityOverflow {
        requested: usize::MAX,
    })?;
    macro_rules! decode {
        ($variant:ident, $sample:ty) => {{
            let mut frame = Frame::<$sample>::take(get, bytes / std::mem::size_of::<$sample>())?;
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
mod tests {
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
}
