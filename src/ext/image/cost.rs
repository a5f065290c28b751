//! What decoding an image takes, read from its header before anything
//! is decoded; a JPEG cut short, found from its missing end marker.

use std::io::{BufRead, Seek};

use image::{ImageDecoder, ImageError, ImageReader, Limits};

use super::{DecodeError, frame_within_limit};

/// What decoding an image will take, read from its header alone, so a
/// service can admit the request by its real cost ([`Pool::admit`](crate::Pool::admit)) before
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
        let frame_bytes = frame_within_limit(&decoder, &limits)?;
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
pub(super) fn jpeg_truncated<R: BufRead + Seek>(reader: &mut R) -> std::io::Result<bool> {
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
