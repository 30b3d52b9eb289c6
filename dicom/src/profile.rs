//! The manifest's `dicom` section: what the model accepts, and how a
//! radiograph becomes its input. Signed with the rest of the manifest, so
//! the preprocessing the model was validated with cannot be swapped.

use serde::{Deserialize, Serialize};

/// What a model says about DICOM input.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DicomProfile {
    /// Images outside these lists are refused with the reason.
    pub accepts: Acceptance,
    /// How the accepted image becomes the model's `height x width` input.
    pub preprocessing: Preprocessing,
    /// What the structured report says the model looks for.
    pub report: ReportProfile,
}

/// The coded meaning of the model's answer, for the structured report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReportProfile {
    /// The finding the model evaluates, e.g. SNOMED CT 233604007 "Pneumonia".
    pub finding: Code,
    /// The output label that means the finding is present; every other
    /// label means it is absent.
    pub present_label: String,
    /// The imaging procedure reported on, e.g. SNOMED CT 399208008 "Plain
    /// chest X-ray".
    pub procedure: Code,
}

/// A DICOM coded concept.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Code {
    /// Code Value (at most 16 characters).
    pub value: String,
    /// Coding Scheme Designator, e.g. `SCT`, `DCM`.
    pub scheme: String,
    /// Code Meaning.
    pub meaning: String,
}

impl Code {
    /// Checks the lengths and characters DICOM allows (SH for value and
    /// scheme, LO for meaning), so a signed manifest cannot make medguard
    /// write an invalid report.
    pub fn check(&self) -> Result<(), String> {
        let ok = |s: &str, max: usize| {
            !s.trim().is_empty()
                && s.chars().count() <= max
                && !s.chars().any(|c| c.is_control() || c == '\\')
        };
        if ok(&self.value, 16) && ok(&self.scheme, 16) && ok(&self.meaning, 64) {
            Ok(())
        } else {
            Err(format!(
                "code ({}, {}, \"{}\") must have a value and scheme of 1 to 16 characters and a meaning of 1 to 64, without backslashes or control characters",
                self.value, self.scheme, self.meaning
            ))
        }
    }
}

/// Attribute values the model was trained and validated on. An image passes
/// when each attribute is present and its value (trimmed, compared exactly)
/// is in the list. A missing attribute is a refusal: an MR slice without a
/// Body Part Examined must not get a chest verdict (a manifest cannot list
/// an empty value; the library matches exactly what it is given).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Acceptance {
    /// Modality (0008,0060), e.g. `CR`, `DX`.
    pub modality: Vec<String>,
    /// Photometric Interpretation (0028,0004), e.g. `MONOCHROME2`.
    pub photometric_interpretation: Vec<String>,
    /// Body Part Examined (0018,0015), e.g. `CHEST`.
    pub body_part_examined: Vec<String>,
    /// View Position (0018,5101), e.g. `PA`, `AP`.
    pub view_position: Vec<String>,
}

/// The preprocessing, in the order it runs: intensity, crop, resize.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Preprocessing {
    /// How stored values become `[0, 1]`.
    pub intensity: Intensity,
    /// Which part of the image is kept.
    pub crop: Crop,
    /// How the kept part becomes the model's size.
    pub resize: Resize,
}

/// Stored values to `[0, 1]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Intensity {
    /// The modality LUT (rescale slope and intercept), then the file's first
    /// window (with its VOI LUT function) or else its first VOI LUT, or else
    /// the whole range the stored bits can hold, linearly; `MONOCHROME1` is
    /// inverted last. An 8-bit `MONOCHROME2` image without a window maps
    /// like an 8-bit PNG: `value / 255`.
    VoiElseStoredRange,
}

/// Which part of the image the model sees.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Crop {
    /// The whole image (its aspect ratio is changed by the resize).
    None,
    /// The centred square with the short side's length (MedMNIST's
    /// preprocessing: the training images were made this way).
    CenterSquare,
}

/// How the kept part is resized.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Resize {
    /// Each output pixel is the mean of the source area it covers, weighted
    /// by overlap (box filter, anti-aliased, exact in f64). A same-size
    /// "resize" is the identity.
    Area,
}
