//! `medguard sign` and `medguard verify --key`: OpenSSF model-signing bundles,
//! with the real tool's fixtures (tests/fixtures/signing) for the other direction.

use std::path::{Path, PathBuf};

use crate::{medguard, model_dir, root, s, text};

fn fixtures() -> PathBuf {
    root().join("tests/fixtures/signing")
}

/// A copy of the bundled model's manifest and weights, signed by `medguard sign`.
fn signed_copy(dir: &Path) -> PathBuf {
    let model = dir.join("pneumonia");
    std::fs::create_dir(&model).unwrap();
    for f in ["manifest.json", "model.onnx"] {
        std::fs::copy(model_dir().join(f), model.join(f)).unwrap();
    }
    let out = medguard(&[
        "sign",
        s(&model),
        "--key",
        s(&fixtures().join("p256.key.pem")),
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(model.join("model.sig").is_file());
    model
}

fn verify(dir: &Path, key: &str) -> std::process::Output {
    medguard(&["verify", s(dir), "--key", s(&fixtures().join(key))])
}

#[test]
fn a_directory_signed_by_medguard_verifies_and_attests() {
    let tmp = tempfile::tempdir().unwrap();
    let model = signed_copy(tmp.path());
    let out = verify(&model, "p256.pub.pem");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains("signature: 2 files signed by key")
            && stdout.contains("accepted: pneumonia-cnn"),
        "{stdout}"
    );
}

#[test]
fn the_manifest_is_covered_so_its_thresholds_cannot_be_edited() {
    let tmp = tempfile::tempdir().unwrap();
    let model = signed_copy(tmp.path());
    let manifest = model.join("manifest.json");
    let edited = std::fs::read_to_string(&manifest).unwrap().replacen(
        "\"reject\": 0.",
        "\"reject\": 0.0",
        1,
    );
    std::fs::write(&manifest, edited).unwrap();
    let out = verify(&model, "p256.pub.pem");
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("hash mismatch for manifest.json"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn extra_missing_and_foreign_key_are_refused_with_the_reason() {
    let tmp = tempfile::tempdir().unwrap();
    let model = signed_copy(tmp.path());
    let out = verify(&model, "p384.pub.pem");
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("another key"),
        "{}",
        text(&out.stderr)
    );

    std::fs::write(model.join("backdoor.onnx"), b"x").unwrap();
    let out = verify(&model, "p256.pub.pem");
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("backdoor.onnx is not covered"),
        "{}",
        text(&out.stderr)
    );
    std::fs::remove_file(model.join("backdoor.onnx")).unwrap();

    std::fs::remove_file(model.join("model.sig")).unwrap();
    let out = verify(&model, "p256.pub.pem");
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("model.sig"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn bundles_written_by_the_real_model_signing_tool_verify() {
    for curve in ["p256", "p384"] {
        let dir = fixtures().join(format!("model-{curve}"));
        let out = verify(&dir, &format!("{curve}.pub.pem"));
        // The fixture is not a medguard model, so attestation then refuses
        // it; the signature line comes first.
        assert!(
            text(&out.stdout).contains("signature: 3 files signed by key"),
            "{curve}: {}",
            text(&out.stderr)
        );
        assert_eq!(out.status.code(), Some(1));
        assert!(text(&out.stderr).contains("manifest is not valid"));
    }
}
