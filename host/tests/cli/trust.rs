//! The trust policy against one named attack per test, after TUF's threat
//! model. Every refusal must come before any model byte reaches the guest:
//! each case runs `predict` with `--guest` pointing at a file that does not
//! exist, so a model that got past admission would fail on the guest (exit 2)
//! instead of being refused (exit 1). The control case shows that ordering.

use std::path::{Path, PathBuf};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;

use crate::{assert_one_line_error, medguard, model_dir, root, s, sign, signed_copy, text};

fn demo_public_key() -> PathBuf {
    root().join("models/trust/demo.pub.pem")
}

fn test_key(curve: &str) -> PathBuf {
    root().join(format!("tests/fixtures/signing/{curve}.key.pem"))
}

/// Runs `predict` on `dir` with a guest that does not exist and `extra`
/// arguments; returns stderr after checking for a one-line refusal (exit 1).
fn refused_before_the_guest(dir: &Path, extra: &[&str]) -> String {
    let missing_guest = dir.with_file_name("no-such-guest.wasm");
    let sample = model_dir().join("samples/normal-1.png");
    let mut args = vec!["predict", "--guest", s(&missing_guest)];
    args.extend_from_slice(extra);
    args.extend([s(dir), s(&sample)]);
    let out = medguard(&args);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert_one_line_error(&out);
    assert!(err.starts_with("medguard: refused: "), "{err}");
    assert!(!err.contains("no-such-guest"), "reached the guest: {err}");
    assert!(out.stdout.is_empty());
    err
}

/// A policy in `dir` with the demo key plus `extra` TOML appended.
fn policy(dir: &Path, top: &str, models: &str) -> PathBuf {
    let path = dir.join("policy.toml");
    std::fs::write(
        &path,
        format!(
            "schema = \"medguard.policy/v1\"\n{top}\n\n[[keys]]\nname = \"medguard-demo\"\npublic_key_file = \"{}\"\n\n[[keys]]\nname = \"test-p384\"\npublic_key_file = \"{}\"\n\n{models}\n",
            s(&demo_public_key()),
            s(&root().join("tests/fixtures/signing/p384.pub.pem")),
        ),
    )
    .unwrap();
    path
}

fn set_version(version: &str) -> impl FnOnce(&mut serde_json::Value) {
    move |m| m["version"] = version.into()
}

#[test]
fn control_an_admitted_model_goes_on_to_the_guest() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = signed_copy(tmp.path(), None, |_| {});
    let missing_guest = tmp.path().join("no-such-guest.wasm");
    let sample = model_dir().join("samples/normal-1.png");
    let out = medguard(&["predict", "--guest", s(&missing_guest), s(&dir), s(&sample)]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("no-such-guest"));
}

#[test]
fn no_trust_policy_means_refuse() {
    let (mut cmd, _data) = crate::medguard_command(&["verify", s(&model_dir())]);
    let out = cmd.env_remove("MEDGUARD_TRUST_POLICY").output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("no trust policy"));
}

#[test]
fn arbitrary_model_unsigned() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = signed_copy(tmp.path(), None, |_| {});
    std::fs::remove_file(dir.join("model.sig")).unwrap();
    let err = refused_before_the_guest(&dir, &[]);
    assert!(err.contains("has no signature (model.sig)"), "{err}");
}

#[test]
fn arbitrary_model_signed_by_an_unknown_key() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = signed_copy(tmp.path(), Some(&test_key("p256")), |_| {});
    let err = refused_before_the_guest(&dir, &[]);
    assert!(err.contains("rule `keys`"), "{err}");
}

#[test]
fn mix_and_match_manifest_of_one_model_with_bytes_of_another() {
    // Two models, both properly signed by the trusted key: 1.0.0 and 1.1.0
    // with other weights. The attacker serves 1.1.0's manifest and
    // signature with 1.0.0's bytes.
    let tmp = tempfile::tempdir().unwrap();
    let old = signed_copy(&tmp.path().join("a"), None, |_| {});
    let new_dir = tmp.path().join("b");
    let new = signed_copy(&new_dir, None, set_version("1.1.0"));
    let mut weights = std::fs::read(new.join("model.onnx")).unwrap();
    let last = weights.len() - 1;
    weights[last] ^= 1;
    std::fs::write(new.join("model.onnx"), &weights).unwrap();
    let manifest = std::fs::read_to_string(new.join("manifest.json")).unwrap();
    let mut m: serde_json::Value = serde_json::from_str(&manifest).unwrap();
    m["model"]["sha256"] = hex::encode(sha2_digest(&weights)).into();
    std::fs::write(
        new.join("manifest.json"),
        serde_json::to_vec_pretty(&m).unwrap(),
    )
    .unwrap();
    sign(&new, None);
    std::fs::copy(old.join("model.onnx"), new.join("model.onnx")).unwrap();
    let err = refused_before_the_guest(&new, &[]);
    assert!(err.contains("hash mismatch for model.onnx"), "{err}");
}

fn sha2_digest(bytes: &[u8]) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(bytes).into()
}

#[test]
fn rollback_to_an_older_signed_version_after_a_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let newer = signed_copy(&tmp.path().join("new"), None, set_version("1.2.0"));
    let older = signed_copy(&tmp.path().join("old"), None, set_version("1.1.0"));
    // Each process is a restart; only the ledger in the data directory carries the mark.
    let out = medguard(&["verify", "--data-dir", s(&data), s(&newer)]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    // The older version on its own is fine for a deployment that never saw 1.2.0.
    assert_eq!(medguard(&["verify", s(&older)]).status.code(), Some(0));
    let err = refused_before_the_guest(&older, &["--data-dir", s(&data)]);
    assert!(
        err.contains("rollback: pneumonia-cnn 1.1.0 is older than 1.2.0"),
        "{err}"
    );
    // The mark lives in the ledger: the admission of 1.2.0, then the refusal.
    let out = medguard(&["ledger", "show", "--data-dir", s(&data)]);
    let shown = text(&out.stdout);
    assert!(
        shown.contains("admitted pneumonia-cnn 1.2.0")
            && shown.contains("refused pneumonia: rollback"),
        "{shown}"
    );
}

#[test]
fn rollback_below_the_policy_minimum() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = signed_copy(tmp.path(), None, set_version("0.9.0"));
    let err = refused_before_the_guest(&dir, &[]);
    assert!(err.contains("rule `models.min_version`"), "{err}");
}

#[test]
fn same_version_with_other_content() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let first = signed_copy(&tmp.path().join("a"), None, |_| {});
    let out = medguard(&["verify", "--data-dir", s(&data), s(&first)]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let second = signed_copy(&tmp.path().join("b"), None, |m| {
        m["max_batch"] = 1.into();
    });
    let err = refused_before_the_guest(&second, &["--data-dir", s(&data)]);
    assert!(
        err.contains("already accepted with another manifest"),
        "{err}"
    );
}

#[test]
fn freeze_an_expired_manifest() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = signed_copy(tmp.path(), None, |m| {
        m["expires"] = "2026-01-01T00:00:00Z".into();
    });
    let err = refused_before_the_guest(&dir, &[]);
    assert!(
        err.contains("expiry: the manifest of pneumonia-cnn 1.0.0 expired at 2026-01-01T00:00:00Z"),
        "{err}"
    );
}

#[test]
fn freeze_a_manifest_that_never_expires() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = signed_copy(tmp.path(), None, |m| {
        m.as_object_mut().unwrap().remove("expires");
    });
    let err = refused_before_the_guest(&dir, &[]);
    assert!(err.contains("rule `require_expiry`"), "{err}");
}

#[test]
fn revoked_key() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = signed_copy(tmp.path(), None, |_| {});
    let pem = std::fs::read(demo_public_key()).unwrap();
    let fingerprint = hex::encode(sha2_digest(&pem));
    let policy = policy(
        tmp.path(),
        &format!("revoked_keys = [\"{fingerprint}\"]"),
        "[[models]]\nname = \"pneumonia-cnn\"\nsigners = [\"medguard-demo\"]",
    );
    let err = refused_before_the_guest(&dir, &["--trust-policy", s(&policy)]);
    assert!(
        err.contains(&format!(
            "rule `revoked_keys`: key medguard-demo ({fingerprint}) is revoked"
        )),
        "{err}"
    );
}

#[test]
fn right_key_but_wrong_model_name() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = signed_copy(tmp.path(), None, |m| {
        m["name"] = "chest-ct-triage".into();
    });
    let err = refused_before_the_guest(&dir, &[]);
    assert!(
        err.contains("rule `models`: the trust policy has no entry for model \"chest-ct-triage\""),
        "{err}"
    );
}

#[test]
fn trusted_key_but_not_for_this_model() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = signed_copy(tmp.path(), Some(&test_key("p384")), |_| {});
    let policy = policy(
        tmp.path(),
        "",
        "[[models]]\nname = \"pneumonia-cnn\"\nsigners = [\"medguard-demo\"]\n\n[[models]]\nname = \"chest-ct-triage\"\nsigners = [\"test-p384\"]",
    );
    let err = refused_before_the_guest(&dir, &["--trust-policy", s(&policy)]);
    assert!(
        err.contains("rule `models.signers`: key \"test-p384\" may not sign model \"pneumonia-cnn\" (allowed: medguard-demo)"),
        "{err}"
    );
}

/// Replaces the DSSE payload of `dir/model.sig` with `payload`, keeping the
/// signature over the original.
fn swap_payload(dir: &Path, payload: &[u8]) {
    let path = dir.join("model.sig");
    let mut bundle: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    bundle["dsseEnvelope"]["payload"] = BASE64.encode(payload).into();
    std::fs::write(&path, serde_json::to_vec(&bundle).unwrap()).unwrap();
}

#[test]
fn signature_over_a_different_payload() {
    // Another directory's signed statement, pasted under this signature.
    let tmp = tempfile::tempdir().unwrap();
    let dir = signed_copy(&tmp.path().join("a"), None, |_| {});
    let other = signed_copy(&tmp.path().join("b"), None, set_version("1.3.0"));
    let bundle: serde_json::Value =
        serde_json::from_slice(&std::fs::read(other.join("model.sig")).unwrap()).unwrap();
    let payload = BASE64
        .decode(bundle["dsseEnvelope"]["payload"].as_str().unwrap())
        .unwrap();
    swap_payload(&dir, &payload);
    let err = refused_before_the_guest(&dir, &[]);
    assert!(err.contains("signature does not verify"), "{err}");
}

#[test]
fn an_extra_file_in_the_model_directory() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = signed_copy(tmp.path(), None, |_| {});
    std::fs::write(dir.join("samples/backdoor.onnx"), b"x").unwrap();
    let err = refused_before_the_guest(&dir, &[]);
    assert!(
        err.contains("file samples/backdoor.onnx is not covered by the signature"),
        "{err}"
    );
}

#[test]
fn a_missing_file_in_the_model_directory() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = signed_copy(tmp.path(), None, |_| {});
    std::fs::remove_file(dir.join("samples/normal-1.png")).unwrap();
    let err = refused_before_the_guest(&dir, &[]);
    assert!(
        err.contains("signed file samples/normal-1.png is missing"),
        "{err}"
    );
}

#[test]
fn endless_data_in_place_of_signed_files() {
    // Sparse terabyte files: reading either to the end would take hours.
    let tmp = tempfile::tempdir().unwrap();
    let dir = signed_copy(tmp.path(), None, |_| {});
    let endless = |path: &Path| {
        std::fs::File::create(path)
            .unwrap()
            .set_len(1 << 40)
            .unwrap();
    };
    // The model: read only up to one byte past its declared size.
    endless(&dir.join("model.onnx"));
    let err = refused_before_the_guest(&dir, &[]);
    assert!(err.contains("model.onnx is larger than the"), "{err}");
    // An unsigned extra file: refused by name, never opened.
    std::fs::copy(model_dir().join("model.onnx"), dir.join("model.onnx")).unwrap();
    endless(&dir.join("padding.bin"));
    let err = refused_before_the_guest(&dir, &[]);
    assert!(err.contains("padding.bin is not covered"), "{err}");
    std::fs::remove_file(dir.join("padding.bin")).unwrap();
    // A signed data file: read up to the per-file cap, then refused.
    endless(&dir.join("samples/normal-1.png"));
    let err = refused_before_the_guest(&dir, &[]);
    assert!(err.contains("normal-1.png is larger than the"), "{err}");
}

#[test]
fn a_special_file_in_the_model_directory() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = signed_copy(tmp.path(), None, |_| {});
    let status = std::process::Command::new("mkfifo")
        .arg(dir.join("samples/pipe"))
        .status()
        .unwrap();
    assert!(status.success());
    let err = refused_before_the_guest(&dir, &[]);
    assert!(err.contains("is not a regular file"), "{err}");
}

#[test]
fn a_bundle_with_two_signatures() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = signed_copy(tmp.path(), None, |_| {});
    let path = dir.join("model.sig");
    let mut bundle: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    let sig = bundle["dsseEnvelope"]["signatures"][0].clone();
    bundle["dsseEnvelope"]["signatures"] = serde_json::json!([sig.clone(), sig]);
    std::fs::write(&path, serde_json::to_vec(&bundle).unwrap()).unwrap();
    let err = refused_before_the_guest(&dir, &[]);
    assert!(
        err.contains("2 signatures; exactly one is accepted"),
        "{err}"
    );
}

#[test]
fn malformed_json_and_base64() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = signed_copy(tmp.path(), None, |_| {});
    let path = dir.join("model.sig");
    let good = std::fs::read(&path).unwrap();

    std::fs::write(&path, &good[..good.len() / 2]).unwrap();
    let err = refused_before_the_guest(&dir, &[]);
    assert!(
        err.contains("signature bundle is malformed: not a bundle"),
        "{err}"
    );

    let mut bundle: serde_json::Value = serde_json::from_slice(&good).unwrap();
    bundle["dsseEnvelope"]["payload"] = "not*base64!".into();
    std::fs::write(&path, serde_json::to_vec(&bundle).unwrap()).unwrap();
    let err = refused_before_the_guest(&dir, &[]);
    assert!(err.contains("payload is not base64"), "{err}");

    let mut bundle: serde_json::Value = serde_json::from_slice(&good).unwrap();
    bundle["dsseEnvelope"]["signatures"][0]["sig"] = "%%%".into();
    std::fs::write(&path, serde_json::to_vec(&bundle).unwrap()).unwrap();
    let err = refused_before_the_guest(&dir, &[]);
    assert!(err.contains("signature is not base64"), "{err}");

    // A manifest that is not JSON, under a valid signature over it.
    std::fs::write(&path, &good).unwrap();
    std::fs::write(dir.join("manifest.json"), b"{ \"schema\": ").unwrap();
    sign(&dir, None);
    let err = refused_before_the_guest(&dir, &[]);
    assert!(err.contains("signed manifest:"), "{err}");
}

#[test]
fn a_broken_policy_is_an_error_not_an_open_door() {
    let tmp = tempfile::tempdir().unwrap();
    let bad = tmp.path().join("policy.toml");
    for (text_, why) in [
        (
            "schema = \"medguard.policy/v1\"\n[[models]]\nname = \"x\"\nsigners = [\"ghost\"]\n",
            "no [[keys]] entry defines",
        ),
        ("schema = \"medguard.policy/v2\"\n", "schema"),
        ("schema = ", "not valid TOML"),
        (
            "schema = \"medguard.policy/v1\"\nallow_everything = true\n",
            "unknown field",
        ),
    ] {
        std::fs::write(&bad, text_).unwrap();
        let out = medguard(&["verify", "--trust-policy", s(&bad), s(&model_dir())]);
        assert_eq!(out.status.code(), Some(2), "{text_}");
        assert_one_line_error(&out);
        assert!(text(&out.stderr).contains(why), "{}", text(&out.stderr));
    }
}
