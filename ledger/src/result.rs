//! One image's result: the fields of a `medguard predict --json` line but
//! its receipt. The CLI, the C ABI and the browser build serialise this one
//! type, so that their answers compare field by field; [`crate::line`]
//! checks such a line against its receipt. (The server answers in the Open
//! Inference Protocol's shape instead: its `parameters` carry the verdict,
//! p-value, label, statistics and receipt.)

use std::collections::BTreeMap;

use medguard_attest::AttestedModel;
use medguard_screen::StatisticReport;
use serde::Serialize;

use crate::entry::Verdict;

/// The fields of a result line but the receipt.
#[derive(Debug, Clone, Serialize)]
pub struct ResultFields {
    /// What the caller named the input (a file name, `name[i]` for the
    /// i-th image of a batch); absent when it gave none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub input: Option<String>,
    /// `None` when the input was rejected and the policy withholds predictions.
    pub label: Option<String>,
    /// Probabilities by label; `None` when withheld.
    pub probabilities: Option<BTreeMap<String, f32>>,
    /// The screening verdict.
    pub verdict: Verdict,
    /// Combined p-value in [0, 1], lower is more suspicious; `None` when unscreened.
    pub p_value: Option<f64>,
    /// Each statistic's value and p-value, by name.
    pub statistics: BTreeMap<String, StatisticJson>,
    /// Format integrity: reported, not counted as detection.
    pub integrity: Integrity,
    /// The seed of the noise draws: passing it again reproduces the verdict.
    pub seed: u64,
    /// The admitted model that produced it.
    pub model: ModelRef,
    /// SHA-256 of the guest (or, in a browser, the wasm module) that ran it.
    pub guest_sha256: String,
    /// For a DICOM input: what was decoded (no patient data).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dicom: Option<DicomJson>,
    /// The robustness certificate of a certified model: method,
    /// `radius_l2` (null when the smoothed classifier abstained), samples,
    /// sigma, alpha and votes. Recorded in the entry, so the receipt covers it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub certificate: Option<medguard_certify::Certificate>,
}

impl ResultFields {
    /// Each statistic's evidence by the statistic's name.
    pub fn statistics_by_name(reports: &[StatisticReport]) -> BTreeMap<String, StatisticJson> {
        reports
            .iter()
            .map(|r| {
                (
                    r.statistic.name(),
                    StatisticJson {
                        value: r.value,
                        p_value: r.p_value,
                    },
                )
            })
            .collect()
    }
}

/// One statistic's evidence.
#[derive(Debug, Clone, Serialize)]
pub struct StatisticJson {
    /// Its value on this image.
    pub value: f64,
    /// Its p-value against the clean calibration images.
    pub p_value: f64,
}

/// Format integrity: reported, not counted as detection.
#[derive(Debug, Clone, Serialize)]
pub struct Integrity {
    /// Bit depth of the integer samples (0 for floats, colour or DICOM).
    pub source_bits: u8,
    /// Values off that integer grid.
    pub off_grid: u32,
}

/// The admitted model, by name, version and digest.
#[derive(Debug, Clone, Serialize)]
pub struct ModelRef {
    /// The manifest's name.
    pub name: String,
    /// The manifest's version.
    pub version: String,
    /// SHA-256 of the model file that was admitted.
    pub sha256: String,
}

impl ModelRef {
    /// `model` by name, version and digest.
    pub fn of(model: &AttestedModel) -> Self {
        let m = model.manifest();
        Self {
            name: m.name.clone(),
            version: m.version.to_string(),
            sha256: model.model_digest().to_string(),
        }
    }
}

/// The decoded DICOM image's facts.
#[derive(Debug, Clone, Serialize)]
pub struct DicomJson {
    /// Transfer syntax UID of the source.
    pub transfer_syntax: String,
    /// Source rows.
    pub rows: u32,
    /// Source columns.
    pub columns: u32,
    /// Bits stored per sample.
    pub bits_stored: u16,
    /// Photometric interpretation of the source.
    pub photometric_interpretation: String,
    /// How intensities were mapped (window, rescale).
    pub intensity: String,
}

impl From<&medguard_dicom::SourceImage> for DicomJson {
    fn from(s: &medguard_dicom::SourceImage) -> Self {
        Self {
            transfer_syntax: s.transfer_syntax.clone(),
            rows: s.rows,
            columns: s.columns,
            bits_stored: s.bits_stored,
            photometric_interpretation: s.photometric_interpretation.clone(),
            intensity: s.intensity.clone(),
        }
    }
}
