//! The DICOM decoder in the sandbox: hostile and broken files end in a
//! typed refusal or, where dicom-rs panics or over-allocates, in a stop the
//! sandbox contains; the host never parses DICOM itself.

use std::path::PathBuf;
use std::process::Command;

use medguard::sandbox::{GuestFailure, SandboxError};
use medguard_dicom::{Acceptance, Crop, DicomError, Intensity, Preprocessing, Resize};
use medguard_tests::{repo_root, shared_program};

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(repo_root().join("tests/dicom/fixtures").join(name)).unwrap()
}

fn chest() -> Acceptance {
    Acceptance {
        modality: vec!["CR".into(), "DX".into()],
        photometric_interpretation: vec!["MONOCHROME1".into(), "MONOCHROME2".into()],
        body_part_examined: vec!["CHEST".into()],
        view_position: vec!["PA".into(), "AP".into()],
    }
}

const PREPROCESSING: Preprocessing = Preprocessing {
    intensity: Intensity::VoiElseStoredRange,
    crop: Crop::CenterSquare,
    resize: Resize::Area,
};

/// How one decode in the sandbox ended.
#[derive(Debug)]
enum Outcome {
    Image(Box<medguard_dicom::Radiograph>),
    /// The decoder's own typed refusal.
    Refused(DicomError),
    /// The decoder panicked or asked for too much memory: the sandbox
    /// stopped it (contained, but not the decoder's own answer).
    Stopped(String),
}

fn decode_in_sandbox(bytes: &[u8], accepts: &Acceptance) -> Outcome {
    let profile = medguard_dicom::DicomProfile {
        accepts: accepts.clone(),
        preprocessing: PREPROCESSING,
        report: medguard_dicom::ReportProfile {
            finding: code(),
            present_label: "pneumonia".into(),
            procedure: code(),
        },
    };
    match shared_program().decode_dicom(bytes, &profile, 28, 28) {
        Ok(r) => Outcome::Image(Box::new(r)),
        Err(SandboxError::Guest(GuestFailure::Dicom(e))) => Outcome::Refused(e),
        Err(e @ (SandboxError::Trap { .. } | SandboxError::MemoryCap { .. })) => {
            Outcome::Stopped(e.to_string())
        }
        Err(other) => panic!("unexpected sandbox failure: {other}"),
    }
}

fn image(outcome: Outcome) -> medguard_dicom::Radiograph {
    match outcome {
        Outcome::Image(r) => *r,
        other => panic!("{other:?}"),
    }
}

fn code() -> medguard_dicom::Code {
    medguard_dicom::Code {
        value: "1".into(),
        scheme: "99TEST".into(),
        meaning: "test".into(),
    }
}

/// The sandbox's answer is the native decoder's, to the bit (wasm float
/// arithmetic is IEEE and deterministic): the guest adds isolation, not a
/// second pipeline.
#[test]
fn the_sandboxed_decoder_gives_the_native_decoders_pixels() {
    for name in [
        "chest-rle.dcm",
        "chest-jpeg-lossless.dcm",
        "chest-jpeg-baseline.dcm",
        "same-pixels/normal-1.dcm",
    ] {
        let bytes = fixture(name);
        let native = medguard_dicom::decode(&bytes, &chest(), &PREPROCESSING, 28, 28).unwrap();
        let sandboxed = image(decode_in_sandbox(&bytes, &chest()));
        assert_eq!(native, sandboxed, "{name}");
        assert!(sandboxed.pixels.iter().all(|v| (0.0..=1.0).contains(v)));
    }
}

/// Every prefix and many single-byte corruptions of a real radiograph end in
/// an image, a typed refusal or a stop the sandbox contains (dicom-rs 0.10
/// panics on some damaged RLE segments); the clean file decodes after each.
#[test]
fn truncated_and_corrupted_files_end_in_a_refusal_or_a_contained_stop() {
    let original = fixture("chest-rle.dcm");
    let mut damaged = Vec::new();
    let step = (original.len() / 97).max(1);
    for len in (0..original.len()).step_by(step) {
        damaged.push(original[..len].to_vec());
    }
    // A deterministic walk of byte flips through header and pixel data.
    let mut state = 0x9e37_79b9_7f4a_7c15_u64;
    for _ in 0..150 {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let mut bytes = original.clone();
        let at = (state % bytes.len() as u64) as usize;
        bytes[at] ^= (state >> 32) as u8 | 1;
        damaged.push(bytes);
    }
    let truncations = damaged.len() - 150;
    let (mut refused, mut stopped, mut images_from_truncations) = (0, 0, 0);
    for (i, bytes) in damaged.iter().enumerate() {
        match decode_in_sandbox(bytes, &chest()) {
            Outcome::Image(r) => {
                assert!(r.pixels.iter().all(|v| (0.0..=1.0).contains(v)));
                images_from_truncations += usize::from(i < truncations);
            }
            Outcome::Refused(_) => refused += 1,
            Outcome::Stopped(_) => {
                stopped += 1;
                image(decode_in_sandbox(&original, &chest()));
            }
        }
    }
    eprintln!(
        "{} damaged files: {refused} refused by the decoder, {stopped} stopped by the sandbox",
        damaged.len()
    );
    // A prefix of the file is never an image.
    assert_eq!(images_from_truncations, 0, "truncated files decoded");
}

/// pydicom's own test files (many transfer syntaxes, some deliberately
/// broken), each decoded in the sandbox under a profile that accepts what
/// the file says it is, so each reaches the pixel decoder: an image or a
/// typed refusal, no decoder panic; the one file that makes dicom-rs ask
/// for 1.2 GB (SC_rgb_jpeg.dcm) is stopped by the memory cap. The list and
/// attributes come from the pinned pydicom
/// (tests/dicom/describe_test_files.py).
#[test]
#[ignore = "needs pydicom's test files; scripts/test.sh provides them"]
fn pydicoms_test_files_decode_or_are_refused_in_the_sandbox() {
    let python = std::env::var_os("MEDGUARD_DICOM_PYTHON")
        .expect("MEDGUARD_DICOM_PYTHON must name a python with pydicom");
    let out = Command::new(python)
        .arg(repo_root().join("tests/dicom/describe_test_files.py"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (mut decoded, mut refused, mut stopped) =
        (Vec::new(), std::collections::BTreeMap::new(), Vec::new());
    let text = String::from_utf8(out.stdout).unwrap();
    for line in text.lines() {
        let file: serde_json::Value = serde_json::from_str(line).unwrap();
        let attribute = |k: &str| vec![file[k].as_str().unwrap().to_string()];
        let accepts = Acceptance {
            modality: attribute("modality"),
            photometric_interpretation: attribute("photometric_interpretation"),
            body_part_examined: attribute("body_part_examined"),
            view_position: attribute("view_position"),
        };
        let path = PathBuf::from(file["path"].as_str().unwrap());
        let bytes = std::fs::read(&path).unwrap();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        match decode_in_sandbox(&bytes, &accepts) {
            Outcome::Image(_) => decoded.push(name),
            Outcome::Stopped(why) => stopped.push(format!("{name}: {why}")),
            Outcome::Refused(e) => {
                let kind = match e {
                    DicomError::NotDicom(_) => "not DICOM Part 10",
                    DicomError::UnsupportedTransferSyntax { .. } => "unsupported transfer syntax",
                    DicomError::NotAccepted(_) => "not accepted",
                    DicomError::Malformed(_) => "malformed",
                    DicomError::Unsupported(_) => "unsupported layout",
                };
                *refused.entry(kind).or_insert(0) += 1;
            }
        }
    }
    eprintln!(
        "decoded {} of pydicom's test files: {decoded:?}; refused: {refused:?}; stopped by the sandbox: {stopped:?}",
        decoded.len()
    );
    assert!(decoded.len() >= 30, "the decoder handles real files");
    assert!(
        stopped
            .iter()
            .all(|s| s.starts_with("SC_rgb_jpeg.dcm:") && s.contains("memory")),
        "{stopped:?}"
    );
}

/// The `guest_dicom` fuzz run's reproducers (tests/dicom/fuzz-reproducers/):
/// small files whose declared lengths make dicom-rs 0.10 allocate 1 to
/// 4 GB. In the sandbox each is stopped by the memory cap or refused by
/// the decoder, and the next file decodes.
#[test]
fn the_fuzzers_over_allocating_files_are_stopped_by_the_memory_cap() {
    let dir = repo_root().join("tests/dicom/fuzz-reproducers");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    assert!(files.len() >= 10, "{} reproducers", files.len());
    let (mut stopped, mut refused) = (0, 0);
    for file in &files {
        match decode_in_sandbox(&std::fs::read(file).unwrap(), &chest()) {
            Outcome::Image(_) => panic!("{} decoded", file.display()),
            Outcome::Refused(_) => refused += 1,
            Outcome::Stopped(why) => {
                assert!(why.contains("memory"), "{}: {why}", file.display());
                stopped += 1;
            }
        }
    }
    eprintln!("{stopped} stopped by the memory cap, {refused} refused");
    image(decode_in_sandbox(&fixture("chest-rle.dcm"), &chest()));
}
