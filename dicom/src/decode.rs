//! Untrusted DICOM bytes to the model's pixels. Runs inside the sandbox guest.

use dicom_dictionary_std::tags;
use dicom_object::file::ReadPreamble;
use dicom_object::{DefaultDicomObject, OpenFileOptions};
use dicom_pixeldata::{
    ConvertOptions, DecodedPixelData, ModalityLutOption, PixelDecoder, PixelRepresentation,
    VoiLutOption, WindowLevelTransform,
};

use crate::profile::{Crop, Intensity, Resize};
use crate::{
    Acceptance, DicomError, MAX_PIXELS, Preprocessing, Radiograph, SUPPORTED_TRANSFER_SYNTAXES,
    SourceIdentity, SourceImage, is_part10, transfer_syntax_name,
};

/// Decodes a DICOM Part 10 file, refuses it unless `accepts` allows it, and
/// preprocesses its image as `preprocessing` says into `height x width`
/// values in `[0, 1]` (a manifest's [`crate::DicomProfile`] holds both).
///
/// Checks run before pixels are decoded: the transfer syntax, then the
/// acceptance lists, then the image layout (one frame, one sample per pixel,
/// at most [`MAX_PIXELS`]).
pub fn decode(
    bytes: &[u8],
    accepts: &Acceptance,
    preprocessing: &Preprocessing,
    height: u32,
    width: u32,
) -> Result<Radiograph, DicomError> {
    if !is_part10(bytes) {
        return Err(DicomError::NotDicom(
            "no 128-byte preamble followed by \"DICM\"".into(),
        ));
    }
    if height == 0 || width == 0 {
        return Err(DicomError::Unsupported(format!(
            "the model's input size {width}x{height} is empty"
        )));
    }
    // The header first, up to the pixel data: what the model does not take
    // is refused before a byte of pixel data is parsed.
    let header = read(bytes, Some(tags::PIXEL_DATA))?;
    let checked = inspect(&header, accepts)?;
    drop(header);
    // Then the whole file, checked again: dicom-rs keeps the last of two
    // elements with one tag and does not insist on tag order, so an element
    // after the pixel data could change what the header said. What was
    // checked must be what is decoded and reported.
    let object = read(bytes, None)?;
    let Inspected {
        mut source,
        rows,
        columns,
    } = inspect(&object, accepts)?;
    if source != checked.source || (rows, columns) != (checked.rows, checked.columns) {
        return Err(DicomError::Malformed(
            "attributes after the pixel data contradict the header".into(),
        ));
    }
    let identity = identity(&object);
    let decoded = object
        .decode_pixel_data()
        .map_err(|e| DicomError::Malformed(format!("pixel data: {e}")))?;
    if (decoded.rows(), decoded.columns()) != (rows, columns)
        || decoded.samples_per_pixel() != 1
        || decoded.number_of_frames() != 1
    {
        return Err(DicomError::Malformed(
            "decoded pixel data does not match Rows, Columns, Samples per Pixel and Number of Frames".into(),
        ));
    }
    source.rows = rows;
    source.columns = columns;
    source.bits_stored = decoded.bits_stored();
    let (unit, intensity) = match preprocessing.intensity {
        Intensity::VoiElseStoredRange => voi_else_stored_range(&decoded)?,
    };
    source.intensity = intensity.to_string();
    let (kept, kept_rows, kept_columns) = match preprocessing.crop {
        Crop::None => (unit, rows, columns),
        Crop::CenterSquare => center_square(&unit, rows, columns),
    };
    let pixels = match preprocessing.resize {
        Resize::Area => resize_area(&kept, kept_rows, kept_columns, height, width),
    };
    Ok(Radiograph {
        pixels,
        height,
        width,
        source,
        identity,
    })
}

/// Parses the file (after its preamble), up to `until` if given.
fn read(bytes: &[u8], until: Option<dicom_core::Tag>) -> Result<DefaultDicomObject, DicomError> {
    let options = OpenFileOptions::new().read_preamble(ReadPreamble::Never);
    let options = match until {
        Some(tag) => options.read_until(tag),
        None => options,
    };
    options
        .from_reader(&bytes[128..])
        .map_err(|e| DicomError::Malformed(e.to_string()))
}

/// What [`inspect`] found acceptable.
struct Inspected {
    source: SourceImage,
    rows: u32,
    columns: u32,
}

/// The checks that run before any pixel is decoded: transfer syntax,
/// acceptance, layout and size.
fn inspect(object: &DefaultDicomObject, accepts: &Acceptance) -> Result<Inspected, DicomError> {
    let transfer_syntax = object
        .meta()
        .transfer_syntax()
        .trim_end_matches('\0')
        .trim()
        .to_string();
    if !SUPPORTED_TRANSFER_SYNTAXES
        .iter()
        .any(|(uid, _)| *uid == transfer_syntax)
    {
        return Err(DicomError::UnsupportedTransferSyntax {
            name: transfer_syntax_name(&transfer_syntax).to_string(),
            uid: shown(&transfer_syntax),
        });
    }
    let source = SourceImage {
        transfer_syntax,
        modality: text(object, tags::MODALITY),
        photometric_interpretation: text(object, tags::PHOTOMETRIC_INTERPRETATION),
        body_part_examined: text(object, tags::BODY_PART_EXAMINED),
        view_position: text(object, tags::VIEW_POSITION),
        ..SourceImage::default()
    };
    for (name, value, allowed) in [
        ("Modality", &source.modality, &accepts.modality),
        (
            "Photometric Interpretation",
            &source.photometric_interpretation,
            &accepts.photometric_interpretation,
        ),
        (
            "Body Part Examined",
            &source.body_part_examined,
            &accepts.body_part_examined,
        ),
        (
            "View Position",
            &source.view_position,
            &accepts.view_position,
        ),
    ] {
        accept(name, value, allowed)?;
    }
    let rows = number(object, tags::ROWS)?;
    let columns = number(object, tags::COLUMNS)?;
    let samples = match object.get(tags::SAMPLES_PER_PIXEL) {
        None => 1,
        Some(_) => number(object, tags::SAMPLES_PER_PIXEL)?,
    };
    let frames = match object.get(tags::NUMBER_OF_FRAMES) {
        None => 1,
        Some(_) => number(object, tags::NUMBER_OF_FRAMES)?,
    };
    if samples != 1 {
        return Err(DicomError::Unsupported(format!(
            "{samples} samples per pixel; a radiograph has one"
        )));
    }
    if frames != 1 {
        return Err(DicomError::Unsupported(format!(
            "{frames} frames; medguard classifies single-frame radiographs"
        )));
    }
    if rows == 0 || columns == 0 || u64::from(rows) * u64::from(columns) > MAX_PIXELS {
        return Err(DicomError::Unsupported(format!(
            "image is {columns}x{rows} pixels; medguard decodes up to {MAX_PIXELS} pixels"
        )));
    }
    if object.get(tags::MODALITY_LUT_SEQUENCE).is_some() {
        return Err(DicomError::Unsupported(
            "a Modality LUT Sequence is not supported (rescale slope and intercept are)".into(),
        ));
    }
    Ok(Inspected {
        source,
        rows,
        columns,
    })
}

/// A value from the file as it may appear in a message: at most 64
/// characters, control characters escaped (messages reach terminals and
/// logs).
fn shown(value: &str) -> String {
    let mut out: String = value
        .chars()
        .take(64)
        .flat_map(char::escape_debug)
        .collect();
    if value.chars().count() > 64 {
        out.push_str("...");
    }
    out
}

/// Refuses `value` unless it is in `allowed`.
fn accept(name: &str, value: &str, allowed: &[String]) -> Result<(), DicomError> {
    if allowed.iter().any(|a| a == value) {
        return Ok(());
    }
    let found = if value.is_empty() {
        "missing".to_string()
    } else {
        format!("\"{}\"", shown(value))
    };
    Err(DicomError::NotAccepted(format!(
        "{name} is {found}; the model accepts {}",
        allowed.join(", ")
    )))
}

/// The stored values through the modality LUT, the VOI step and the
/// photometric interpretation, in `[0, 1]`. Also names the VOI step taken.
fn voi_else_stored_range(
    decoded: &DecodedPixelData<'_>,
) -> Result<(Vec<f64>, &'static str), DicomError> {
    let pixel = |e: dicom_pixeldata::Error| DicomError::Malformed(format!("pixel data: {e}"));
    let mut values: Vec<f64> = decoded
        .to_vec_frame_with_options(
            0,
            &ConvertOptions::new()
                .with_modality_lut(ModalityLutOption::Default)
                .with_voi_lut(VoiLutOption::Identity),
        )
        .map_err(pixel)?;
    let rescale =
        *decoded.rescale().map_err(pixel)?.first().ok_or_else(|| {
            DicomError::Malformed("no rescale parameters for the first frame".into())
        })?;
    if !(rescale.slope.is_finite() && rescale.intercept.is_finite() && rescale.slope != 0.0) {
        return Err(DicomError::Malformed(format!(
            "rescale slope {} and intercept {} do not define a modality LUT",
            rescale.slope, rescale.intercept
        )));
    }
    let window = decoded.window().map_err(pixel)?.and_then(|w| w.first());
    let voi_lut = decoded
        .voi_lut_sequence()
        .map_err(pixel)?
        .and_then(|l| l.first());
    // Each step maps the rescaled values in place: one f64 plane in memory.
    let step = if let Some(window) = window {
        if !(window.center.is_finite() && window.width.is_finite() && window.width > 0.0) {
            return Err(DicomError::Malformed(format!(
                "window center {} and width {} do not define a window",
                window.center, window.width
            )));
        }
        let function = decoded
            .voi_lut_function()
            .map_err(pixel)?
            .and_then(|f| f.first().copied())
            .unwrap_or(dicom_pixeldata::VoiLutFunction::Linear);
        if function == dicom_pixeldata::VoiLutFunction::Sigmoid && window.width < 1.0 {
            // dicom-pixeldata asserts a sigmoid window is at least 1 wide.
            return Err(DicomError::Malformed(format!(
                "a SIGMOID window of width {} (at least 1 is needed)",
                window.width
            )));
        }
        let transform = WindowLevelTransform::new(function, *window);
        for v in &mut values {
            *v = transform.apply(*v, 1.0);
        }
        "window"
    } else if let Some(lut) = voi_lut {
        let (Some(&first), Some(&last)) = (lut.data.first(), lut.data.last()) else {
            return Err(DicomError::Malformed("VOI LUT has no entries".into()));
        };
        if lut.bits_stored == 0 || lut.bits_stored > 16 {
            return Err(DicomError::Malformed(format!(
                "VOI LUT entries of {} bits",
                lut.bits_stored
            )));
        }
        let top = f64::from((1u32 << lut.bits_stored) - 1);
        let lookup = |v: f64| {
            let index = v.round() - f64::from(lut.min_pixel_value);
            let entry = if index < 0.0 || index.is_nan() {
                first
            } else if index >= lut.data.len() as f64 {
                last
            } else {
                lut.data[index as usize]
            };
            (f64::from(entry) / top).min(1.0)
        };
        for v in &mut values {
            *v = lookup(*v);
        }
        "voi-lut"
    } else {
        let bits = u32::from(decoded.bits_stored());
        if bits == 0 || bits > 32 {
            return Err(DicomError::Malformed(format!("Bits Stored is {bits}")));
        }
        let (lo, hi) = match decoded.pixel_representation() {
            PixelRepresentation::Unsigned => (0.0, 2f64.powi(bits as i32) - 1.0),
            PixelRepresentation::Signed => (
                -(2f64.powi(bits as i32 - 1)),
                2f64.powi(bits as i32 - 1) - 1.0,
            ),
        };
        let (a, b) = (rescale.apply(lo), rescale.apply(hi));
        let (lo, hi) = if a <= b { (a, b) } else { (b, a) };
        for v in &mut values {
            *v = ((*v - lo) / (hi - lo)).clamp(0.0, 1.0);
        }
        "stored-range"
    };
    if decoded.photometric_interpretation().as_str() == "MONOCHROME1" {
        for v in &mut values {
            *v = 1.0 - *v;
        }
    }
    Ok((values, step))
}

/// The centred square with the short side's length.
fn center_square(values: &[f64], rows: u32, columns: u32) -> (Vec<f64>, u32, u32) {
    let side = rows.min(columns);
    let (top, left) = ((rows - side) / 2, (columns - side) / 2);
    let mut out = Vec::with_capacity(side as usize * side as usize);
    for r in top..top + side {
        let start = r as usize * columns as usize + left as usize;
        out.extend_from_slice(&values[start..start + side as usize]);
    }
    (out, side, side)
}

/// For each output index along an axis of `from` samples resized to `to`:
/// the source indices it covers and their weights (overlap / output extent),
/// which sum to one.
fn area_weights(from: u32, to: u32) -> Vec<Vec<(usize, f64)>> {
    let scale = f64::from(from) / f64::from(to);
    (0..to)
        .map(|i| {
            let (start, end) = (f64::from(i) * scale, f64::from(i + 1) * scale);
            let first = start.floor() as u32;
            let last = (end.ceil() as u32).min(from);
            (first..last)
                .filter_map(|s| {
                    let overlap = end.min(f64::from(s + 1)) - start.max(f64::from(s));
                    (overlap > 0.0).then_some((s as usize, overlap / scale))
                })
                .collect()
        })
        .collect()
}

/// Box-filter resize, rows then columns, in f64; values stay in `[0, 1]`.
fn resize_area(values: &[f64], rows: u32, columns: u32, height: u32, width: u32) -> Vec<f32> {
    let across = area_weights(columns, width);
    let down = area_weights(rows, height);
    // Each source row resized to `width` first.
    let mut narrowed = Vec::with_capacity(rows as usize * width as usize);
    for row in values.chunks_exact(columns as usize) {
        narrowed.extend(
            across
                .iter()
                .map(|w| w.iter().map(|&(s, k)| row[s] * k).sum::<f64>()),
        );
    }
    let width = width as usize;
    let mut out = Vec::with_capacity(height as usize * width);
    for w in &down {
        for x in 0..width {
            let v: f64 = w.iter().map(|&(s, k)| narrowed[s * width + x] * k).sum();
            out.push(v.clamp(0.0, 1.0) as f32);
        }
    }
    out
}

/// An attribute as trimmed text; empty when absent or not text.
fn text(object: &DefaultDicomObject, tag: dicom_core::Tag) -> String {
    object
        .get(tag)
        .and_then(|e| e.to_str().ok())
        .map(|s| {
            let s = s.trim_matches(|c: char| c == '\0' || c.is_whitespace());
            if s.len() <= crate::TEXT_MAX_BYTES {
                return s.to_string();
            }
            // Cut, not refused: an over-long value must cost the report, not
            // the classification. The cut ends in a control character, so
            // the SR writer refuses it rather than file a shortened name as
            // the patient's. The host refuses longer answers outright.
            let mut end = crate::TEXT_MAX_BYTES - 1;
            while !s.is_char_boundary(end) {
                end -= 1;
            }
            format!("{}\u{1}", &s[..end])
        })
        .unwrap_or_default()
}

/// A required unsigned attribute (Rows, Columns, ...).
fn number(object: &DefaultDicomObject, tag: dicom_core::Tag) -> Result<u32, DicomError> {
    let element = object
        .get(tag)
        .ok_or_else(|| DicomError::Malformed(format!("{tag} is missing")))?;
    element
        .to_int::<u32>()
        .map_err(|e| DicomError::Malformed(format!("{tag}: {e}")))
}

fn identity(object: &DefaultDicomObject) -> SourceIdentity {
    SourceIdentity {
        sop_class_uid: text(object, tags::SOP_CLASS_UID),
        sop_instance_uid: text(object, tags::SOP_INSTANCE_UID),
        study_instance_uid: text(object, tags::STUDY_INSTANCE_UID),
        series_instance_uid: text(object, tags::SERIES_INSTANCE_UID),
        patient_name: text(object, tags::PATIENT_NAME),
        patient_id: text(object, tags::PATIENT_ID),
        patient_birth_date: text(object, tags::PATIENT_BIRTH_DATE),
        patient_sex: text(object, tags::PATIENT_SEX),
        study_date: text(object, tags::STUDY_DATE),
        study_time: text(object, tags::STUDY_TIME),
        study_id: text(object, tags::STUDY_ID),
        accession_number: text(object, tags::ACCESSION_NUMBER),
        referring_physician_name: text(object, tags::REFERRING_PHYSICIAN_NAME),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn area_weights_sum_to_one_and_identity_is_exact() {
        for (from, to) in [(28, 28), (2048, 28), (100, 28), (27, 28), (3, 2)] {
            for w in area_weights(from, to) {
                let sum: f64 = w.iter().map(|&(_, k)| k).sum();
                assert!((sum - 1.0).abs() < 1e-12, "{from}->{to}: {sum}");
            }
        }
        let values: Vec<f64> = (0..28 * 28).map(|i| f64::from(i % 256) / 255.0).collect();
        let same = resize_area(&values, 28, 28, 28, 28);
        let expected: Vec<f32> = values.iter().map(|&v| v as f32).collect();
        assert_eq!(same, expected);
    }

    #[test]
    fn area_resize_averages_blocks() {
        // 4x4 of two halves, to 2x2: each output is one 2x2 block's mean.
        let values = [
            0.0, 0.0, 1.0, 1.0, 0.0, 0.0, 1.0, 1.0, 0.5, 0.5, 0.25, 0.25, 0.5, 0.5, 0.25, 0.25,
        ];
        assert_eq!(resize_area(&values, 4, 4, 2, 2), vec![0.0, 1.0, 0.5, 0.25]);
    }

    #[test]
    fn center_square_keeps_the_middle() {
        let values: Vec<f64> = (0..12).map(f64::from).collect(); // 3 rows x 4 columns
        let (kept, r, c) = center_square(&values, 3, 4);
        assert_eq!((r, c), (3, 3));
        assert_eq!(kept, vec![0.0, 1.0, 2.0, 4.0, 5.0, 6.0, 8.0, 9.0, 10.0]);
    }
}
