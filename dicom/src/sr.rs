//! The IHE AI Results (AIR) structured report: one Comprehensive 3D SR per
//! classified image, filed by the archive with the source study.
//!
//! Content tree (DICOM PS3.16 TID 1500 "Measurement Report"):
//!
//! ```text
//! CONTAINER Imaging Measurement Report (TID 1500)
//!   HAS CONCEPT MOD  Language of Content = English (United States)
//!   HAS OBS CONTEXT  Observer Type = Device, Device Observer UID, Name, Manufacturer, Model Name
//!   HAS CONCEPT MOD  Procedure reported = (manifest)
//!   CONTAINS CONTAINER Image Library > Image Library Group > IMAGE (source)
//!   CONTAINS CONTAINER Imaging Measurements
//!     CONTAINS CONTAINER Measurement Group (TID 1501)
//!       HAS OBS CONTEXT  Tracking Identifier, Tracking Unique Identifier
//!       CONTAINS CODE    Finding = (manifest)                     } only when the
//!       CONTAINS CODE    (finding) = Present | Absent            } label is
//!       CONTAINS NUM     probability of the finding              } returned
//!       HAS CONCEPT MOD  Algorithm Name, Version, Parameters (TID 4019)
//!       CONTAINS IMAGE   Source of Measurement
//!       CONTAINS CODE    medguard screening verdict, NUM p-value
//!       CONTAINS TEXT    ledger index, receipt; Comment when withheld
//! ```
//!
//! medguard's own concepts use the local coding scheme `99MEDGUARD` (PS3.16
//! section 8.2: private schemes start with "99").

use dicom_core::value::{DataSetSequence, PrimitiveValue};
use dicom_core::{DataElement, Length, Tag, VR};
use dicom_dictionary_std::{tags, uids};
use dicom_object::{FileMetaTableBuilder, InMemDicomObject};
use thiserror::Error;

use crate::profile::Code;
use crate::{ReportProfile, SourceIdentity};

/// The local coding scheme of medguard's concepts.
pub const SCHEME: &str = "99MEDGUARD";

/// Why no report was written.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum SrError {
    /// An identifier of the source cannot be copied into a valid report.
    #[error("cannot write a structured report: the source's {attribute} {problem}")]
    Source {
        /// The attribute's name.
        attribute: &'static str,
        /// What is wrong with it.
        problem: String,
    },
    /// dicom-rs could not encode the report.
    #[error("cannot encode the structured report: {0}")]
    Encode(String),
}

/// The screening verdict, as the report codes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Screening found nothing unusual.
    Accept,
    /// Unusual; the label is returned with a warning.
    Flag,
    /// Failed screening.
    Reject,
    /// The model runs without a screening profile (vendor use only).
    Unscreened,
}

/// The model's answer for the image: a finding, or none because it was
/// withheld.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Outcome {
    /// The label was returned.
    Reported {
        /// The predicted label is the manifest's `present_label`.
        present: bool,
        /// The probability of `present_label`.
        probability: f32,
    },
    /// The input failed integrity screening and no label was returned: the
    /// report says so and carries no label or probability.
    Withheld,
}

/// Everything one report says.
#[derive(Debug, Clone)]
pub struct Report<'a> {
    /// The source instance's identity (copied so the archive files the
    /// report with the study).
    pub source: &'a SourceIdentity,
    /// The manifest's coded finding and procedure.
    pub profile: &'a ReportProfile,
    /// The model's answer.
    pub outcome: Outcome,
    /// The screening verdict.
    pub verdict: Verdict,
    /// The combined screening p-value.
    pub p_value: Option<f64>,
    /// Model name (Algorithm Name).
    pub model_name: &'a str,
    /// Model version (Algorithm Version).
    pub model_version: &'a str,
    /// SHA-256 of the model bytes, hex.
    pub model_sha256: &'a str,
    /// SHA-256 of the sandbox guest, hex.
    pub guest_sha256: &'a str,
    /// The screening seed.
    pub seed: u64,
    /// The ledger entry's index.
    pub ledger_index: u64,
    /// The receipt (entry, inclusion proof, signed checkpoint) as JSON.
    pub receipt_json: &'a str,
    /// medguard's version (Software Versions).
    pub software_version: &'a str,
    /// Content Date and Time, `YYYYMMDD` and `HHMMSS` (UTC).
    pub content_date: &'a str,
    /// See [`Report::content_date`].
    pub content_time: &'a str,
    /// The report's SOP Instance UID.
    pub sop_instance_uid: &'a str,
    /// The report's Series Instance UID.
    pub series_instance_uid: &'a str,
    /// Device UID of the algorithm (derived from the model digest).
    pub device_uid: &'a str,
}

/// A UID under the `2.25` root (ITU-T X.667: a UUID as one integer) made
/// from the first 128 bits of `digest`.
pub fn uid_from_digest(digest: &[u8; 32]) -> String {
    let mut first = [0u8; 16];
    first.copy_from_slice(&digest[..16]);
    format!("2.25.{}", u128::from_be_bytes(first))
}

/// True for a syntactically valid UID (PS3.5 9.1): at most 64 characters,
/// dot-separated numbers without leading zeros.
pub fn is_valid_uid(uid: &str) -> bool {
    uid.len() <= 64
        && !uid.is_empty()
        && uid.split('.').all(|part| {
            !part.is_empty()
                && part.bytes().all(|b| b.is_ascii_digit())
                && (part == "0" || !part.starts_with('0'))
        })
}

/// Writes the report as a DICOM Part 10 file (explicit VR little endian).
pub fn write(report: &Report<'_>) -> Result<Vec<u8>, SrError> {
    let s = report.source;
    for (attribute, uid) in [
        ("SOP Class UID", &s.sop_class_uid),
        ("SOP Instance UID", &s.sop_instance_uid),
        ("Study Instance UID", &s.study_instance_uid),
        ("Series Instance UID", &s.series_instance_uid),
    ] {
        if !is_valid_uid(uid) {
            return Err(SrError::Source {
                attribute,
                problem: if uid.is_empty() {
                    "is missing".into()
                } else {
                    "is not a valid UID".into()
                },
            });
        }
    }
    let mut s = s.clone();
    for (attribute, value, vr) in [
        ("Patient's Name", &mut s.patient_name, Vr::PersonName),
        ("Patient ID", &mut s.patient_id, Vr::Long),
        ("Patient's Birth Date", &mut s.patient_birth_date, Vr::Date),
        ("Patient's Sex", &mut s.patient_sex, Vr::Code),
        ("Study Date", &mut s.study_date, Vr::Date),
        ("Study Time", &mut s.study_time, Vr::Time),
        ("Study ID", &mut s.study_id, Vr::Short),
        ("Accession Number", &mut s.accession_number, Vr::Short),
        (
            "Referring Physician's Name",
            &mut s.referring_physician_name,
            Vr::PersonName,
        ),
    ] {
        if !vr.allows(value) {
            // Identity the archive files by must be right or absent from
            // the report altogether; the rest may go empty (type 2).
            if matches!(
                attribute,
                "Patient's Name" | "Patient ID" | "Accession Number"
            ) {
                return Err(SrError::Source {
                    attribute,
                    problem: "is not a valid value of its kind (length, characters)".into(),
                });
            }
            value.clear();
        }
    }
    let s = &s;
    let mut object = InMemDicomObject::new_empty();
    // UTF-8 always: names can be in any script, and the receipt's signed
    // checkpoint has an em dash.
    put_str(
        &mut object,
        tags::SPECIFIC_CHARACTER_SET,
        VR::CS,
        "ISO_IR 192",
    );
    // SOP Common.
    put_str(
        &mut object,
        tags::SOP_CLASS_UID,
        VR::UI,
        uids::COMPREHENSIVE3_DSR_STORAGE,
    );
    put_str(
        &mut object,
        tags::SOP_INSTANCE_UID,
        VR::UI,
        report.sop_instance_uid,
    );
    put_str(
        &mut object,
        tags::INSTANCE_CREATION_DATE,
        VR::DA,
        report.content_date,
    );
    put_str(
        &mut object,
        tags::INSTANCE_CREATION_TIME,
        VR::TM,
        report.content_time,
    );
    // Patient and General Study: copied from the source.
    put_str(&mut object, tags::PATIENT_NAME, VR::PN, &s.patient_name);
    put_str(&mut object, tags::PATIENT_ID, VR::LO, &s.patient_id);
    put_str(
        &mut object,
        tags::PATIENT_BIRTH_DATE,
        VR::DA,
        &s.patient_birth_date,
    );
    put_str(&mut object, tags::PATIENT_SEX, VR::CS, &s.patient_sex);
    put_str(
        &mut object,
        tags::STUDY_INSTANCE_UID,
        VR::UI,
        &s.study_instance_uid,
    );
    put_str(&mut object, tags::STUDY_DATE, VR::DA, &s.study_date);
    put_str(&mut object, tags::STUDY_TIME, VR::TM, &s.study_time);
    put_str(
        &mut object,
        tags::REFERRING_PHYSICIAN_NAME,
        VR::PN,
        &s.referring_physician_name,
    );
    put_str(&mut object, tags::STUDY_ID, VR::SH, &s.study_id);
    put_str(
        &mut object,
        tags::ACCESSION_NUMBER,
        VR::SH,
        &s.accession_number,
    );
    // SR Document Series and General / Enhanced General Equipment.
    put_str(&mut object, tags::MODALITY, VR::CS, "SR");
    put_str(
        &mut object,
        tags::SERIES_INSTANCE_UID,
        VR::UI,
        report.series_instance_uid,
    );
    put_str(&mut object, tags::SERIES_NUMBER, VR::IS, "990");
    put_str(
        &mut object,
        tags::SERIES_DESCRIPTION,
        VR::LO,
        "medguard AI results",
    );
    object.put(DataElement::new(
        tags::REFERENCED_PERFORMED_PROCEDURE_STEP_SEQUENCE,
        VR::SQ,
        DataSetSequence::new(Vec::<InMemDicomObject>::new(), Length::UNDEFINED),
    ));
    put_str(&mut object, tags::MANUFACTURER, VR::LO, "medguard");
    put_str(
        &mut object,
        tags::MANUFACTURER_MODEL_NAME,
        VR::LO,
        "medguard inference integrity guard",
    );
    put_str(&mut object, tags::DEVICE_SERIAL_NUMBER, VR::LO, "0");
    put_str(
        &mut object,
        tags::SOFTWARE_VERSIONS,
        VR::LO,
        report.software_version,
    );
    // The algorithm as contributing equipment (IHE AIR).
    object.put(sequence(
        tags::CONTRIBUTING_EQUIPMENT_SEQUENCE,
        vec![InMemDicomObject::from_element_iter([
            code_sequence(
                tags::PURPOSE_OF_REFERENCE_CODE_SEQUENCE,
                &code("1630", "99IHE", "Processing Algorithm"),
            ),
            text(tags::MANUFACTURER, VR::LO, "medguard"),
            text(
                tags::MANUFACTURER_MODEL_NAME,
                VR::LO,
                &clip(report.model_name, 64),
            ),
            text(
                tags::SOFTWARE_VERSIONS,
                VR::LO,
                &clip(report.model_version, 64),
            ),
            text(tags::DEVICE_UID, VR::UI, report.device_uid),
            text(
                tags::CONTRIBUTION_DATE_TIME,
                VR::DT,
                &format!("{}{}", report.content_date, report.content_time),
            ),
            text(
                tags::CONTRIBUTION_DESCRIPTION,
                VR::ST,
                "medguard: attested model, sandboxed inference, integrity screening",
            ),
        ])],
    ));
    // SR Document General.
    put_str(&mut object, tags::INSTANCE_NUMBER, VR::IS, "1");
    put_str(&mut object, tags::COMPLETION_FLAG, VR::CS, "COMPLETE");
    put_str(&mut object, tags::VERIFICATION_FLAG, VR::CS, "UNVERIFIED");
    put_str(&mut object, tags::CONTENT_DATE, VR::DA, report.content_date);
    put_str(&mut object, tags::CONTENT_TIME, VR::TM, report.content_time);
    object.put(DataElement::new(
        tags::PERFORMED_PROCEDURE_CODE_SEQUENCE,
        VR::SQ,
        DataSetSequence::new(Vec::<InMemDicomObject>::new(), Length::UNDEFINED),
    ));
    object.put(sequence(
        tags::CURRENT_REQUESTED_PROCEDURE_EVIDENCE_SEQUENCE,
        vec![InMemDicomObject::from_element_iter([
            sequence(
                tags::REFERENCED_SERIES_SEQUENCE,
                vec![InMemDicomObject::from_element_iter([
                    referenced_sop(s),
                    text(tags::SERIES_INSTANCE_UID, VR::UI, &s.series_instance_uid),
                ])],
            ),
            text(tags::STUDY_INSTANCE_UID, VR::UI, &s.study_instance_uid),
        ])],
    ));
    // SR Document Content: the root container.
    put_str(&mut object, tags::VALUE_TYPE, VR::CS, "CONTAINER");
    object.put(code_sequence(
        tags::CONCEPT_NAME_CODE_SEQUENCE,
        &code("126000", "DCM", "Imaging Measurement Report"),
    ));
    put_str(&mut object, tags::CONTINUITY_OF_CONTENT, VR::CS, "SEPARATE");
    object.put(template(tags::CONTENT_TEMPLATE_SEQUENCE, "1500"));
    object.put(content(root_items(report)));

    let file = object
        .with_meta(
            FileMetaTableBuilder::new()
                .transfer_syntax(uids::EXPLICIT_VR_LITTLE_ENDIAN)
                .implementation_class_uid(IMPLEMENTATION_CLASS_UID)
                .implementation_version_name("MEDGUARD"),
        )
        .map_err(|e| SrError::Encode(e.to_string()))?;
    let mut out = Vec::new();
    file.write_all(&mut out)
        .map_err(|e| SrError::Encode(chain(&e)))?;
    Ok(out)
}

/// An error with its causes, for a one-line message.
fn chain(e: &dyn std::error::Error) -> String {
    let mut message = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        message.push_str(": ");
        message.push_str(&cause.to_string());
        source = cause.source();
    }
    message
}

/// The value representations of the identity copied from the source.
#[derive(Clone, Copy)]
enum Vr {
    PersonName,
    Long,
    Short,
    Code,
    Date,
    Time,
}

impl Vr {
    /// True when `value` is a valid single value of this VR (PS3.5 6.2).
    fn allows(self, value: &str) -> bool {
        let plain = !value.chars().any(|c| c.is_control() || c == '\\');
        plain
            && match self {
                Vr::PersonName => {
                    let groups: Vec<&str> = value.split('=').collect();
                    groups.len() <= 3 && groups.iter().all(|g| g.chars().count() <= 64)
                }
                Vr::Long => value.chars().count() <= 64,
                Vr::Short => value.chars().count() <= 16,
                Vr::Code => {
                    value.len() <= 16
                        && value.bytes().all(|b| {
                            b.is_ascii_uppercase() || b.is_ascii_digit() || b == b' ' || b == b'_'
                        })
                }
                Vr::Date => {
                    value.is_empty()
                        || (value.len() == 8 && value.bytes().all(|b| b.is_ascii_digit()))
                }
                Vr::Time => {
                    value.len() <= 16
                        && value.bytes().all(|b| b.is_ascii_digit() || b == b'.')
                        && value.bytes().filter(|&b| b == b'.').count() <= 1
                }
            }
    }
}

/// medguard's implementation class UID: a 2.25 UID fixed for this writer.
const IMPLEMENTATION_CLASS_UID: &str = "2.25.183427109231984377021839155376264130717";

fn root_items(report: &Report<'_>) -> Vec<InMemDicomObject> {
    let s = report.source;
    let mut group = vec![
        item_text(
            "HAS OBS CONTEXT",
            code("112039", "DCM", "Tracking Identifier"),
            "medguard image-level finding",
        ),
        item_uid(
            "HAS OBS CONTEXT",
            code("112040", "DCM", "Tracking Unique Identifier"),
            report.sop_instance_uid,
        ),
    ];
    match report.outcome {
        Outcome::Reported {
            present,
            probability,
        } => {
            let finding = &report.profile.finding;
            group.push(item_code(
                "CONTAINS",
                code("121071", "DCM", "Finding"),
                finding.clone(),
            ));
            group.push(item_code(
                "CONTAINS",
                finding.clone(),
                if present {
                    code("52101004", "SCT", "Present")
                } else {
                    code("2667000", "SCT", "Absent")
                },
            ));
            group.push(item_num(
                "CONTAINS",
                code("MG-PROBABILITY", SCHEME, "Probability of finding"),
                f64::from(probability),
            ));
            if report.verdict == Verdict::Flag {
                // In standard codes, so that every viewer shows it beside
                // the finding.
                group.push(item_text(
                    "CONTAINS",
                    code("121106", "DCM", "Comment"),
                    "Caution: medguard's integrity screening flagged this input as unusual \
                     (possible manipulation or an image unlike the model's training data); \
                     review the image before relying on this finding.",
                ));
            }
        }
        Outcome::Withheld => group.push(item_text(
            "CONTAINS",
            code("121106", "DCM", "Comment"),
            "No finding is reported: the input failed medguard's integrity screening \
             (possible adversarial manipulation), so the model's answer was withheld.",
        )),
    }
    group.extend([
        item_text(
            "HAS CONCEPT MOD",
            code("111001", "DCM", "Algorithm Name"),
            report.model_name,
        ),
        item_text(
            "HAS CONCEPT MOD",
            code("111003", "DCM", "Algorithm Version"),
            report.model_version,
        ),
        item_text(
            "HAS CONCEPT MOD",
            code("111002", "DCM", "Algorithm Parameters"),
            &format!("model-sha256={}", report.model_sha256),
        ),
        item_text(
            "HAS CONCEPT MOD",
            code("111002", "DCM", "Algorithm Parameters"),
            &format!("guest-sha256={}", report.guest_sha256),
        ),
        item_text(
            "HAS CONCEPT MOD",
            code("111002", "DCM", "Algorithm Parameters"),
            &format!("screening-seed={}", report.seed),
        ),
        item_image(
            "CONTAINS",
            Some(code("121112", "DCM", "Source of Measurement")),
            s,
        ),
        item_code(
            "CONTAINS",
            code("MG-VERDICT", SCHEME, "Integrity screening verdict"),
            match report.verdict {
                Verdict::Accept => code("MG-ACCEPT", SCHEME, "Accepted"),
                Verdict::Flag => code("MG-FLAG", SCHEME, "Flagged"),
                Verdict::Reject => code("MG-REJECT", SCHEME, "Rejected"),
                Verdict::Unscreened => code("MG-UNSCREENED", SCHEME, "Not screened"),
            },
        ),
    ]);
    if let Some(p) = report.p_value {
        group.push(item_num(
            "CONTAINS",
            code("MG-P-VALUE", SCHEME, "Integrity screening p-value"),
            p,
        ));
    }
    group.extend([
        item_text(
            "CONTAINS",
            code("MG-LEDGER-INDEX", SCHEME, "medguard ledger entry index"),
            &report.ledger_index.to_string(),
        ),
        item_text(
            "CONTAINS",
            code("MG-RECEIPT", SCHEME, "medguard ledger receipt"),
            report.receipt_json,
        ),
    ]);
    let mut measurement_group = item_container(
        "CONTAINS",
        code("125007", "DCM", "Measurement Group"),
        group,
    );
    measurement_group.put(template(tags::CONTENT_TEMPLATE_SEQUENCE, "1501"));
    vec![
        item_code(
            "HAS CONCEPT MOD",
            code("121049", "DCM", "Language of Content Item and Descendants"),
            code("en-US", "RFC5646", "English (United States)"),
        ),
        item_code(
            "HAS OBS CONTEXT",
            code("121005", "DCM", "Observer Type"),
            code("121007", "DCM", "Device"),
        ),
        item_uid(
            "HAS OBS CONTEXT",
            code("121012", "DCM", "Device Observer UID"),
            report.device_uid,
        ),
        item_text(
            "HAS OBS CONTEXT",
            code("121013", "DCM", "Device Observer Name"),
            "medguard",
        ),
        item_text(
            "HAS OBS CONTEXT",
            code("121014", "DCM", "Device Observer Manufacturer"),
            "medguard",
        ),
        item_text(
            "HAS OBS CONTEXT",
            code("121015", "DCM", "Device Observer Model Name"),
            report.model_name,
        ),
        item_code(
            "HAS CONCEPT MOD",
            code("121058", "DCM", "Procedure reported"),
            report.profile.procedure.clone(),
        ),
        item_container(
            "CONTAINS",
            code("111028", "DCM", "Image Library"),
            vec![item_container(
                "CONTAINS",
                code("126200", "DCM", "Image Library Group"),
                vec![item_image("CONTAINS", None, s)],
            )],
        ),
        item_container(
            "CONTAINS",
            code("126010", "DCM", "Imaging Measurements"),
            vec![measurement_group],
        ),
    ]
}

fn code(value: &str, scheme: &str, meaning: &str) -> Code {
    Code {
        value: value.into(),
        scheme: scheme.into(),
        meaning: meaning.into(),
    }
}

fn clip(s: &str, max: usize) -> String {
    s.chars().take(max).collect()
}

fn text(tag: Tag, vr: VR, value: &str) -> DataElement<InMemDicomObject> {
    DataElement::new(tag, vr, PrimitiveValue::from(value))
}

fn put_str(object: &mut InMemDicomObject, tag: Tag, vr: VR, value: &str) {
    object.put(text(tag, vr, value));
}

fn sequence(tag: Tag, items: Vec<InMemDicomObject>) -> DataElement<InMemDicomObject> {
    DataElement::new(tag, VR::SQ, DataSetSequence::new(items, Length::UNDEFINED))
}

fn code_item(c: &Code) -> InMemDicomObject {
    InMemDicomObject::from_element_iter([
        text(tags::CODE_VALUE, VR::SH, &c.value),
        text(tags::CODING_SCHEME_DESIGNATOR, VR::SH, &c.scheme),
        text(tags::CODE_MEANING, VR::LO, &c.meaning),
    ])
}

fn code_sequence(tag: Tag, c: &Code) -> DataElement<InMemDicomObject> {
    sequence(tag, vec![code_item(c)])
}

fn template(tag: Tag, id: &str) -> DataElement<InMemDicomObject> {
    sequence(
        tag,
        vec![InMemDicomObject::from_element_iter([
            text(tags::MAPPING_RESOURCE, VR::CS, "DCMR"),
            text(tags::TEMPLATE_IDENTIFIER, VR::CS, id),
        ])],
    )
}

fn content(items: Vec<InMemDicomObject>) -> DataElement<InMemDicomObject> {
    sequence(tags::CONTENT_SEQUENCE, items)
}

fn item(relationship: &str, value_type: &str, concept: Option<Code>) -> InMemDicomObject {
    let mut item = InMemDicomObject::from_element_iter([
        text(tags::RELATIONSHIP_TYPE, VR::CS, relationship),
        text(tags::VALUE_TYPE, VR::CS, value_type),
    ]);
    if let Some(concept) = concept {
        item.put(code_sequence(tags::CONCEPT_NAME_CODE_SEQUENCE, &concept));
    }
    item
}

fn item_text(relationship: &str, concept: Code, value: &str) -> InMemDicomObject {
    let mut i = item(relationship, "TEXT", Some(concept));
    i.put(text(tags::TEXT_VALUE, VR::UT, value));
    i
}

fn item_uid(relationship: &str, concept: Code, uid: &str) -> InMemDicomObject {
    let mut i = item(relationship, "UIDREF", Some(concept));
    i.put(text(tags::UID, VR::UI, uid));
    i
}

fn item_code(relationship: &str, concept: Code, value: Code) -> InMemDicomObject {
    let mut i = item(relationship, "CODE", Some(concept));
    i.put(code_sequence(tags::CONCEPT_CODE_SEQUENCE, &value));
    i
}

fn item_num(relationship: &str, concept: Code, value: f64) -> InMemDicomObject {
    let mut i = item(relationship, "NUM", Some(concept));
    i.put(sequence(
        tags::MEASURED_VALUE_SEQUENCE,
        vec![InMemDicomObject::from_element_iter([
            code_sequence(
                tags::MEASUREMENT_UNITS_CODE_SEQUENCE,
                &code("1", "UCUM", "no units"),
            ),
            text(tags::NUMERIC_VALUE, VR::DS, &decimal_string(value)),
        ])],
    ));
    i
}

fn item_image(relationship: &str, concept: Option<Code>, s: &SourceIdentity) -> InMemDicomObject {
    let mut i = item(relationship, "IMAGE", concept);
    i.put(referenced_sop(s));
    i
}

fn referenced_sop(s: &SourceIdentity) -> DataElement<InMemDicomObject> {
    sequence(
        tags::REFERENCED_SOP_SEQUENCE,
        vec![InMemDicomObject::from_element_iter([
            text(tags::REFERENCED_SOP_CLASS_UID, VR::UI, &s.sop_class_uid),
            text(
                tags::REFERENCED_SOP_INSTANCE_UID,
                VR::UI,
                &s.sop_instance_uid,
            ),
        ])],
    )
}

fn item_container(
    relationship: &str,
    concept: Code,
    children: Vec<InMemDicomObject>,
) -> InMemDicomObject {
    let mut i = item(relationship, "CONTAINER", Some(concept));
    i.put(text(tags::CONTINUITY_OF_CONTENT, VR::CS, "SEPARATE"));
    i.put(content(children));
    i
}

/// A Decimal String (DS: at most 16 characters) for a value in `[0, 1]` or
/// any finite number: plain when it fits, scientific otherwise.
fn decimal_string(value: f64) -> String {
    let plain = format!("{value}");
    if plain.len() <= 16 {
        return plain;
    }
    (0..=10)
        .rev()
        .map(|digits| format!("{value:.digits$e}"))
        .find(|s| s.len() <= 16)
        .unwrap_or_else(|| "0".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uids_from_digests_are_valid() {
        assert!(is_valid_uid(&uid_from_digest(&[0xff; 32])));
        assert!(is_valid_uid(&uid_from_digest(&[0; 32])));
        assert!(is_valid_uid(IMPLEMENTATION_CLASS_UID));
        for bad in ["", "1..2", "1.02", "1.2.a", &"1".repeat(65)] {
            assert!(!is_valid_uid(bad), "{bad}");
        }
    }

    pub(crate) fn example_source() -> SourceIdentity {
        SourceIdentity {
            sop_class_uid: "1.2.840.10008.5.1.4.1.1.1.1".into(),
            sop_instance_uid: "2.25.11".into(),
            study_instance_uid: "2.25.12".into(),
            series_instance_uid: "2.25.13".into(),
            patient_name: "Doe^Jane^Ærøskøbing".into(),
            patient_id: "P1".into(),
            ..SourceIdentity::default()
        }
    }

    fn example_profile() -> ReportProfile {
        ReportProfile {
            finding: code("233604007", "SCT", "Pneumonia"),
            present_label: "pneumonia".into(),
            procedure: code("399208008", "SCT", "Plain chest X-ray"),
        }
    }

    fn example<'a>(source: &'a SourceIdentity, profile: &'a ReportProfile) -> Report<'a> {
        Report {
            source,
            profile,
            outcome: Outcome::Reported {
                present: true,
                probability: 0.97,
            },
            verdict: Verdict::Accept,
            p_value: Some(0.5),
            model_name: "m",
            model_version: "1.0.0",
            model_sha256: "ab",
            guest_sha256: "cd",
            seed: 1,
            ledger_index: 3,
            receipt_json: "{\"checkpoint\": \"\u{2014} medguard\"}",
            software_version: "0.1.0",
            content_date: "20261202",
            content_time: "120000",
            sop_instance_uid: "2.25.1",
            series_instance_uid: "2.25.2",
            device_uid: "2.25.3",
        }
    }

    #[test]
    fn writes_a_part10_report() {
        let (source, profile) = (example_source(), example_profile());
        let bytes = write(&example(&source, &profile)).expect("written");
        assert!(crate::is_part10(&bytes));
    }

    #[test]
    fn refuses_a_source_without_valid_uids() {
        let profile = example_profile();
        let mut source = example_source();
        source.study_instance_uid = "1.2.x".into();
        let e = write(&example(&source, &profile)).expect_err("refused");
        assert!(
            e.to_string()
                .contains("Study Instance UID is not a valid UID"),
            "{e}"
        );
        source.study_instance_uid = String::new();
        let e = write(&example(&source, &profile)).expect_err("refused");
        assert!(
            e.to_string().contains("Study Instance UID is missing"),
            "{e}"
        );
    }

    #[test]
    fn identity_is_checked_by_its_value_representation() {
        let profile = example_profile();
        let mut source = example_source();
        source.patient_id = "P\\2".into();
        let e = write(&example(&source, &profile)).expect_err("refused");
        assert!(e.to_string().contains("Patient ID"), "{e}");
        source.patient_id = "P1".into();
        source.patient_name = "x".repeat(65);
        assert!(write(&example(&source, &profile)).is_err());
        // A broken date is left out (type 2), not copied.
        source.patient_name = "Doe^Jane".into();
        source.study_date = "2026-12-01".into();
        let bytes = write(&example(&source, &profile)).expect("written");
        assert!(!bytes.windows(10).any(|w| w == b"2026-12-01"));
    }

    #[test]
    fn decimal_strings_fit() {
        for v in [
            0.0,
            1.0,
            0.123_456_789_012_345_68,
            1.0e-12,
            0.999999999999,
            123456.789,
        ] {
            let s = decimal_string(v);
            assert!(s.len() <= 16, "{s}");
            let back: f64 = s.parse().expect("parses");
            assert!((back - v).abs() <= v.abs() * 1e-9 + 1e-15, "{v} -> {s}");
        }
    }
}
