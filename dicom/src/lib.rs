//! DICOM for medguard: chest radiographs in, structured reports out.
//!
//! This is the one crate that touches dicom-rs. It has two halves:
//!
//! - [`profile`]: what a signed manifest says about DICOM input (what the
//!   model accepts, how a radiograph becomes the model's tensor). Plain data,
//!   always compiled, so `medguard-attest` can carry it without dicom-rs.
//! - with the `codec` feature: [`decode`], which turns the bytes of an
//!   untrusted Part 10 file into the model's pixels. It runs inside the
//!   sandbox guest, never in the host: a parser of hostile bytes gets no
//!   files, no network and a memory cap. And [`sr`], which writes the IHE AI
//!   Results structured report the host files with the study.

pub mod profile;

#[cfg(feature = "codec")]
mod decode;
#[cfg(feature = "codec")]
pub mod sr;
#[cfg(feature = "codec")]
pub mod synthetic;

#[cfg(feature = "codec")]
pub use decode::decode;
pub use profile::{
    Acceptance, Code, Crop, DicomProfile, Intensity, Preprocessing, ReportProfile, Resize,
};

use thiserror::Error;

/// The largest image (rows x columns) medguard decodes. Chest radiographs are
/// 2,000 to 3,000 pixels a side; the decode holds about 20 bytes per pixel
/// (file, parsed and decoded samples, one f64 plane), so this keeps it
/// inside the sandbox's 512 MiB memory cap.
pub const MAX_PIXELS: u64 = 4096 * 4096;

/// The longest text the decoder returns for any attribute it reads. Longer
/// values are cut and marked as cut with a trailing U+0001, which no value
/// representation allows, so no report is written from a shortened value
/// (a person name may lawfully be longer in UTF-8: three groups of 64
/// characters). The host refuses a guest answer with a longer string.
pub const TEXT_MAX_BYTES: usize = 324;

/// Transfer syntaxes medguard decodes: UID and name.
pub const SUPPORTED_TRANSFER_SYNTAXES: [(&str, &str); 6] = [
    ("1.2.840.10008.1.2", "Implicit VR Little Endian"),
    ("1.2.840.10008.1.2.1", "Explicit VR Little Endian"),
    (
        "1.2.840.10008.1.2.1.99",
        "Deflated Explicit VR Little Endian",
    ),
    ("1.2.840.10008.1.2.5", "RLE Lossless"),
    ("1.2.840.10008.1.2.4.50", "JPEG Baseline (Process 1)"),
    (
        "1.2.840.10008.1.2.4.70",
        "JPEG Lossless, Non-Hierarchical, First-Order Prediction (Process 14, Selection Value 1)",
    ),
];

/// Why a DICOM file gave no image. Each case is about this file only.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum DicomError {
    /// Not a DICOM Part 10 file (no preamble and `DICM` magic).
    #[error("not a DICOM Part 10 file: {0}")]
    NotDicom(String),
    /// A transfer syntax medguard does not decode; named so the sender can
    /// transcode.
    #[error(
        "transfer syntax {name} ({uid}) is not supported; send implicit or explicit VR little endian, deflate, RLE, JPEG baseline or JPEG lossless (SV1)"
    )]
    UnsupportedTransferSyntax {
        /// The transfer syntax UID of the file.
        uid: String,
        /// Its name, or "unknown".
        name: String,
    },
    /// The image is not what the model's manifest says it accepts (modality,
    /// photometric interpretation, body part, view).
    #[error("{0}")]
    NotAccepted(String),
    /// The file breaks the standard in a way that stops decoding.
    #[error("malformed DICOM: {0}")]
    Malformed(String),
    /// Valid DICOM that this pipeline does not handle (multi-frame, colour,
    /// too large).
    #[error("{0}")]
    Unsupported(String),
}

/// What the guest decoded: the model's pixels, and what the host needs to
/// report on them.
#[derive(Debug, Clone, PartialEq)]
pub struct Radiograph {
    /// `height * width` values in `[0, 1]`, row-major: exactly what the
    /// model and the screening see.
    pub pixels: Vec<f32>,
    /// Rows of [`Radiograph::pixels`].
    pub height: u32,
    /// Columns of [`Radiograph::pixels`].
    pub width: u32,
    /// Facts about the source image, for logs and the report.
    pub source: SourceImage,
    /// Who and what the image belongs to, copied into the structured report
    /// so the archive files it with the study. Patient data: it never goes
    /// into the ledger or a log.
    pub identity: SourceIdentity,
}

/// Facts about the decoded image (no patient data).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SourceImage {
    /// Rows of the stored image.
    pub rows: u32,
    /// Columns of the stored image.
    pub columns: u32,
    /// Bits stored per sample.
    pub bits_stored: u16,
    /// The transfer syntax UID.
    pub transfer_syntax: String,
    /// Modality (0008,0060).
    pub modality: String,
    /// Photometric Interpretation (0028,0004).
    pub photometric_interpretation: String,
    /// Body Part Examined (0018,0015).
    pub body_part_examined: String,
    /// View Position (0018,5101).
    pub view_position: String,
    /// Which VOI step mapped the values to `[0, 1]`.
    pub intensity: String,
}

/// Identity attributes of the source instance, as text (empty when absent).
/// Patient data: its `Debug` shows only which fields are set, so a `{:?}`
/// in a log line never prints a name or an ID.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct SourceIdentity {
    /// SOP Class UID (0008,0016).
    pub sop_class_uid: String,
    /// SOP Instance UID (0008,0018).
    pub sop_instance_uid: String,
    /// Study Instance UID (0020,000D).
    pub study_instance_uid: String,
    /// Series Instance UID (0020,000E).
    pub series_instance_uid: String,
    /// Patient's Name (0010,0010).
    pub patient_name: String,
    /// Patient ID (0010,0020).
    pub patient_id: String,
    /// Patient's Birth Date (0010,0030).
    pub patient_birth_date: String,
    /// Patient's Sex (0010,0040).
    pub patient_sex: String,
    /// Study Date (0008,0020).
    pub study_date: String,
    /// Study Time (0008,0030).
    pub study_time: String,
    /// Study ID (0020,0010).
    pub study_id: String,
    /// Accession Number (0008,0050).
    pub accession_number: String,
    /// Referring Physician's Name (0008,0090).
    pub referring_physician_name: String,
}

impl std::fmt::Debug for SourceIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let set = |v: &String| if v.is_empty() { "empty" } else { "<redacted>" };
        f.debug_struct("SourceIdentity")
            .field("sop_class_uid", &set(&self.sop_class_uid))
            .field("sop_instance_uid", &set(&self.sop_instance_uid))
            .field("study_instance_uid", &set(&self.study_instance_uid))
            .field("series_instance_uid", &set(&self.series_instance_uid))
            .field("patient_name", &set(&self.patient_name))
            .field("patient_id", &set(&self.patient_id))
            .field("patient_birth_date", &set(&self.patient_birth_date))
            .field("patient_sex", &set(&self.patient_sex))
            .field("study_date", &set(&self.study_date))
            .field("study_time", &set(&self.study_time))
            .field("study_id", &set(&self.study_id))
            .field("accession_number", &set(&self.accession_number))
            .field(
                "referring_physician_name",
                &set(&self.referring_physician_name),
            )
            .finish()
    }
}

/// True when `bytes` look like a DICOM Part 10 file (128-byte preamble, then
/// `DICM`). Sniffing only: the guest decides.
pub fn is_part10(bytes: &[u8]) -> bool {
    bytes.get(128..132) == Some(b"DICM")
}

/// The name of a transfer syntax UID, if medguard knows it.
pub fn transfer_syntax_name(uid: &str) -> &'static str {
    const OTHERS: [(&str, &str); 12] = [
        ("1.2.840.10008.1.2.2", "Explicit VR Big Endian (retired)"),
        (
            "1.2.840.10008.1.2.4.51",
            "JPEG Extended (Process 2 & 4), 12-bit",
        ),
        (
            "1.2.840.10008.1.2.4.57",
            "JPEG Lossless, Non-Hierarchical (Process 14)",
        ),
        ("1.2.840.10008.1.2.4.80", "JPEG-LS Lossless"),
        ("1.2.840.10008.1.2.4.81", "JPEG-LS Near-Lossless"),
        ("1.2.840.10008.1.2.4.90", "JPEG 2000 Lossless Only"),
        ("1.2.840.10008.1.2.4.91", "JPEG 2000"),
        ("1.2.840.10008.1.2.4.100", "MPEG2 Main Profile"),
        ("1.2.840.10008.1.2.4.110", "JPEG XL Lossless"),
        ("1.2.840.10008.1.2.4.112", "JPEG XL"),
        (
            "1.2.840.10008.1.2.4.201",
            "High-Throughput JPEG 2000 Lossless",
        ),
        ("1.2.840.10008.1.2.4.203", "High-Throughput JPEG 2000"),
    ];
    SUPPORTED_TRANSFER_SYNTAXES
        .iter()
        .chain(OTHERS.iter())
        .find(|(u, _)| *u == uid)
        .map_or("unknown", |(_, name)| name)
}
