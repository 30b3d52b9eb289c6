//! `medguard pacs` against a real Orthanc with its DICOMweb plugin (the
//! Debian packages `orthanc` and `orthanc-dicomweb`, which
//! scripts/system-packages.sh installs): started on 127.0.0.1 with a
//! throwaway configuration, fed by STOW-RS, read back by QIDO-RS and
//! WADO-RS metadata, stopped.
//! (tests/src/orthanc.rs).

use std::path::{Path, PathBuf};

use serde_json::Value;

use super::dicom::{PHI, contains, fixture, walk};
use super::orthanc::{Orthanc, free_port};
use super::{json_lines, medguard_command, model_dir, s, text};

/// The first value of `tag` in a DICOM JSON dataset.
fn value(dataset: &Value, tag: &str) -> String {
    dataset[tag]["Value"][0]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

/// `medguard pacs ... --once --json` on `data` (a data directory kept across runs).
fn pacs_once(model: &Path, orthanc: &Orthanc, data: &Path) -> std::process::Output {
    let base = orthanc.base();
    let args = [
        "pacs",
        s(model),
        "--dicomweb",
        &base,
        "--once",
        "--json",
        "--seed",
        "7",
    ];
    let (mut cmd, _env) = medguard_command(&args);
    cmd.env("MEDGUARD_DATA_DIR", data).output().unwrap()
}

/// A study goes into Orthanc by STOW-RS; a model the policy refuses puts
/// nothing into the archive; the admitted model files one SR per radiograph
/// it accepts, found by QIDO-RS, each referencing its source instance and
/// carrying the verdict (and, for a rejected image, no finding); a second
/// poll files nothing twice; the data directory holds no patient data.
#[test]
#[ignore = "needs Orthanc and its DICOMweb plugin: MEDGUARD_ORTHANC (scripts/test.sh installs and sets it)"]
fn a_study_in_orthanc_gets_its_reports_back_and_a_refused_model_adds_nothing() {
    let orthanc = Orthanc::start();
    let sources: [(&str, Option<&str>); 4] = [
        ("same-pixels/pneumonia-1.dcm", Some("MG-ACCEPT")),
        ("same-pixels/pgd8-1.dcm", Some("MG-REJECT")),
        // A lateral view: the profile refuses it, so no report.
        ("refused-lateral.dcm", None),
        // An MR is never even searched for: the profile accepts DX and CR.
        ("refused-mr.dcm", None),
    ];
    let mut uids = Vec::new();
    for (name, _) in &sources {
        let bytes = std::fs::read(fixture(name)).unwrap();
        orthanc.store(&bytes);
        uids.push(sop_instance_uid(&fixture(name)));
    }
    let before = orthanc.instances("DX").len() + orthanc.instances("MR").len();
    assert_eq!(before, 4, "the study is in the archive");

    // 1. A tampered model is refused before the archive is touched.
    let tmp = tempfile::tempdir().unwrap();
    let tampered = tmp.path().join("tampered");
    copy_dir(&model_dir(), &tampered);
    let mut weights = std::fs::read(tampered.join("model.onnx")).unwrap();
    let last = weights.len() - 1;
    weights[last] ^= 1;
    std::fs::write(tampered.join("model.onnx"), &weights).unwrap();
    let refused_data = tmp.path().join("refused-data");
    let out = pacs_once(&tampered, &orthanc, &refused_data);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("refused"),
        "{}",
        text(&out.stderr)
    );
    assert!(out.stdout.is_empty());
    assert!(
        orthanc.instances("SR").is_empty(),
        "no report from a refused model"
    );

    // 2. The admitted model: one report per accepted radiograph.
    let data = tmp.path().join("data");
    let out = pacs_once(&model_dir(), &orthanc, &data);
    // Exit 1: one image was rejected and one refused.
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let events = json_lines(&out);
    assert_eq!(events.len(), 3, "{events:?}");
    let reported: Vec<&Value> = events
        .iter()
        .filter(|e| e["outcome"] == "reported")
        .collect();
    assert_eq!(reported.len(), 2, "{events:?}");
    let refused: Vec<&Value> = events
        .iter()
        .filter(|e| e["outcome"] == "refused")
        .collect();
    assert_eq!(refused.len(), 1, "{events:?}");
    assert!(
        refused[0]["error"]
            .as_str()
            .unwrap()
            .contains("View Position")
    );
    for e in &events {
        for uid in &uids {
            assert!(
                !e.to_string().contains(uid.as_str()),
                "a UID in the output: {e}"
            );
        }
    }

    let reports = orthanc.instances("SR");
    assert_eq!(reports.len(), 2);
    for (name, verdict) in &sources {
        let Some(verdict) = verdict else { continue };
        let source = uids[sources.iter().position(|(n, _)| n == name).unwrap()].clone();
        // The report that references this source instance ...
        let found: Vec<Value> = reports
            .iter()
            .map(|r| {
                orthanc.get_json(&format!(
                    "/dicom-web/studies/{}/series/{}/instances/{}/metadata",
                    value(r, "0020000D"),
                    value(r, "0020000E"),
                    value(r, "00080018")
                ))[0]
                    .clone()
            })
            .filter(|m| m.to_string().contains(&format!("\"{source}\"")))
            .collect();
        assert_eq!(found.len(), 1, "one report references {name}");
        let report = found[0].to_string();
        // ... is filed with its study and says the verdict ...
        assert_eq!(
            value(&found[0], "0020000D"),
            sop_study_uid(&fixture(name)),
            "{name}'s report is in its study"
        );
        assert!(report.contains(verdict), "{name}: {verdict} in the report");
        let finding = ["52101004", "2667000"]; // SNOMED present, absent
        if *verdict == "MG-REJECT" {
            // ... and a rejected image's report carries no finding.
            assert!(!finding.iter().any(|c| report.contains(c)), "{report}");
            assert!(!report.contains("MG-PROBABILITY"));
        } else {
            assert!(report.contains("52101004"), "pneumonia present: {report}");
        }
        // The event named that report.
        let uid = value(&found[0], "00080018");
        assert!(reported.iter().any(|e| e["report"] == uid.as_str()));
    }

    // 3. A second poll files nothing twice.
    let out = pacs_once(&model_dir(), &orthanc, &data);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(json_lines(&out).is_empty());
    assert_eq!(orthanc.instances("SR").len(), 2);

    // 4. No patient data in the data directory, the bridge's record included.
    let files = walk(&data);
    assert!(files.iter().any(|f| f.ends_with("pacs-seen")));
    for file in files {
        let bytes = std::fs::read(&file).unwrap();
        for phi in PHI.iter().copied().chain(uids.iter().map(String::as_str)) {
            assert!(
                !contains(&bytes, phi.as_bytes()),
                "{phi:?} in {}",
                file.display()
            );
        }
    }
}

/// An archive that cannot be reached is a one-line error (exit 2), and
/// nothing is marked handled.
#[test]
fn an_unreachable_archive_is_a_one_line_error() {
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}/dicom-web");
    let data = tempfile::tempdir().unwrap();
    let model = model_dir();
    let (mut cmd, _env) = medguard_command(&["pacs", s(&model), "--dicomweb", &base, "--once"]);
    let out = cmd.env("MEDGUARD_DATA_DIR", data.path()).output().unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    let err = text(&out.stderr);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(
        err.contains("QIDO-RS search") && err.contains("could not be reached"),
        "{err}"
    );
    let seen = std::fs::read(data.path().join("pacs-seen")).unwrap_or_default();
    assert!(seen.is_empty());
}

/// A base URL that is not http(s) is refused before anything runs.
#[test]
fn a_base_url_that_is_not_http_is_refused() {
    let model = model_dir();
    for base in [
        "ftp://pacs/dicom-web",
        "not a url",
        "http://pacs/dicom-web?x=1",
        "http://pacs/dicom-web#studies",
        "http://user:secret@pacs/dicom-web",
    ] {
        let (mut cmd, _env) = medguard_command(&["pacs", s(&model), "--dicomweb", base, "--once"]);
        let out = cmd.output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{base}");
        assert!(!text(&out.stderr).contains("secret"), "credentials echoed");
        assert!(
            text(&out.stderr).contains("is not a DICOMweb base URL"),
            "{}",
            text(&out.stderr)
        );
    }
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() {
            std::fs::copy(&path, to.join(path.file_name().unwrap())).unwrap();
        }
    }
}

fn sop_instance_uid(path: &PathBuf) -> String {
    attribute(path, "SOPInstanceUID")
}

fn sop_study_uid(path: &PathBuf) -> String {
    attribute(path, "StudyInstanceUID")
}

/// An attribute of a fixture, read with dicom-rs (test-side only).
fn attribute(path: &PathBuf, name: &str) -> String {
    let object = dicom_object::open_file(path).unwrap();
    object
        .element_by_name(name)
        .unwrap()
        .to_str()
        .unwrap()
        .trim_end_matches('\0')
        .trim()
        .to_owned()
}

/// A bearer token never crosses the network in clear text: over http it is
/// sent only to this machine.
#[test]
fn a_token_is_not_sent_over_plain_http() {
    let model = model_dir();
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "s3cret\n").unwrap();
    let (mut cmd, _env) = medguard_command(&[
        "pacs",
        s(&model),
        "--dicomweb",
        "http://pacs.example/dicom-web",
        "--token-file",
        s(&token),
        "--once",
    ]);
    let out = cmd.output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = text(&out.stderr);
    assert!(
        err.contains("only over https") && !err.contains("s3cret"),
        "{err}"
    );
}
