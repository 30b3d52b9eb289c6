//! One image's result as the JSON object `medguard predict --json` prints
//! and the C ABI and Python package return: one shape, built in one place,
//! so that every front end's answer can be compared field by field.

use std::collections::BTreeMap;

use medguard_attest::AttestedModel;
use medguard_ledger::Receipt;
use medguard_ledger::entry::Verdict;
use serde::Serialize;

use crate::guard::{Classified, ImageResult};

/// One image's result, as printed with `--json`.
#[derive(Debug, Serialize)]
pub struct Prediction<'a> {
    /// What the caller named the input (a file name, `name[i]` for the i-th
    /// image of a batch); absent when it gave none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub input: Option<String>,
    /// `None` when the input was rejected and the policy withholds predictions.
    pub label: Option<&'a str>,
    /// Probabilities by label; `None` when withheld.
    pub probabilities: Option<&'a BTreeMap<String, f32>>,
    /// The screening verdict.
    pub verdict: Verdict,
    /// Combined p-value in [0, 1], lower is more suspicious; `None` when unscreened.
    pub p_value: Option<f64>,
    /// Each statistic's value and p-value.
    pub statistics: BTreeMap<String, StatisticJson>,
    /// Format integrity: reported, not counted as detection.
    pub integrity: Integrity,
    /// The seed of the guest's noise draws: passing it again reproduces the verdict.
    pub seed: u64,
    /// The admitted model that produced it.
    pub model: ModelRef,
    /// SHA-256 of the guest that ran it.
    pub guest_sha256: String,
    /// For a DICOM input: what the sandbox decoded (no patient data).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dicom: Option<DicomJson<'a>>,
    /// The structured report written for it, if one was asked for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub structured_report: Option<String>,
    /// Why no structured report could be written for it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub structured_report_error: Option<String>,
    /// The ledger entry of this result with its inclusion proof and signed
    /// checkpoint: `medguard ledger verify-receipt` checks it offline.
    pub receipt: &'a Receipt,
}

/// The decoded DICOM image's facts.
#[derive(Debug, Serialize)]
pub struct DicomJson<'a> {
    /// Transfer syntax UID of the source.
    pub transfer_syntax: &'a str,
    /// Source rows.
    pub rows: u32,
    /// Source columns.
    pub columns: u32,
    /// Bits stored per sample.
    pub bits_stored: u16,
    /// Photometric interpretation of the source.
    pub photometric_interpretation: &'a str,
    /// How intensities were mapped (window, rescale).
    pub intensity: &'a str,
}

/// One statistic's evidence.
#[derive(Debug, Serialize)]
pub struct StatisticJson {
    /// Its value on this image.
    pub value: f64,
    /// Its p-value against the clean calibration images.
    pub p_value: f64,
}

/// Format integrity: reported, not counted as detection.
#[derive(Debug, Serialize)]
pub struct Integrity {
    /// Bit depth of the integer samples (0 for floats or colour).
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

impl<'a> Prediction<'a> {
    /// `image`, one of `classified`'s results, made by `model` in the guest
    /// whose digest is `guest_sha256`.
    pub fn new(
        input: Option<String>,
        image: &'a ImageResult,
        classified: &'a Classified,
        model: ModelRef,
        guest_sha256: &str,
    ) -> Self {
        Self {
            input,
            label: image.label.as_deref(),
            probabilities: image.probabilities.as_ref(),
            verdict: image.verdict,
            p_value: image.p_value,
            statistics: image
                .statistics
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
                .collect(),
            integrity: Integrity {
                source_bits: classified.source_bits,
                off_grid: image.off_grid,
            },
            seed: classified.seed,
            model,
            guest_sha256: guest_sha256.to_owned(),
            dicom: classified.dicom.as_ref().map(|d| DicomJson {
                transfer_syntax: &d.image.transfer_syntax,
                rows: d.image.rows,
                columns: d.image.columns,
                bits_stored: d.image.bits_stored,
                photometric_interpretation: &d.image.photometric_interpretation,
                intensity: &d.image.intensity,
            }),
            structured_report: None,
            structured_report_error: None,
            receipt: &image.receipt,
        }
    }
}
