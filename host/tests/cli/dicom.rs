//! DICOM in and structured reports out, through `medguard predict`.
//!
//! The fixtures are real PneumoniaMNIST samples wrapped as DX radiographs
//! (tests/dicom/make_fixtures.py), with a synthetic but distinctive patient
//! identity the PHI test looks for.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::{json_lines, medguard, medguard_command, model_dir, root, s, text};

pub(crate) fn fixture(name: &str) -> PathBuf {
    root().join("tests/dicom/fixtures").join(name)
}

/// Every supported transfer syntax of the 224x280 12-bit MONOCHROME1 chest.
const LOSSLESS: [&str; 5] = [
    "chest-implicit-le.dcm",
    "chest-explicit-le.dcm",
    "chest-deflated.dcm",
    "chest-rle.dcm",
    "chest-jpeg-lossless.dcm",
];

/// Bytes of the fixtures' patient and study identity: none may reach the
/// data directory.
pub(crate) const PHI: [&str; 7] = [
    "Testpatient",
    "MGPHI",
    "MGACC5521",
    "MGSTUDY9",
    "Referrer^Rita",
    "20190704",
    // The root of every UID in the fixtures (study, series, SOP instances).
    "31415926535897932384626433832795",
];

fn predict_json(inputs: &[PathBuf], extra: &[&str]) -> (std::process::Output, tempfile::TempDir) {
    let model = model_dir();
    let mut args = vec!["predict", "--json", "--seed", "7", s(&model)];
    args.extend(inputs.iter().map(|p| s(p)));
    args.extend(extra);
    let (mut cmd, data) = medguard_command(&args);
    (cmd.output().unwrap(), data)
}

/// A DICOM and a PNG of the same pixels give the same prediction and
/// verdict, to the bit: the guest's pipeline maps an 8-bit MONOCHROME2
/// image without a window exactly as the PNG decoder maps the PNG.
#[test]
fn a_dicom_and_a_png_of_the_same_pixels_get_the_same_answer() {
    let pairs = [
        ("same-pixels/normal-1.dcm", "samples/normal-1.png"),
        ("same-pixels/pneumonia-1.dcm", "samples/pneumonia-1.png"),
        ("same-pixels/pgd8-1.dcm", "adversarial/pgd8-1.png"),
    ];
    let mut inputs = Vec::new();
    for (dcm, png) in pairs {
        inputs.push(fixture(dcm));
        inputs.push(model_dir().join(png));
    }
    let (out, _data) = predict_json(&inputs, &[]);
    let lines = json_lines(&out);
    assert_eq!(lines.len(), 6, "{}", text(&out.stderr));
    for pair in lines.chunks(2) {
        let (dicom, png) = (&pair[0], &pair[1]);
        for field in ["label", "probabilities", "verdict", "p_value", "statistics"] {
            assert_eq!(dicom[field], png[field], "{field}: {dicom} vs {png}");
        }
        assert_eq!(dicom["dicom"]["transfer_syntax"], "1.2.840.10008.1.2.1");
        assert_eq!(dicom["dicom"]["intensity"], "stored-range");
    }
    // The attacked image is rejected in both forms.
    assert_eq!(lines[4]["verdict"], "reject");
    assert!(lines[4]["label"].is_null());
}

/// The same radiograph in every lossless transfer syntax decodes to the same
/// tensor (same probabilities to the bit), and JPEG baseline close to it.
#[test]
fn every_supported_transfer_syntax_decodes_the_same_radiograph() {
    let mut inputs: Vec<PathBuf> = LOSSLESS.iter().map(|f| fixture(f)).collect();
    inputs.push(fixture("chest-jpeg-baseline.dcm"));
    let (out, _data) = predict_json(&inputs, &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let lines = json_lines(&out);
    assert_eq!(lines.len(), 6);
    let first = &lines[0];
    // It is the upsampled pneumonia-2 sample: the model still says so.
    assert_eq!(first["label"], "pneumonia");
    assert_eq!(first["dicom"]["rows"], 280);
    assert_eq!(first["dicom"]["columns"], 224);
    assert_eq!(first["dicom"]["bits_stored"], 12);
    assert_eq!(first["dicom"]["photometric_interpretation"], "MONOCHROME1");
    assert_eq!(first["dicom"]["intensity"], "window");
    for line in &lines[1..5] {
        assert_eq!(line["probabilities"], first["probabilities"], "{line}");
        assert_eq!(line["verdict"], first["verdict"], "{line}");
    }
    let jpeg = &lines[5];
    assert_eq!(jpeg["label"], first["label"]);
    let p = |l: &serde_json::Value| l["probabilities"]["pneumonia"].as_f64().unwrap();
    assert!((p(jpeg) - p(first)).abs() < 0.01, "{jpeg}");
}

/// What the model does not take gets a one-line reason and exit 1, and the
/// good input after it is still classified.
#[test]
fn refused_dicom_gets_its_reason_and_the_next_input_goes_on() {
    let cases = [
        (
            "refused-mr.dcm",
            "Modality is \"MR\"; the model accepts CR, DX",
        ),
        ("refused-lateral.dcm", "View Position is \"LL\""),
        ("refused-no-body-part.dcm", "Body Part Examined is missing"),
        (
            "refused-jpeg-ls.dcm",
            "transfer syntax JPEG-LS Lossless (1.2.840.10008.1.2.4.80) is not supported",
        ),
        (
            "refused-jpeg2000.dcm",
            "transfer syntax JPEG 2000 Lossless Only (1.2.840.10008.1.2.4.90) is not supported",
        ),
    ];
    let mut inputs: Vec<PathBuf> = cases.iter().map(|(f, _)| fixture(f)).collect();
    inputs.push(fixture("same-pixels/pneumonia-1.dcm"));
    let (out, _data) = predict_json(&inputs, &[]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let lines = json_lines(&out);
    assert_eq!(lines.len(), cases.len() + 1);
    for ((_, reason), line) in cases.iter().zip(&lines) {
        let error = line["error"].as_str().unwrap_or_else(|| panic!("{line}"));
        assert!(error.contains(reason), "{error}");
        assert!(!error.contains('\n'));
        assert!(
            line.get("label").is_none(),
            "a refused image has no label: {line}"
        );
    }
    assert_eq!(lines[cases.len()]["label"], "pneumonia");
}

/// A model whose signed manifest declares no DICOM profile takes no DICOM.
#[test]
fn a_model_without_a_dicom_profile_refuses_dicom() {
    let dir = tempfile::tempdir().unwrap();
    let model = super::signed_copy(dir.path(), None, |m| {
        m.as_object_mut().unwrap().remove("dicom");
    });
    let input = fixture("same-pixels/normal-1.dcm");
    let out = medguard(&["predict", s(&model), s(&input)]);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(err.contains("takes no DICOM"), "{err}");
}

/// No byte of the DICOM headers' patient and study identity lands in any
/// file of the data directory (ledger, checkpoints, keys, caches), whether
/// the image was accepted, rejected or refused.
#[test]
fn no_patient_data_from_dicom_headers_reaches_the_data_dir() {
    let reports = tempfile::tempdir().unwrap();
    let inputs = [
        fixture("chest-rle.dcm"),
        fixture("same-pixels/pgd8-1.dcm"),
        fixture("refused-mr.dcm"),
    ];
    let (out, data) = predict_json(&inputs, &["--sr-dir", s(reports.path())]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    // The reports do carry the identity (that is their purpose) ...
    let written: Vec<_> = std::fs::read_dir(reports.path()).unwrap().collect();
    assert_eq!(written.len(), 2);
    let mut found_in_report = false;
    for entry in written {
        let bytes = std::fs::read(entry.unwrap().path()).unwrap();
        found_in_report |= contains(&bytes, PHI[1].as_bytes());
    }
    assert!(found_in_report, "the test's PHI marker is in the report");
    // ... and nothing under the data dir does.
    let mut files = 0;
    for file in walk(data.path()) {
        files += 1;
        let bytes = std::fs::read(&file).unwrap();
        for phi in PHI {
            assert!(
                !contains(&bytes, phi.as_bytes()),
                "{phi:?} found in {}",
                file.display()
            );
        }
    }
    assert!(files > 0, "the ledger was written");
}

/// The reports pass DICOM validation (dciodvfy: no errors) and read back in
/// highdicom with what `predict` said: the finding present or absent, or no
/// finding at all for a rejected input; the verdict, p-value and receipt;
/// the source instance; the patient and study of the source.
#[test]
#[ignore = "needs dciodvfy and highdicom; scripts/test.sh provides them"]
fn structured_reports_validate_and_read_back_in_highdicom() {
    let python = std::env::var_os("MEDGUARD_DICOM_PYTHON")
        .expect("MEDGUARD_DICOM_PYTHON must name a python with highdicom");
    let reports = tempfile::tempdir().unwrap();
    let inputs = [
        fixture("chest-rle.dcm"),
        fixture("same-pixels/normal-1.dcm"),
        fixture("same-pixels/pgd8-1.dcm"),
    ];
    let (out, _data) = predict_json(&inputs, &["--sr-dir", s(reports.path())]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let predictions = json_lines(&out);
    assert_eq!(predictions.len(), 3);
    for p in &predictions {
        let path = p["structured_report"].as_str().unwrap();
        let check = Command::new("dciodvfy").arg(path).output().unwrap();
        let report = format!("{}{}", text(&check.stdout), text(&check.stderr));
        assert!(report.contains("Comprehensive3DSR"), "{report}");
        let errors: Vec<&str> = report.lines().filter(|l| l.starts_with("Error")).collect();
        assert!(
            errors.is_empty(),
            "dciodvfy found errors in {path}:\n{report}"
        );
    }
    let paths: Vec<&str> = predictions
        .iter()
        .map(|p| p["structured_report"].as_str().unwrap())
        .collect();
    let read = Command::new(python)
        .arg(root().join("tests/dicom/read_sr.py"))
        .args(&paths)
        .output()
        .unwrap();
    assert!(read.status.success(), "{}", text(&read.stderr));
    let read: Vec<serde_json::Value> = text(&read.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    // make_fixtures.py numbers the instances: 1013 is the RLE chest.
    let source_uids =
        ["1013", "1001", "1003"].map(|n| format!("2.25.31415926535897932384626433832795.{n}"));
    for ((p, r), source) in predictions.iter().zip(&read).zip(source_uids) {
        assert_eq!(r["sop_class_uid"], "1.2.840.10008.5.1.4.1.1.88.34");
        assert_eq!(r["template"], "1500");
        assert_eq!(r["patient_id"], "MGPHI-7731");
        assert_eq!(r["patient_name"], "Testpatient^Jane^MGPHI");
        assert_eq!(r["accession_number"], "MGACC5521");
        assert_eq!(
            r["study_instance_uid"],
            "2.25.31415926535897932384626433832795.1"
        );
        assert_eq!(r["source_sop_instance_uid"], source.as_str());
        assert_eq!(r["evidence_sop_instance_uid"], source.as_str());
        assert_eq!(
            r["purpose_of_reference"],
            serde_json::json!(["1630", "99IHE", "Processing Algorithm"])
        );
        let verdict = p["verdict"].as_str().unwrap().to_uppercase();
        assert_eq!(r["evaluations"]["MG-VERDICT"][0], format!("MG-{verdict}"));
        let p_value = r["measurements"]["MG-P-VALUE"].as_f64().unwrap();
        assert!((p_value - p["p_value"].as_f64().unwrap()).abs() < 1e-9);
        let receipt: serde_json::Value =
            serde_json::from_str(r["texts"]["MG-RECEIPT"][0].as_str().unwrap()).unwrap();
        assert_eq!(receipt, p["receipt"]);
        assert_eq!(
            r["texts"]["MG-LEDGER-INDEX"][0],
            p["receipt"]["index"].to_string()
        );
        assert_eq!(r["texts"]["111001"][0], "pneumonia-cnn");
        match p["label"].as_str() {
            Some(label) => {
                assert_eq!(
                    r["finding"],
                    serde_json::json!(["233604007", "SCT", "Pneumonia"])
                );
                let present = if label == "pneumonia" {
                    "Present"
                } else {
                    "Absent"
                };
                assert_eq!(r["evaluations"]["233604007"][2], present);
                let probability = r["measurements"]["MG-PROBABILITY"].as_f64().unwrap();
                let expected = p["probabilities"]["pneumonia"].as_f64().unwrap();
                assert!((probability - expected).abs() < 1e-6);
            }
            None => {
                // Rejected: no finding, no label, no probability; says why.
                assert_eq!(p["verdict"], "reject");
                assert!(r["finding"].is_null(), "{r}");
                assert!(r["evaluations"].get("233604007").is_none(), "{r}");
                assert!(r["measurements"].get("MG-PROBABILITY").is_none(), "{r}");
                let comment = r["texts"]["121106"][0].as_str().unwrap();
                assert!(comment.contains("failed medguard's integrity screening"));
            }
        }
        // A flagged finding carries a caution in standard codes.
        let caution = r["texts"]["121106"]
            .as_array()
            .is_some_and(|c| c.iter().any(|t| t.as_str().unwrap().starts_with("Caution")));
        assert_eq!(caution, p["verdict"] == "flag", "{r}");
    }

    // Under flag-only the caller gets a rejected input's label, but the
    // report filed with the study never does.
    let flag_only = tempfile::tempdir().unwrap();
    let (out, _data) = predict_json(
        &[fixture("same-pixels/pgd8-1.dcm")],
        &["--policy", "flag-only", "--sr-dir", s(flag_only.path())],
    );
    let p = &json_lines(&out)[0];
    assert_eq!(p["verdict"], "reject");
    assert!(p["label"].is_string(), "flag-only returns the label: {p}");
    let path = p["structured_report"].as_str().unwrap();
    let read = Command::new(std::env::var_os("MEDGUARD_DICOM_PYTHON").unwrap())
        .arg(root().join("tests/dicom/read_sr.py"))
        .arg(path)
        .output()
        .unwrap();
    let r: serde_json::Value = serde_json::from_slice(&read.stdout).unwrap();
    assert!(r["finding"].is_null(), "{r}");
    assert!(r["evaluations"].get("233604007").is_none(), "{r}");
    assert!(r["measurements"].get("MG-PROBABILITY").is_none(), "{r}");
}

/// Every file of pydicom's own test data (many transfer syntaxes, many
/// deliberately broken) goes through `predict` in one run: each gets a
/// result or a one-line error, none makes the decoder panic, the run exits
/// 0 or 1. (One, SC_rgb_jpeg.dcm, makes dicom-rs ask for 1.2 GB; the
/// sandbox's memory cap stops it and the error says so.)
#[test]
#[ignore = "needs pydicom's test files; scripts/test.sh provides them"]
fn pydicoms_test_files_each_get_a_result_or_a_one_line_error() {
    let python = std::env::var_os("MEDGUARD_DICOM_PYTHON")
        .expect("MEDGUARD_DICOM_PYTHON must name a python with pydicom");
    let dir = Command::new(python)
        .args([
            "-c",
            "import os, pydicom; print(os.path.join(os.path.dirname(pydicom.__file__), 'data', 'test_files'))",
        ])
        .output()
        .unwrap();
    let dir = PathBuf::from(text(&dir.stdout).trim());
    let mut files: Vec<PathBuf> = walk(&dir);
    files.sort();
    assert!(
        files.len() >= 50,
        "{} files in {}",
        files.len(),
        dir.display()
    );
    let (out, _data) = predict_json(&files, &[]);
    let code = out.status.code();
    assert!(
        matches!(code, Some(0 | 1)),
        "exit {code:?}: {}",
        text(&out.stderr)
    );
    let lines = json_lines(&out);
    assert_eq!(lines.len(), files.len(), "one line per file");
    let mut classified = 0;
    for (file, line) in files.iter().zip(&lines) {
        assert_eq!(line["input"], file.display().to_string());
        match line["error"].as_str() {
            Some(error) => {
                assert!(!error.contains('\n'), "{error}");
                assert!(
                    !error.contains("contained") && !error.contains("deadline"),
                    "{}: {error}",
                    file.display()
                );
            }
            None => classified += 1,
        }
    }
    eprintln!(
        "{} of pydicom's {} test files classified, the rest refused",
        classified,
        files.len()
    );
}

pub(crate) fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

pub(crate) fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else if path.is_file() {
            out.push(path);
        }
    }
    out
}
