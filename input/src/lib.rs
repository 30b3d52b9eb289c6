//! Image and tensor files in, model-ready batches out.
//!
//! PNG (8- or 16-bit, gray or RGB, with or without an opaque alpha channel)
//! and `.npy` (u8, u16, f32 or f64) are read with a size cap and mapped to
//! tensor values exactly as the manifest's pixel mapping says. Every
//! dimension a header declares is checked against the manifest (height,
//! width, channels, at most `max_batch` images) *before* anything is
//! allocated for the pixels: a 1 MB PNG can declare 32768x32768, a 100-byte
//! `.npy` 2^44 elements. Shape and range are checked once more by the guest,
//! which is the authority.

use std::io::Cursor;

use medguard_attest::{ColorConversion, InputSpec, PixelScale};
use ndarray::ArrayD;
use ndarray_npy::npy::header::Header as NpyHeader;
use ndarray_npy::{ReadNpyError, ReadNpyExt};
use thiserror::Error;

/// Input files larger than this are refused before decoding.
pub const INPUT_MAX_BYTES: u64 = 64 << 20;

/// A batch of images, `[batch, channels, height, width]`, row-major.
#[derive(Debug, Clone, PartialEq)]
pub struct Batch {
    /// `[batch, channels, height, width]`.
    pub shape: [u32; 4],
    /// Tensor values.
    pub data: Vec<f32>,
    /// Bit depth of the integer samples the values came from (8 or 16), or 0
    /// when they were floats or a colour conversion mixed them; the guest
    /// reports values off this grid.
    pub source_bits: u8,
}

impl Batch {
    /// Number of images.
    pub fn len(&self) -> usize {
        self.shape[0] as usize
    }

    /// True when the batch holds no image.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Splits into batches of at most `max` images, in order.
    pub fn chunks(&self, max: usize) -> impl Iterator<Item = Batch> + '_ {
        let per_image = (self.shape[1] * self.shape[2] * self.shape[3]) as usize;
        self.data
            .chunks(max.max(1) * per_image.max(1))
            .map(move |data| Batch {
                shape: [
                    (data.len() / per_image.max(1)) as u32,
                    self.shape[1],
                    self.shape[2],
                    self.shape[3],
                ],
                data: data.to_vec(),
                source_bits: self.source_bits,
            })
    }

    /// The images at `indices`, in that order; `None` if one is out of range.
    pub fn select(&self, indices: &[usize]) -> Option<Batch> {
        let per_image = (self.shape[1] * self.shape[2] * self.shape[3]) as usize;
        let mut data = Vec::with_capacity(indices.len() * per_image);
        for &i in indices {
            data.extend_from_slice(self.data.get(i * per_image..(i + 1) * per_image)?);
        }
        Some(Batch {
            shape: [
                indices.len() as u32,
                self.shape[1],
                self.shape[2],
                self.shape[3],
            ],
            data,
            source_bits: self.source_bits,
        })
    }

    /// Single-channel 8-bit images, `[n, h, w]` row-major, mapped like 8-bit PNGs.
    pub fn from_u8_images(n: u32, h: u32, w: u32, pixels: &[u8]) -> Self {
        Self {
            shape: [n, 1, h, w],
            data: pixels.iter().map(|&v| v as f32 / 255.0).collect(),
            source_bits: 8,
        }
    }
}

/// Calibration and evaluation archives are read whole, up to this size.
pub const ARCHIVE_MAX_BYTES: u64 = 1 << 30;

/// Reads array `name` of an `.npz` archive (compressed or not) as a flat
/// vector with its shape.
pub fn read_npz_array<T: ndarray_npy::ReadableElement + Copy>(
    bytes: &[u8],
    name: &str,
) -> Result<(Vec<usize>, Vec<T>), InputError> {
    let mut npz = ndarray_npy::NpzReader::new(Cursor::new(bytes))
        .map_err(|e| InputError::Npy(format!("not an .npz archive: {e}")))?;
    let array: ArrayD<T> = npz
        .by_name(name)
        .map_err(|e| InputError::Npy(format!("array {name:?}: {e}")))?;
    Ok((array.shape().to_vec(), array.iter().copied().collect()))
}

/// The names of the arrays in an `.npz` archive, for arrays that are optional.
pub fn npz_array_names(bytes: &[u8]) -> Result<Vec<String>, InputError> {
    let mut npz = ndarray_npy::NpzReader::new(Cursor::new(bytes))
        .map_err(|e| InputError::Npy(format!("not an .npz archive: {e}")))?;
    npz.names()
        .map_err(|e| InputError::Npy(format!("listing the archive: {e}")))
}

/// Reads the uint8 array `name` of shape `[N, H, W]` from an `.npz` file
/// (compressed or not), as calibration and evaluation data come.
pub fn read_npz_images(bytes: &[u8], name: &str) -> Result<Batch, InputError> {
    let (shape, pixels) = read_npz_array::<u8>(bytes, name)
        .map_err(|e| InputError::Npy(format!("{e} (it must exist and be uint8 [N, H, W])")))?;
    let &[n, h, w] = shape.as_slice() else {
        return Err(InputError::Npy(format!(
            "array {name:?} has shape {shape:?}; expected [N, H, W]"
        )));
    };
    let dim = |d: usize| {
        u32::try_from(d).map_err(|_| InputError::Npy(format!("dimension {d} is too large")))
    };
    Ok(Batch::from_u8_images(dim(n)?, dim(h)?, dim(w)?, &pixels))
}

/// Why an input file could not become a batch.
#[derive(Debug, Error)]
pub enum InputError {
    /// Over [`INPUT_MAX_BYTES`].
    #[error("input is larger than the {INPUT_MAX_BYTES}-byte limit")]
    TooLarge,
    /// Neither a PNG nor a `.npy` file.
    #[error("not a PNG or .npy file (first bytes {0:02x?})")]
    UnknownFormat(Vec<u8>),
    /// The PNG decoder refused the file.
    #[error("PNG could not be decoded: {0}")]
    Png(#[from] png::DecodingError),
    /// The `.npy` reader refused the file.
    #[error(".npy could not be read: {0}")]
    Npy(String),
    /// A PNG layout the pixel mapping cannot handle.
    #[error("{0}")]
    Unsupported(String),
    /// The declared dimensions are not what the model takes.
    #[error("{0}")]
    Shape(String),
}

/// PNG and `.npy` magic numbers.
const PNG_MAGIC: &[u8] = b"\x89PNG\r\n\x1a\n";
const NPY_MAGIC: &[u8] = b"\x93NUMPY";

/// Whether `bytes` start like a PNG or a `.npy` file. Callers that also take
/// DICOM ask this first: a `.npy` whose pixels spell "DICM" at offset 128
/// is still a `.npy`.
pub fn has_image_magic(bytes: &[u8]) -> bool {
    bytes.starts_with(PNG_MAGIC) || bytes.starts_with(NPY_MAGIC)
}

/// Decodes `bytes` (format sniffed from the content, not the name) into a
/// batch of 1 to `max_batch` images for `spec`.
pub fn decode(bytes: &[u8], spec: &InputSpec, max_batch: u32) -> Result<Batch, InputError> {
    if bytes.len() as u64 > INPUT_MAX_BYTES {
        return Err(InputError::TooLarge);
    }
    check_mapping(spec)?;
    if bytes.starts_with(PNG_MAGIC) {
        decode_png(bytes, spec)
    } else if bytes.starts_with(NPY_MAGIC) {
        decode_npy(bytes, spec, max_batch)
    } else {
        Err(InputError::UnknownFormat(
            bytes.iter().take(8).copied().collect(),
        ))
    }
}

/// The sample type of raw pixels handed over in memory (an embedding
/// viewer's frame buffer, a numpy array), in the host's byte order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SampleType {
    /// 8-bit gray levels, mapped like an 8-bit gray PNG.
    U8,
    /// 16-bit gray levels, mapped like a 16-bit gray PNG.
    U16,
    /// Tensor values, already mapped (the guest checks their range).
    F32,
}

impl SampleType {
    fn size(self) -> usize {
        match self {
            Self::U8 => 1,
            Self::U16 => 2,
            Self::F32 => 4,
        }
    }
}

/// `count` single-channel images of `height` x `width` samples of type
/// `kind` (row-major),
/// as `bytes` in the host's byte order. Every dimension is checked against
/// `spec` and `max_batch`, and the length against them, before anything is
/// allocated; gray levels map to exactly the values the same pixels give
/// in a PNG.
pub fn from_samples(
    bytes: &[u8],
    kind: SampleType,
    count: u32,
    height: u32,
    width: u32,
    spec: &InputSpec,
    max_batch: u32,
) -> Result<Batch, InputError> {
    check_mapping(spec)?;
    check_size("the image", height.into(), width.into(), spec)?;
    if count == 0 || count > max_batch {
        return Err(InputError::Shape(format!(
            "{count} images given; this model takes 1 to {max_batch} per call"
        )));
    }
    let channels = 1;
    let expected = [count, channels, height, width]
        .iter()
        .try_fold(kind.size() as u64, |n, &d| n.checked_mul(d.into()))
        .filter(|&n| n <= INPUT_MAX_BYTES)
        .ok_or(InputError::TooLarge)?;
    if bytes.len() as u64 != expected {
        return Err(InputError::Shape(format!(
            "{} bytes given; {count} image(s) of {width}x{height} {kind:?} samples are {expected}",
            bytes.len()
        )));
    }
    // The same arithmetic as `decode_png` (f64, then rounded once to f32):
    // a frame buffer and a PNG of the same pixels give the same tensor.
    let (data, source_bits): (Vec<f32>, u8) = match kind {
        SampleType::U8 => (
            bytes.iter().map(|&v| (v as f64 / 255.0) as f32).collect(),
            8,
        ),
        SampleType::U16 => (
            bytes
                .chunks_exact(2)
                .map(|b| (u16::from_ne_bytes([b[0], b[1]]) as f64 / 65535.0) as f32)
                .collect(),
            16,
        ),
        SampleType::F32 => (
            bytes
                .chunks_exact(4)
                .map(|b| f32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
                .collect(),
            0,
        ),
    };
    Ok(Batch {
        shape: [count, channels, height, width],
        data,
        source_bits,
    })
}

/// The manifest's pixel mapping is one these decoders implement: one luma
/// channel in the unit interval. Irrefutable today; a new mapping in the
/// manifest schema stops compiling here until every path implements it.
fn check_mapping(spec: &InputSpec) -> Result<(), InputError> {
    let ColorConversion::LumaBt601 = spec.pixels.color;
    let PixelScale::UnitInterval = spec.pixels.scale;
    if spec.shape.channels != 1 {
        return Err(InputError::Unsupported(format!(
            "luma conversion yields one channel, the model wants {}",
            spec.shape.channels
        )));
    }
    Ok(())
}

/// Refuses an image whose height and width are not the model's.
fn check_size(kind: &str, height: u64, width: u64, spec: &InputSpec) -> Result<(), InputError> {
    let (h, w) = (spec.shape.height, spec.shape.width);
    if (height, width) != (h as u64, w as u64) {
        return Err(InputError::Shape(format!(
            "{kind} is {width}x{height} pixels; the model takes {w}x{h}"
        )));
    }
    Ok(())
}

fn decode_png(bytes: &[u8], spec: &InputSpec) -> Result<Batch, InputError> {
    let mut decoder = png::Decoder::new_with_limits(
        Cursor::new(bytes),
        png::Limits {
            bytes: INPUT_MAX_BYTES as usize,
        },
    );
    // Expand palettes and sub-byte gray to 8 bits; keep 16-bit samples as they are.
    decoder.set_transformations(png::Transformations::EXPAND);
    let mut reader = decoder.read_info()?;
    let info = reader.info();
    check_size("PNG", info.height.into(), info.width.into(), spec)?;
    let mut buf = vec![0; reader.output_buffer_size().ok_or(InputError::TooLarge)?];
    let frame = reader.next_frame(&mut buf)?;
    let pixels = &buf[..frame.buffer_size()];
    let samples: Vec<u32> = match frame.bit_depth {
        png::BitDepth::Eight => pixels.iter().map(|&b| b as u32).collect(),
        png::BitDepth::Sixteen => pixels
            .chunks_exact(2)
            .map(|p| u16::from_be_bytes([p[0], p[1]]) as u32)
            .collect(),
        other => {
            return Err(InputError::Unsupported(format!(
                "PNG bit depth {other:?} after expansion"
            )));
        }
    };
    let max = if frame.bit_depth == png::BitDepth::Sixteen {
        65535.0
    } else {
        255.0
    };
    let (channels, has_alpha) = match frame.color_type {
        png::ColorType::Grayscale => (1, false),
        png::ColorType::GrayscaleAlpha => (2, true),
        png::ColorType::Rgb => (3, false),
        png::ColorType::Rgba => (4, true),
        png::ColorType::Indexed => {
            return Err(InputError::Unsupported(
                "indexed PNG was not expanded".into(),
            ));
        }
    };
    let source_bits = match (channels, frame.bit_depth) {
        // Colour becomes luma, which lands between the levels.
        (3 | 4, _) => 0,
        (_, png::BitDepth::Sixteen) => 16,
        _ => 8,
    };
    let data = samples
        .chunks_exact(channels)
        .map(|px| {
            if has_alpha && px[channels - 1] as f64 != max {
                return Err(InputError::Unsupported(
                    "PNG has transparent pixels; a radiograph must be fully opaque".into(),
                ));
            }
            let luma = match channels {
                1 | 2 => px[0] as f64,
                _ => 0.299 * px[0] as f64 + 0.587 * px[1] as f64 + 0.114 * px[2] as f64,
            };
            Ok((luma / max) as f32)
        })
        .collect::<Result<Vec<f32>, _>>()?;
    Ok(Batch {
        shape: [1, 1, frame.height, frame.width],
        data,
        source_bits,
    })
}

/// Longest `.npy` header accepted; numpy writes well under 1 KiB.
const NPY_HEADER_MAX_BYTES: usize = 64 * 1024;

fn decode_npy(bytes: &[u8], spec: &InputSpec, max_batch: u32) -> Result<Batch, InputError> {
    // The header's own length field is read before the header: the reader
    // allocates whatever it says (up to 4 GiB from a 12-byte file).
    let declared = match (bytes.get(6), bytes.get(8..12)) {
        (Some(1), Some(b)) => u16::from_le_bytes([b[0], b[1]]) as usize,
        (Some(2 | 3), Some(b)) => u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize,
        _ => {
            return Err(InputError::Npy(
                "not a .npy file of version 1, 2 or 3".into(),
            ));
        }
    };
    if declared > NPY_HEADER_MAX_BYTES || declared > bytes.len() {
        return Err(InputError::Npy(format!(
            "header of {declared} bytes declared; at most {NPY_HEADER_MAX_BYTES}, within the file"
        )));
    }
    let header = NpyHeader::from_reader(&mut Cursor::new(bytes))
        .map_err(|e| InputError::Npy(format!("header: {e}")))?;
    let (n, c, h, w) = match *header.shape.as_slice() {
        [h, w] => (1, 1, h, w),
        [n, h, w] => (n, 1, h, w),
        [n, c, h, w] => (n, c, h, w),
        ref other => {
            return Err(InputError::Npy(format!(
                "array has shape {other:?}; expected [H, W], [N, H, W] or [N, C, H, W]"
            )));
        }
    };
    check_size(".npy image", h as u64, w as u64, spec)?;
    if c as u64 != spec.shape.channels as u64 {
        return Err(InputError::Shape(format!(
            ".npy images have {c} channels; the model takes {}",
            spec.shape.channels
        )));
    }
    if n == 0 || n as u64 > max_batch as u64 {
        return Err(InputError::Shape(format!(
            ".npy holds {n} images; this model takes 1 to {max_batch} per file"
        )));
    }
    let (dims, data, source_bits) = read_npy_as_unit_floats(bytes)?;
    let dims32: Vec<u32> = dims
        .iter()
        .map(|&d| {
            u32::try_from(d).map_err(|_| InputError::Npy(format!("dimension {d} is too large")))
        })
        .collect::<Result<_, _>>()?;
    let shape = match dims32.as_slice() {
        [h, w] => [1, 1, *h, *w],
        [n, h, w] => [*n, 1, *h, *w],
        [n, c, h, w] => [*n, *c, *h, *w],
        _ => {
            return Err(InputError::Npy(format!(
                "array has shape {dims:?}; expected [H, W], [N, H, W] or [N, C, H, W]"
            )));
        }
    };
    Ok(Batch {
        shape,
        data,
        source_bits,
    })
}

/// Integer arrays are scaled like PNG pixels; float arrays are taken as
/// already-mapped tensor values (the guest checks their range).
fn read_npy_as_unit_floats(bytes: &[u8]) -> Result<(Vec<usize>, Vec<f32>, u8), InputError> {
    fn read<T: ndarray_npy::ReadableElement>(
        bytes: &[u8],
    ) -> Result<Option<ArrayD<T>>, InputError> {
        match ArrayD::<T>::read_npy(Cursor::new(bytes)) {
            Ok(a) => Ok(Some(a)),
            Err(ReadNpyError::WrongDescriptor(_)) => Ok(None),
            Err(e) => Err(InputError::Npy(e.to_string())),
        }
    }
    fn take<T: Copy>(a: ArrayD<T>, bits: u8, f: impl Fn(T) -> f32) -> (Vec<usize>, Vec<f32>, u8) {
        (a.shape().to_vec(), a.iter().map(|&v| f(v)).collect(), bits)
    }
    if let Some(a) = read::<u8>(bytes)? {
        return Ok(take(a, 8, |v| v as f32 / 255.0));
    }
    if let Some(a) = read::<u16>(bytes)? {
        return Ok(take(a, 16, |v| v as f32 / 65535.0));
    }
    if let Some(a) = read::<f32>(bytes)? {
        return Ok(take(a, 0, |v| v));
    }
    if let Some(a) = read::<f64>(bytes)? {
        return Ok(take(a, 0, |v| v as f32));
    }
    Err(InputError::Npy(
        "dtype must be uint8, uint16, float32 or float64".into(),
    ))
}

#[cfg(test)]
mod tests {
    use medguard_attest::{InputShape, PixelMapping, ValueRange};

    use super::*;

    fn spec() -> InputSpec {
        InputSpec {
            tensor: "image".into(),
            dtype: "float32".into(),
            shape: InputShape {
                channels: 1,
                height: 2,
                width: 2,
            },
            range: ValueRange { min: 0.0, max: 1.0 },
            pixels: PixelMapping {
                color: ColorConversion::LumaBt601,
                scale: PixelScale::UnitInterval,
            },
        }
    }

    #[test]
    fn image_magic_is_the_files_first_bytes() {
        let rgb = png(png::ColorType::Rgb, png::BitDepth::Eight, &[0; 12]);
        assert!(has_image_magic(&rgb));
        assert!(has_image_magic(b"\x93NUMPY\x01\x00"));
        // Shorter than either magic, empty, or a DICOM preamble.
        assert!(!has_image_magic(&rgb[..7]));
        assert!(!has_image_magic(b"\x93NUMP"));
        assert!(!has_image_magic(b""));
        let mut dicom = vec![0u8; 128];
        dicom.extend_from_slice(b"DICM");
        assert!(!has_image_magic(&dicom));
        // A PNG stays a PNG whatever its bytes at offset 128 spell.
        let mut png_with_dicm = rgb.clone();
        png_with_dicm.resize(128, 0);
        png_with_dicm.extend_from_slice(b"DICM");
        assert!(has_image_magic(&png_with_dicm));
    }

    fn png(color: png::ColorType, depth: png::BitDepth, samples: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut enc = png::Encoder::new(&mut out, 2, 2);
        enc.set_color(color);
        enc.set_depth(depth);
        let mut w = enc.write_header().unwrap();
        w.write_image_data(samples).unwrap();
        w.finish().unwrap();
        out
    }

    #[test]
    fn eight_bit_gray_maps_to_the_unit_interval() {
        let b = decode(
            &png(
                png::ColorType::Grayscale,
                png::BitDepth::Eight,
                &[0, 51, 204, 255],
            ),
            &spec(),
            4,
        )
        .unwrap();
        assert_eq!(b.shape, [1, 1, 2, 2]);
        assert_eq!(b.data, vec![0.0, 0.2, 0.8, 1.0]);
    }

    #[test]
    fn sixteen_bit_gray_keeps_its_precision() {
        let samples: Vec<u8> = [0u16, 1, 32768, 65535]
            .iter()
            .flat_map(|v| v.to_be_bytes())
            .collect();
        let b = decode(
            &png(png::ColorType::Grayscale, png::BitDepth::Sixteen, &samples),
            &spec(),
            4,
        )
        .unwrap();
        assert_eq!(b.data, vec![0.0, 1.0 / 65535.0, 32768.0 / 65535.0, 1.0]);
        assert_eq!(b.source_bits, 16);
    }

    #[test]
    fn rgb_becomes_bt601_luma() {
        let rgb = [255, 0, 0, 0, 255, 0, 0, 0, 255, 255, 255, 255];
        let b = decode(
            &png(png::ColorType::Rgb, png::BitDepth::Eight, &rgb),
            &spec(),
            4,
        )
        .unwrap();
        assert_eq!(b.source_bits, 0, "luma falls between the levels");
        let want = [0.299f32, 0.587, 0.114, 1.0];
        for (got, want) in b.data.iter().zip(want) {
            assert!((got - want).abs() < 1e-6, "{got} vs {want}");
        }
    }

    #[test]
    fn opaque_alpha_is_ignored_and_transparency_refused() {
        let opaque = [10, 255, 20, 255, 30, 255, 40, 255];
        let b = decode(
            &png(
                png::ColorType::GrayscaleAlpha,
                png::BitDepth::Eight,
                &opaque,
            ),
            &spec(),
            4,
        )
        .unwrap();
        assert_eq!(b.data, [10.0f32, 20.0, 30.0, 40.0].map(|v| v / 255.0));
        let mut rgba = [0u8; 16];
        rgba[3] = 128;
        let err = decode(
            &png(png::ColorType::Rgba, png::BitDepth::Eight, &rgba),
            &spec(),
            4,
        )
        .unwrap_err();
        assert!(err.to_string().contains("transparent"), "{err}");
    }

    #[test]
    fn batches_split_in_order() {
        let b = Batch {
            shape: [5, 1, 1, 2],
            data: (0..10).map(|v| v as f32).collect(),
            source_bits: 8,
        };
        let chunks: Vec<Batch> = b.chunks(2).collect();
        assert_eq!(
            chunks.iter().map(|c| c.shape[0]).collect::<Vec<_>>(),
            [2, 2, 1]
        );
        assert_eq!(chunks[2].data, vec![8.0, 9.0]);
    }

    #[test]
    fn select_picks_images_in_order_and_refuses_out_of_range() {
        let b = Batch::from_u8_images(3, 1, 2, &[0, 1, 2, 3, 4, 5]);
        let picked = b.select(&[2, 0]).unwrap();
        assert_eq!(picked.shape, [2, 1, 1, 2]);
        assert_eq!(picked.data, [4.0f32, 5.0, 0.0, 1.0].map(|v| v / 255.0));
        assert_eq!(picked.source_bits, 8);
        assert!(b.select(&[3]).is_none());
    }

    #[test]
    fn frame_buffers_give_the_tensor_their_png_gives() {
        let levels: [u16; 4] = [0, 1, 40_000, 65_535];
        let be: Vec<u8> = levels.iter().flat_map(|v| v.to_be_bytes()).collect();
        let ne: Vec<u8> = levels.iter().flat_map(|v| v.to_ne_bytes()).collect();
        let from_png = decode(
            &png(png::ColorType::Grayscale, png::BitDepth::Sixteen, &be),
            &spec(),
            1,
        )
        .unwrap();
        let from_buffer = from_samples(&ne, SampleType::U16, 1, 2, 2, &spec(), 1).unwrap();
        assert_eq!(from_buffer, from_png);

        let gray = [0u8, 7, 128, 255];
        let from_png = decode(
            &png(png::ColorType::Grayscale, png::BitDepth::Eight, &gray),
            &spec(),
            1,
        )
        .unwrap();
        assert_eq!(
            from_samples(&gray, SampleType::U8, 1, 2, 2, &spec(), 1).unwrap(),
            from_png
        );

        let values = [0.0f32, 0.25, 0.5, 1.0];
        let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_ne_bytes()).collect();
        let tensor = from_samples(&bytes, SampleType::F32, 1, 2, 2, &spec(), 1).unwrap();
        assert_eq!(
            (tensor.data.as_slice(), tensor.source_bits),
            (&values[..], 0)
        );
    }

    #[test]
    fn frame_buffers_are_checked_before_they_are_copied() {
        let refuse = |bytes: &[u8], kind, count, h, w| {
            from_samples(bytes, kind, count, h, w, &spec(), 4)
                .unwrap_err()
                .to_string()
        };
        // The model takes 2x2.
        assert!(refuse(&[0; 9], SampleType::U8, 1, 3, 3).contains("model takes 2x2"));
        assert!(refuse(&[], SampleType::U8, 0, 2, 2).contains("1 to 4"));
        assert!(refuse(&[0; 20], SampleType::U8, 5, 2, 2).contains("1 to 4"));
        // A length that does not match the dimensions, either way.
        assert!(refuse(&[0; 7], SampleType::U16, 1, 2, 2).contains("7 bytes given"));
        assert!(refuse(&[0; 9], SampleType::U16, 1, 2, 2).contains("are 8"));
        // Gray levels into a three-channel model.
        let mut rgb = spec();
        rgb.shape.channels = 3;
        let err = from_samples(&[0; 4], SampleType::U8, 1, 2, 2, &rgb, 1).unwrap_err();
        assert!(err.to_string().contains("wants 3"), "{err}");
        // Dimensions whose product overflows are too large, not a panic.
        let mut huge = spec();
        (huge.shape.height, huge.shape.width) = (u32::MAX, u32::MAX);
        let err = from_samples(&[], SampleType::F32, 1, u32::MAX, u32::MAX, &huge, 1).unwrap_err();
        assert!(matches!(err, InputError::TooLarge), "{err}");
    }
}
