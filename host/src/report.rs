//! DICOM structured reports of classified radiographs: the guard's result
//! in the form a PACS files with the study (medguard-dicom writes it).

use medguard_attest::{AttestedModel, Sha256Digest};
use medguard_dicom::sr::{self, Outcome, Report, SrError};
use medguard_ledger::entry::Verdict;

use crate::guard::{Classified, ImageResult};

/// The report for one classified DICOM image: its SOP Instance UID and its
/// Part 10 bytes. `None` when the input was not DICOM or the model's
/// manifest has no DICOM profile.
pub fn structured_report(
    model: &AttestedModel,
    guest_sha256: &Sha256Digest,
    classified: &Classified,
    image: &ImageResult,
) -> Option<Result<(String, Vec<u8>), SrError>> {
    let source = classified.dicom.as_ref()?;
    let profile = &model.manifest().dicom.as_ref()?.report;
    let manifest = model.manifest();
    // A report is filed with the study and outlives the request: a rejected
    // input's label, and one no certificate covers, never go into one,
    // whatever the screening policy returned to the caller.
    let uncovered = image
        .certificate
        .as_ref()
        .is_some_and(|c| !c.covers(&manifest.output.labels, image.label.as_ref()));
    let outcome = match (&image.label, &image.probabilities) {
        _ if image.verdict == Verdict::Reject || uncovered => Outcome::Withheld,
        (Some(label), Some(probabilities)) => Outcome::Reported {
            present: *label == profile.present_label,
            probability: probabilities
                .get(&profile.present_label)
                .copied()
                .unwrap_or(0.0),
        },
        _ => Outcome::Withheld,
    };
    let verdict = match image.verdict {
        Verdict::Accept => sr::Verdict::Accept,
        Verdict::Flag => sr::Verdict::Flag,
        Verdict::Reject => sr::Verdict::Reject,
        Verdict::Unscreened => sr::Verdict::Unscreened,
    };
    let receipt_json = match serde_json::to_string(&image.receipt) {
        Ok(json) => json,
        Err(e) => return Some(Err(SrError::Encode(e.to_string()))),
    };
    let model_digest = model.model_digest();
    // Derived, not random: the report of a ledger entry always has the same
    // UID, and one model's reports on one study share a series.
    let sop_instance_uid = derived_uid(&[b"medguard-sr\0", image.receipt.entry.as_bytes()]);
    let series_instance_uid = derived_uid(&[
        b"medguard-sr-series\0",
        model_digest.as_bytes(),
        source.identity.study_instance_uid.as_bytes(),
    ]);
    let device_uid = derived_uid(&[b"medguard-device\0", model_digest.as_bytes()]);
    let now = jiff::Timestamp::now();
    let (date, time) = (
        now.strftime("%Y%m%d").to_string(),
        now.strftime("%H%M%S").to_string(),
    );
    let (model_sha256, guest) = (model_digest.to_string(), guest_sha256.to_string());
    let version = manifest.version.to_string();
    let report = Report {
        source: &source.identity,
        profile,
        outcome,
        verdict,
        p_value: image.p_value,
        model_name: &manifest.name,
        model_version: &version,
        model_sha256: &model_sha256,
        guest_sha256: &guest,
        seed: classified.seed,
        ledger_index: image.receipt.index,
        receipt_json: &receipt_json,
        software_version: env!("CARGO_PKG_VERSION"),
        content_date: &date,
        content_time: &time,
        sop_instance_uid: &sop_instance_uid,
        series_instance_uid: &series_instance_uid,
        device_uid: &device_uid,
    };
    Some(sr::write(&report).map(|bytes| (sop_instance_uid, bytes)))
}

fn derived_uid(parts: &[&[u8]]) -> String {
    let joined: Vec<u8> = parts.concat();
    sr::uid_from_digest(Sha256Digest::of(&joined).as_bytes())
}
