//! The model manifest (`manifest.json`): strict, size-capped, one schema.

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::Sha256Digest;

/// Manifests are small; anything larger is refused before parsing.
pub const MANIFEST_MAX_BYTES: usize = 1024 * 1024;

/// Most output classes a manifest may declare.
pub const MAX_LABELS: usize = 256;
/// Longest output label, in bytes.
pub const MAX_LABEL_BYTES: usize = 64;

/// The manifest schema this build understands.
const SCHEMA: &str = "medguard.manifest/v1";

/// What a model directory claims about its model. A plain data type: it is
/// trusted only once admission has checked its signature under the trust
/// policy and matched it with the model bytes (or, for vendor tools, once
/// [`crate::attest`] matched a manifest the caller vouches for).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Always `medguard.manifest/v1`.
    pub schema: String,
    /// Model name, the key that trust policies and rollback use.
    pub name: String,
    /// Model version (semver); admission refuses rollbacks by it.
    pub version: semver::Version,
    /// When this manifest stops being valid (RFC 3339). A trust policy can
    /// require one so that a stale signed manifest cannot be replayed
    /// forever (a freeze attack). Covered by the signature like every field.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires: Option<jiff::Timestamp>,
    /// The model file and its expected digest.
    pub model: ModelFile,
    /// How the input tensor looks and how image pixels become it.
    pub input: InputSpec,
    /// What the output tensor means.
    pub output: OutputSpec,
    /// The largest batch one inference call may carry.
    pub max_batch: u32,
    /// The adversarial-input screening profile written by `medguard
    /// calibrate`. Part of the manifest so that its signature covers the
    /// thresholds too.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub screening: Option<ScreeningSection>,
    /// Certified predictions: by randomized smoothing (the noise, the
    /// samples per image, the error probability and the L2 radius the
    /// deployment requires) or by interval bound propagation (the
    /// L-infinity radius it requires). A model with it returns a label only
    /// when its certificate reaches that radius (under the enforce policy).
    /// Signed like every field, so the requirement cannot be lowered after
    /// the fact.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certification: Option<medguard_certify::Certification>,
    /// What the model was made from, as its training script recorded it:
    /// the digests of the training data, the split and the script, the
    /// seeds, library versions and measured metrics. Admission copies it into
    /// the ledger, so an auditor can trace a result to its training data.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub training: Option<Training>,
    /// What the model accepts as DICOM and how a radiograph becomes its
    /// input (target size: `input.shape`). A model without it takes no
    /// DICOM. Signed like every field, so the preprocessing the model was
    /// validated with cannot be swapped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dicom: Option<medguard_dicom::DicomProfile>,
}

/// The manifest's screening section: the profile and where it came from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScreeningSection {
    /// What the reference values were computed on, for auditors.
    pub calibration: CalibrationSource,
    /// Statistics, reference values and thresholds.
    pub profile: medguard_screen::Profile,
    /// The calibration images' pixel statistics, which the server's drift
    /// alarm compares a stream of inputs with (never one input's verdict).
    /// Manifests calibrated before it existed have none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pixels: Option<medguard_screen::PixelReference>,
}

/// Training provenance (see [`Manifest::training`]). Bounded, so that it
/// always fits a ledger entry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Training {
    /// The files the model was made from, each named with its role
    /// (`data`, `splits`, `script`, ...) and its SHA-256.
    pub inputs: Vec<TrainingInput>,
    /// Random seeds by what they seeded.
    pub seeds: std::collections::BTreeMap<String, u64>,
    /// Library versions by package name.
    pub libraries: std::collections::BTreeMap<String, String>,
    /// Metrics measured at training time, by dotted name.
    pub metrics: std::collections::BTreeMap<String, f64>,
}

/// One file a model was made from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainingInput {
    /// What it was for: `data`, `splits`, `script`, ...
    pub role: String,
    /// Its file name where it was used (no directories).
    pub file: String,
    /// SHA-256 of its bytes.
    pub sha256: Sha256Digest,
}

/// Most entries in each of the training section's lists and maps.
const TRAINING_MAX_ENTRIES: usize = 64;
/// Longest name or value text in the training section, in bytes.
const TRAINING_MAX_TEXT: usize = 128;

impl Training {
    fn validate(&self) -> Result<(), String> {
        let text_ok = |t: &str| {
            !t.is_empty() && t.len() <= TRAINING_MAX_TEXT && !t.chars().any(char::is_control)
        };
        if [
            self.inputs.len(),
            self.seeds.len(),
            self.libraries.len(),
            self.metrics.len(),
        ]
        .iter()
        .any(|&n| n > TRAINING_MAX_ENTRIES)
        {
            return Err(format!(
                "training: at most {TRAINING_MAX_ENTRIES} inputs, seeds, libraries and metrics each"
            ));
        }
        let texts = self
            .inputs
            .iter()
            .flat_map(|i| [i.role.as_str(), i.file.as_str()])
            .chain(self.seeds.keys().map(String::as_str))
            .chain(
                self.libraries
                    .iter()
                    .flat_map(|(k, v)| [k.as_str(), v.as_str()]),
            )
            .chain(self.metrics.keys().map(String::as_str));
        for t in texts {
            if !text_ok(t) {
                return Err(format!(
                    "training: {t:?} must be 1-{TRAINING_MAX_TEXT} bytes without control characters"
                ));
            }
        }
        if let Some(i) = self.inputs.iter().find(|i| i.file.contains(['/', '\\'])) {
            return Err(format!(
                "training: input file {:?} must be a plain file name",
                i.file
            ));
        }
        if let Some((k, v)) = self.metrics.iter().find(|(_, v)| !v.is_finite()) {
            return Err(format!(
                "training: metric {k} is {v}, metrics must be finite"
            ));
        }
        Ok(())
    }
}

/// Provenance of a screening profile.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CalibrationSource {
    /// Human-readable description of the clean images (file, array, subset).
    pub data: String,
    /// How many images were used.
    pub images: u32,
    /// SHA-256 of the guest component that computed the statistics.
    pub guest_sha256: Sha256Digest,
    /// Seed of the noise draws during calibration.
    pub seed: u64,
}

/// The model file, named relative to the manifest's directory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelFile {
    /// A plain file name in the model directory (no path separators).
    pub file: String,
    /// SHA-256 of the file's bytes.
    pub sha256: Sha256Digest,
    /// Exact size in bytes.
    pub size: u64,
}

/// The input tensor, `[batch, channels, height, width]` with a dynamic batch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InputSpec {
    /// Name of the ONNX input tensor.
    pub tensor: String,
    /// Only `float32` is supported.
    pub dtype: String,
    /// `[null, channels, height, width]`; `null` marks the dynamic batch axis.
    pub shape: InputShape,
    /// Inclusive range of every tensor element.
    pub range: ValueRange,
    /// How image pixels map to tensor values.
    pub pixels: PixelMapping,
}

/// `[null, channels, height, width]` as written in the manifest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "Vec<Option<u32>>", into = "Vec<Option<u32>>")]
pub struct InputShape {
    /// Channels per image.
    pub channels: u32,
    /// Image height in pixels.
    pub height: u32,
    /// Image width in pixels.
    pub width: u32,
}

impl TryFrom<Vec<Option<u32>>> for InputShape {
    type Error = String;

    fn try_from(dims: Vec<Option<u32>>) -> Result<Self, String> {
        match dims.as_slice() {
            [None, Some(c), Some(h), Some(w)] if *c > 0 && *h > 0 && *w > 0 => Ok(Self {
                channels: *c,
                height: *h,
                width: *w,
            }),
            _ => Err(format!(
                "input shape must be [null, channels, height, width] with positive sizes, got {dims:?}"
            )),
        }
    }
}

impl From<InputShape> for Vec<Option<u32>> {
    fn from(s: InputShape) -> Self {
        vec![None, Some(s.channels), Some(s.height), Some(s.width)]
    }
}

/// An inclusive value range, written `[min, max]`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(from = "[f32; 2]", into = "[f32; 2]")]
pub struct ValueRange {
    /// Smallest allowed value.
    pub min: f32,
    /// Largest allowed value.
    pub max: f32,
}

impl From<[f32; 2]> for ValueRange {
    fn from([min, max]: [f32; 2]) -> Self {
        Self { min, max }
    }
}

impl From<ValueRange> for [f32; 2] {
    fn from(r: ValueRange) -> Self {
        [r.min, r.max]
    }
}

/// How pixels of an image file become tensor values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PixelMapping {
    /// How colour images become the model's channels.
    pub color: ColorConversion,
    /// How integer pixel values become floats.
    pub scale: PixelScale,
}

/// Colour handling for single-channel models.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ColorConversion {
    /// Grayscale is taken as is; RGB becomes luma `0.299 R + 0.587 G + 0.114 B` (ITU-R BT.601).
    LumaBt601,
}

/// Integer-to-float mapping of pixel values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PixelScale {
    /// `value = pixel / (2^bit_depth - 1)`, so 8- and 16-bit images both land in `[0, 1]`.
    UnitInterval,
}

/// The output tensor.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutputSpec {
    /// Name of the ONNX output tensor.
    pub tensor: String,
    /// What the values are; probabilities are derived in the guest.
    pub kind: OutputKind,
    /// Class labels in output order.
    pub labels: Vec<String>,
}

/// What the output tensor holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OutputKind {
    /// Unnormalised scores; the guest applies softmax.
    Logits,
}

/// Why a manifest was refused.
#[derive(Debug, Error)]
pub enum ManifestError {
    /// Larger than [`MANIFEST_MAX_BYTES`].
    #[error("manifest is {size} bytes, more than the {MANIFEST_MAX_BYTES}-byte limit")]
    TooLarge {
        /// Size of the offered manifest.
        size: usize,
    },
    /// Not JSON of the manifest's shape (unknown fields included).
    #[error("manifest is not valid: {0}")]
    Parse(#[from] serde_json::Error),
    /// Well-formed JSON with values that make no sense.
    #[error("manifest is not valid: {0}")]
    Invalid(String),
}

/// Batches beyond this would let a caller make the guest allocate without bound.
const MAX_BATCH_LIMIT: u32 = 1024;

impl Manifest {
    /// The DICOM profile of a model that takes DICOM files; refused, with
    /// the reason a sender reads, when the manifest has no `dicom` section
    /// or the model's input is not one channel.
    pub fn dicom_input(&self) -> Result<&medguard_dicom::DicomProfile, medguard_dicom::DicomError> {
        use medguard_dicom::DicomError;
        let profile = self.dicom.as_ref().ok_or_else(|| {
            DicomError::Unsupported(format!(
                "{} {} takes no DICOM: its signed manifest has no dicom section",
                self.name, self.version
            ))
        })?;
        if self.input.shape.channels != 1 {
            return Err(DicomError::Unsupported(format!(
                "a radiograph has one channel, the model wants {}",
                self.input.shape.channels
            )));
        }
        Ok(profile)
    }

    /// Parses and validates a manifest. Unknown fields, an unknown schema,
    /// path-like file names and degenerate specs are refused.
    pub fn parse(bytes: &[u8]) -> Result<Self, ManifestError> {
        if bytes.len() > MANIFEST_MAX_BYTES {
            return Err(ManifestError::TooLarge { size: bytes.len() });
        }
        let manifest: Manifest = serde_json::from_slice(bytes)?;
        manifest.validate()?;
        Ok(manifest)
    }

    fn validate(&self) -> Result<(), ManifestError> {
        let invalid = |why: String| Err(ManifestError::Invalid(why));
        if self.schema != SCHEMA {
            return invalid(format!(
                "schema is {:?}, this build reads {SCHEMA:?}",
                self.schema
            ));
        }
        let name_ok = |s: &str| {
            !s.is_empty()
                && s.len() <= 128
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        };
        if !name_ok(&self.name) {
            return invalid(format!(
                "model name {:?} must be 1-128 of [A-Za-z0-9._-]",
                self.name
            ));
        }
        let file = &self.model.file;
        if !name_ok(file) || file.starts_with('.') {
            return invalid(format!(
                "model file {file:?} must be a plain file name inside the model directory"
            ));
        }
        for tensor in [&self.input.tensor, &self.output.tensor] {
            if tensor.is_empty() || tensor.len() > 256 {
                return invalid(format!("tensor name {tensor:?} must be 1-256 bytes"));
            }
        }
        if self.input.dtype != "float32" {
            return invalid(format!(
                "input dtype {:?} is not supported; use float32",
                self.input.dtype
            ));
        }
        let r = self.input.range;
        if !(r.min.is_finite() && r.max.is_finite() && r.min < r.max) {
            return invalid(format!(
                "input range [{}, {}] must be finite with min < max",
                r.min, r.max
            ));
        }
        let labels = &self.output.labels;
        let unique = labels
            .iter()
            .enumerate()
            .all(|(i, l)| !labels[..i].contains(l));
        if labels.len() < 2 || !unique || labels.iter().any(String::is_empty) {
            return invalid("output labels must be at least two distinct non-empty names".into());
        }
        // Every result records its probabilities by label: bounded, so that
        // a result always fits its ledger entry.
        if labels.len() > MAX_LABELS
            || labels
                .iter()
                .any(|l| l.len() > MAX_LABEL_BYTES || l.chars().any(char::is_control))
        {
            return invalid(format!(
                "at most {MAX_LABELS} output labels of at most {MAX_LABEL_BYTES} bytes each, without control characters"
            ));
        }
        if let Some(screening) = &self.screening {
            screening
                .profile
                .validate(labels.len())
                .map_err(|e| ManifestError::Invalid(e.to_string()))?;
            if let Some(pixels) = &screening.pixels {
                pixels
                    .validate()
                    .map_err(|e| ManifestError::Invalid(e.to_string()))?;
                if pixels.images() > screening.calibration.images as usize {
                    return invalid(format!(
                        "screening.pixels holds {} images' values, calibration used {}",
                        pixels.images(),
                        screening.calibration.images
                    ));
                }
            }
        }
        if let Some(training) = &self.training {
            training.validate().map_err(ManifestError::Invalid)?;
        }
        if let Some(certification) = &self.certification {
            let range = f64::from(self.input.range.max) - f64::from(self.input.range.min);
            certification
                .validate(labels.len(), range)
                .map_err(|e| ManifestError::Invalid(format!("certification: {e}")))?;
        }
        if let Some(dicom) = &self.dicom {
            let report = &dicom.report;
            if !labels.contains(&report.present_label) {
                return invalid(format!(
                    "dicom.report.present_label \"{}\" is not one of the output labels",
                    report.present_label
                ));
            }
            for code in [&report.finding, &report.procedure] {
                code.check()
                    .map_err(|e| ManifestError::Invalid(format!("dicom.report: {e}")))?;
            }
            let a = &dicom.accepts;
            for (name, list) in [
                ("modality", &a.modality),
                ("photometric_interpretation", &a.photometric_interpretation),
                ("body_part_examined", &a.body_part_examined),
                ("view_position", &a.view_position),
            ] {
                // Code strings as DICOM writes them (PS3.5 6.2, CS): an entry
                // that can never match, or an empty one that would accept a
                // missing attribute, is a mistake in the signed manifest.
                let code_string = |v: &String| {
                    (1..=16).contains(&v.len())
                        && v.trim() == v
                        && v.bytes().all(|b| {
                            b.is_ascii_uppercase() || b.is_ascii_digit() || b == b' ' || b == b'_'
                        })
                };
                if list.is_empty() || !list.iter().all(code_string) {
                    return invalid(format!(
                        "dicom.accepts.{name} must list 1 or more DICOM code strings (1 to 16 of A-Z, 0-9, space, underscore), got {list:?}"
                    ));
                }
            }
            // The decoder yields one channel of values in [0, 1].
            if self.input.shape.channels != 1
                || self.input.range.min > 0.0
                || self.input.range.max < 1.0
            {
                return invalid(
                    "a dicom section needs a one-channel input whose range includes [0, 1]".into(),
                );
            }
        }
        if self.max_batch == 0 || self.max_batch > MAX_BATCH_LIMIT {
            return invalid(format!(
                "max_batch must be 1 to {MAX_BATCH_LIMIT}, got {}",
                self.max_batch
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn example() -> serde_json::Value {
        serde_json::json!({
            "schema": "medguard.manifest/v1",
            "name": "pneumonia-cnn",
            "version": "1.0.0",
            "model": {"file": "model.onnx", "sha256": "ab".repeat(32), "size": 10},
            "input": {
                "tensor": "image", "dtype": "float32", "shape": [null, 1, 28, 28],
                "range": [0.0, 1.0],
                "pixels": {"color": "luma-bt601", "scale": "unit-interval"}
            },
            "output": {"tensor": "logits", "kind": "logits", "labels": ["normal", "pneumonia"]},
            "max_batch": 64
        })
    }

    fn parse(v: &serde_json::Value) -> Result<Manifest, ManifestError> {
        Manifest::parse(&serde_json::to_vec(v).unwrap())
    }

    #[test]
    fn dicom_input_needs_a_dicom_section_and_one_channel() {
        let e = parse(&example()).unwrap().dicom_input().unwrap_err();
        assert_eq!(
            e.to_string(),
            "pneumonia-cnn 1.0.0 takes no DICOM: its signed manifest has no dicom section"
        );
        let mut v = example();
        v["dicom"] = serde_json::json!({
            "accepts": {
                "modality": ["CR", "DX"], "photometric_interpretation": ["MONOCHROME2"],
                "body_part_examined": ["CHEST"], "view_position": ["PA", "AP"]
            },
            "preprocessing": {
                "intensity": "voi-else-stored-range", "crop": "center-square", "resize": "area"
            },
            "report": {
                "finding": {"value": "233604007", "scheme": "SCT", "meaning": "Pneumonia"},
                "present_label": "pneumonia",
                "procedure": {"value": "399208008", "scheme": "SCT", "meaning": "Plain chest X-ray"}
            }
        });
        let one = parse(&v).unwrap();
        assert!(one.dicom_input().is_ok());
        let mut three = one.clone();
        three.input.shape.channels = 3;
        let e = three.dicom_input().unwrap_err();
        assert_eq!(
            e.to_string(),
            "a radiograph has one channel, the model wants 3"
        );
    }

    #[test]
    fn parses_and_round_trips() {
        let m = parse(&example()).unwrap();
        assert_eq!(m.input.shape.height, 28);
        let again = Manifest::parse(&serde_json::to_vec(&m).unwrap()).unwrap();
        assert_eq!(m, again);
    }

    #[test]
    fn refuses_unknown_fields_anywhere() {
        let mut v = example();
        v["extra"] = 1.into();
        assert!(parse(&v).unwrap_err().to_string().contains("unknown field"));
        let mut v = example();
        v["model"]["url"] = "http://x".into();
        assert!(parse(&v).is_err());
    }

    #[test]
    fn refuses_bad_values() {
        let cases: [(&str, serde_json::Value); 9] = [
            ("/input/tensor", "".into()),
            ("/schema", "other/v9".into()),
            ("/name", "../etc".into()),
            ("/model/file", "../model.onnx".into()),
            ("/model/sha256", "AB".repeat(32).into()),
            ("/input/shape", serde_json::json!([1, 1, 28, 28])),
            ("/input/range", serde_json::json!([1.0, 0.0])),
            ("/output/labels", serde_json::json!(["a", "a"])),
            ("/max_batch", 0.into()),
        ];
        for (pointer, value) in cases {
            let mut v = example();
            *v.pointer_mut(pointer).unwrap() = value;
            assert!(parse(&v).is_err(), "{pointer} should be refused");
        }
    }

    fn screening() -> serde_json::Value {
        serde_json::json!({
            "calibration": {"data": "x.npz:train_images", "images": 4, "guest_sha256": "cd".repeat(32), "seed": 1},
            "profile": {
                "statistics": [{"kind": "margin"}, {"kind": "squeeze-median", "window": 2}],
                "classes": [
                    {"reference": [[0.5, 1.0], [0.0, 0.1]]},
                    {"reference": [[0.2, 3.0], [0.1, 0.2]]}
                ],
                "thresholds": {"flag": 0.05, "reject": 0.01},
                "targets": {"flag_fpr": 0.05, "reject_fpr": 0.01}
            },
            "pixels": {"intensity": [0.4, 0.5, 0.6, 0.7], "contrast": [0.1, 0.1, 0.2, 0.3]}
        })
    }

    #[test]
    fn a_screening_section_round_trips_and_is_validated() {
        let mut v = example();
        v["screening"] = screening();
        let m = parse(&v).unwrap();
        let profile = &m.screening.as_ref().unwrap().profile;
        assert_eq!(profile.statistics.len(), 2);
        assert_eq!(
            m.screening
                .as_ref()
                .unwrap()
                .pixels
                .as_ref()
                .unwrap()
                .images(),
            4
        );
        assert_eq!(
            Manifest::parse(&serde_json::to_vec(&m).unwrap()).unwrap(),
            m
        );
        let cases: [(&str, serde_json::Value); 9] = [
            ("/screening/pixels/contrast", serde_json::json!([0.3, 0.1])),
            ("/screening/pixels/intensity", serde_json::json!([0.4])),
            ("/screening/pixels/intensity", serde_json::json!([])),
            (
                "/screening/pixels",
                serde_json::json!({"intensity": vec![0.1; 5], "contrast": vec![0.1; 5]}),
            ),
            (
                "/screening/profile/classes/0/reference/0",
                serde_json::json!([1.0, 0.5]),
            ),
            (
                "/screening/profile/classes/1",
                serde_json::json!({"reference": [[1.0]]}),
            ),
            ("/screening/profile/thresholds/reject", 0.5.into()),
            ("/screening/profile/statistics/1/window", 0.into()),
            ("/screening/profile/statistics/0/kind", "magic".into()),
        ];
        for (pointer, value) in cases {
            let mut v = example();
            v["screening"] = screening();
            *v.pointer_mut(pointer).unwrap() = value;
            assert!(parse(&v).is_err(), "{pointer} should be refused");
        }
        let mut v = example();
        v["screening"] = screening();
        v["screening"]["profile"]["classes"]
            .as_array_mut()
            .unwrap()
            .pop();
        assert!(parse(&v).unwrap_err().to_string().contains("classes"));
        // A manifest calibrated before pixel statistics existed stays valid.
        let mut v = example();
        v["screening"] = screening();
        v["screening"].as_object_mut().unwrap().remove("pixels");
        assert!(parse(&v).unwrap().screening.unwrap().pixels.is_none());
    }

    fn dicom() -> serde_json::Value {
        serde_json::json!({
            "accepts": {
                "modality": ["CR", "DX"],
                "photometric_interpretation": ["MONOCHROME2"],
                "body_part_examined": ["CHEST"],
                "view_position": ["PA"]
            },
            "preprocessing": {"intensity": "voi-else-stored-range", "crop": "center-square", "resize": "area"},
            "report": {
                "finding": {"value": "233604007", "scheme": "SCT", "meaning": "Pneumonia"},
                "present_label": "b",
                "procedure": {"value": "399208008", "scheme": "SCT", "meaning": "Plain chest X-ray"}
            }
        })
    }

    #[test]
    fn a_dicom_section_round_trips_and_is_validated() {
        let mut v = example();
        v["output"]["labels"] = serde_json::json!(["a", "b"]);
        v["dicom"] = dicom();
        let m = parse(&v).unwrap();
        assert_eq!(
            Manifest::parse(&serde_json::to_vec(&m).unwrap()).unwrap(),
            m
        );
        let cases: [(&str, serde_json::Value); 9] = [
            ("/dicom/accepts/modality", serde_json::json!([])),
            ("/dicom/accepts/modality", serde_json::json!([""])),
            (
                "/dicom/accepts/body_part_examined",
                serde_json::json!(["chest"]),
            ),
            ("/dicom/accepts/view_position", serde_json::json!([" PA"])),
            ("/dicom/accepts/modality", serde_json::json!(["DX\\MR"])),
            ("/dicom/report/present_label", "pneumonia".into()),
            ("/dicom/report/finding/value", "x".repeat(17).into()),
            ("/dicom/preprocessing/resize", "bicubic".into()),
            ("/input/range", serde_json::json!([0.0, 0.5])),
        ];
        for (pointer, value) in cases {
            let mut v = example();
            v["output"]["labels"] = serde_json::json!(["a", "b"]);
            v["dicom"] = dicom();
            *v.pointer_mut(pointer).unwrap() = value;
            assert!(parse(&v).is_err(), "{pointer} should be refused");
        }
    }

    #[test]
    fn refuses_oversized_manifests_before_parsing() {
        let big = vec![b' '; MANIFEST_MAX_BYTES + 1];
        assert!(matches!(
            Manifest::parse(&big),
            Err(ManifestError::TooLarge { .. })
        ));
    }
}
