//! One image's result as the JSON object `medguard predict --json` prints
//! and the C ABI and Python package return: the fields every front end
//! shares ([`ResultFields`], in the ledger crate, which the browser build
//! uses too), the structured report's path, and the receipt.

use medguard_ledger::Receipt;
pub use medguard_ledger::result::{ModelRef, ResultFields};
use serde::Serialize;

use crate::guard::{Classified, ImageResult};

/// One image's result, as printed with `--json`.
#[derive(Debug, Serialize)]
pub struct Prediction<'a> {
    /// Label, probabilities, verdict and its evidence, seed, model, guest.
    #[serde(flatten)]
    pub result: ResultFields,
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

impl<'a> Prediction<'a> {
    /// `image`, one of `classified`'s results, made by `model` in the guest
    /// whose digest is `guest_sha256`.
    pub fn new(
        input: Option<String>,
        image: &'a ImageResult,
        classified: &Classified,
        model: ModelRef,
        guest_sha256: &str,
    ) -> Self {
        Self {
            result: ResultFields {
                input,
                label: image.label.clone(),
                probabilities: image.probabilities.clone(),
                verdict: image.verdict,
                p_value: image.p_value,
                statistics: ResultFields::statistics_by_name(&image.statistics),
                integrity: medguard_ledger::result::Integrity {
                    source_bits: classified.source_bits,
                    off_grid: image.off_grid,
                },
                seed: classified.seed,
                model,
                guest_sha256: guest_sha256.to_owned(),
                dicom: classified.dicom.as_ref().map(|d| (&d.image).into()),
                certificate: image.certificate.clone(),
            },
            structured_report: None,
            structured_report_error: None,
            receipt: &image.receipt,
        }
    }
}
