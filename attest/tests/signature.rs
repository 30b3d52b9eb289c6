//! Model-signing bundles written by the real OpenSSF `model_signing` 1.1.1
//! (tests/fixtures/signing/make_fixtures.sh), verified in pure Rust, and one
//! named case per way a bundle or a directory can be wrong.

#![allow(clippy::unwrap_used)] // Tests fail loudly by design.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use medguard_attest::{
    CheckedBundle, PrivateKeyError, Sha256Digest, SignatureError, SigningKey, VerifyingKey, sign,
    verify,
};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/signing")
}

fn key(curve: &str) -> VerifyingKey {
    let pem = std::fs::read_to_string(fixtures().join(format!("{curve}.pub.pem"))).unwrap();
    VerifyingKey::from_pem(&pem).unwrap()
}

fn bundle_json(curve: &str) -> serde_json::Value {
    let bytes = std::fs::read(fixtures().join(format!("model-{curve}/model.sig"))).unwrap();
    serde_json::from_slice(&bytes).unwrap()
}

fn check(v: &serde_json::Value) -> Result<CheckedBundle, SignatureError> {
    CheckedBundle::parse(&serde_json::to_vec(v).unwrap())
}

/// Every file of a fixture directory but the signature, with its digest.
fn files_on_disk(curve: &str) -> BTreeMap<String, Sha256Digest> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, Sha256Digest>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(root, &path, out);
            } else if path.file_name().unwrap() != "model.sig" {
                let rel = path
                    .strip_prefix(root)
                    .unwrap()
                    .to_str()
                    .unwrap()
                    .replace('\\', "/");
                out.insert(rel, Sha256Digest::of(&std::fs::read(&path).unwrap()));
            }
        }
    }
    let root = fixtures().join(format!("model-{curve}"));
    let mut out = BTreeMap::new();
    walk(&root, &root, &mut out);
    out
}

#[test]
fn bundles_from_the_real_tool_verify_on_both_curves() {
    for curve in ["p256", "p384"] {
        let bundle = check(&bundle_json(curve)).unwrap();
        let signed = verify(&bundle, &key(curve)).unwrap();
        assert_eq!(signed.name(), format!("model-{curve}"));
        assert_eq!(
            signed.files().keys().collect::<Vec<_>>(),
            ["manifest.json", "model.onnx", "weights/extra.bin"]
        );
        assert!(signed.ignored().contains(&"model.sig".to_owned()));
        signed.check_files(&files_on_disk(curve)).unwrap();
        // Our fingerprint is the tool's key hint.
        let hint = bundle_json(curve)["verificationMaterial"]["publicKey"]["hint"].clone();
        assert_eq!(hint, key(curve).fingerprint().to_string());
    }
}

#[test]
fn unknown_key_is_refused_by_hint_and_by_signature() {
    let bundle = check(&bundle_json("p256")).unwrap();
    assert!(matches!(
        verify(&bundle, &key("p384")),
        Err(SignatureError::KeyMismatch { .. })
    ));
    let mut v = bundle_json("p256");
    v["verificationMaterial"]["publicKey"]["hint"] = "".into();
    let other_p256 = {
        // A second P-256 key: the p384 fixture's bundle cannot help here, so
        // derive one from a fixed scalar.
        let secret = p256::SecretKey::from_slice(&[7u8; 32]).unwrap();
        VerifyingKey::P256(p256::ecdsa::VerifyingKey::from(
            &p256::ecdsa::SigningKey::from(secret),
        ))
    };
    assert_eq!(
        verify(&check(&v).unwrap(), &other_p256),
        Err(SignatureError::BadSignature)
    );
}

#[test]
fn a_signature_over_a_different_payload_is_refused() {
    let mut v = bundle_json("p256");
    let payload = BASE64
        .decode(v["dsseEnvelope"]["payload"].as_str().unwrap())
        .unwrap();
    let mut statement: serde_json::Value = serde_json::from_slice(&payload).unwrap();
    statement["predicate"]["resources"][1]["digest"] = "00".repeat(32).into();
    v["dsseEnvelope"]["payload"] = BASE64
        .encode(serde_json::to_vec(&statement).unwrap())
        .into();
    assert_eq!(
        verify(&check(&v).unwrap(), &key("p256")),
        Err(SignatureError::BadSignature)
    );
    // Re-serialising the same statement changes the bytes, so it fails too:
    // the signature covers the exact payload bytes.
    let mut v = bundle_json("p256");
    let same: serde_json::Value = serde_json::from_slice(&payload).unwrap();
    v["dsseEnvelope"]["payload"] = BASE64.encode(serde_json::to_vec(&same).unwrap()).into();
    assert_eq!(
        verify(&check(&v).unwrap(), &key("p256")),
        Err(SignatureError::BadSignature)
    );
}

#[test]
fn structure_is_checked_before_crypto() {
    let two = {
        let mut v = bundle_json("p256");
        let sig = v["dsseEnvelope"]["signatures"][0].clone();
        v["dsseEnvelope"]["signatures"]
            .as_array_mut()
            .unwrap()
            .push(sig);
        v
    };
    let keyless = {
        let mut v = bundle_json("p256");
        v["verificationMaterial"]["certificate"] = serde_json::json!({"rawBytes": "AAAA"});
        v
    };
    type Case = (&'static str, serde_json::Value, fn(&SignatureError) -> bool);
    let cases: [Case; 5] = [
        (
            "two signatures",
            two,
            |e| matches!(e, SignatureError::Malformed(m) if m.contains("2 signatures")),
        ),
        (
            "keyless bundle",
            keyless,
            |e| matches!(e, SignatureError::Unsupported(m) if m.contains("keyless")),
        ),
        (
            "bad base64",
            {
                let mut v = bundle_json("p256");
                v["dsseEnvelope"]["payload"] = "not base64!".into();
                v
            },
            |e| matches!(e, SignatureError::Malformed(m) if m.contains("base64")),
        ),
        (
            "other media type",
            {
                let mut v = bundle_json("p256");
                v["mediaType"] = "application/vnd.dev.sigstore.bundle+json;version=0.1".into();
                v
            },
            |e| matches!(e, SignatureError::Unsupported(_)),
        ),
        (
            "unknown field",
            {
                let mut v = bundle_json("p256");
                v["extra"] = 1.into();
                v
            },
            |e| matches!(e, SignatureError::Malformed(_)),
        ),
    ];
    for (name, v, expected) in cases {
        let err = check(&v).unwrap_err();
        assert!(expected(&err), "{name}: {err}");
    }
    assert!(matches!(
        CheckedBundle::parse(b"{not json"),
        Err(SignatureError::Malformed(_))
    ));
    assert!(matches!(
        VerifyingKey::from_pem("-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n"),
        Err(SignatureError::Key(_))
    ));
}

#[test]
fn every_extra_missing_and_changed_file_is_named() {
    let signed = verify(&check(&bundle_json("p256")).unwrap(), &key("p256")).unwrap();
    let mut disk = files_on_disk("p256");
    disk.remove("weights/extra.bin");
    disk.insert("model.onnx".into(), Sha256Digest::of(b"swapped"));
    disk.insert("backdoor.onnx".into(), Sha256Digest::of(b"x"));
    let err = signed.check_files(&disk).unwrap_err();
    assert_eq!(err.missing, ["weights/extra.bin"]);
    assert_eq!(err.extra, ["backdoor.onnx"]);
    assert_eq!(err.changed.len(), 1);
    let text = err.to_string();
    assert!(
        text.contains("hash mismatch for model.onnx: expected "),
        "{text}"
    );
    assert!(
        text.contains("weights/extra.bin is missing")
            && text.contains("backdoor.onnx is not covered")
    );
}

#[test]
fn our_bundles_verify_and_carry_the_same_file_list() {
    for curve in ["p256", "p384"] {
        let pem = std::fs::read_to_string(fixtures().join(format!("{curve}.key.pem"))).unwrap();
        let key = SigningKey::from_pem(&pem).unwrap();
        assert_eq!(key.verifying_key(), self::key(curve));
        let files = files_on_disk(curve);
        let bundle = sign(&format!("model-{curve}"), &files, &key);
        let signed = verify(&CheckedBundle::parse(&bundle).unwrap(), &self::key(curve)).unwrap();
        assert_eq!(signed.files(), &files);
        // Same statement content as the real tool's, key for key.
        let theirs = verify(&check(&bundle_json(curve)).unwrap(), &self::key(curve)).unwrap();
        assert_eq!(signed, theirs);
    }
    assert!(SigningKey::from_pem("not a key").is_err());
}

/// Private keys as the openssl command line writes them
/// (attest/tests/fixtures/keys/make_keys.sh). Throwaway test keys: they sign
/// nothing but these tests.
fn private_key(file: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/keys");
    std::fs::read_to_string(path.join(file)).unwrap()
}

fn refused(pem: &str) -> PrivateKeyError {
    match SigningKey::from_pem(pem) {
        Ok(_) => panic!("accepted {pem:?}"),
        Err(e) => e,
    }
}

#[test]
fn sec1_keys_from_openssl_ecparam_sign_on_both_curves() {
    for curve in ["p256", "p384"] {
        let key = SigningKey::from_pem(&private_key(&format!("{curve}.sec1.pem"))).unwrap();
        assert_eq!(
            matches!(key, SigningKey::P256(_)),
            curve == "p256",
            "{curve}"
        );
        let public = VerifyingKey::from_pem(&private_key(&format!("{curve}.pub.pem"))).unwrap();
        assert_eq!(key.verifying_key(), public, "{curve}");
        let files = files_on_disk(curve);
        let bundle = sign("model", &files, &key);
        let signed = verify(&CheckedBundle::parse(&bundle).unwrap(), &public).unwrap();
        assert_eq!(signed.files(), &files);
    }
}

#[test]
fn the_same_key_in_sec1_and_pkcs8_is_the_same_key() {
    for curve in ["p256", "p384"] {
        let public = VerifyingKey::from_pem(&private_key(&format!("{curve}.pub.pem"))).unwrap();
        for format in ["sec1", "pkcs8"] {
            let pem = private_key(&format!("{curve}.{format}.pem"));
            let key = SigningKey::from_pem(&pem).unwrap();
            assert_eq!(key.verifying_key(), public, "{curve} {format}");
            let bundle = sign("model", &files_on_disk(curve), &key);
            verify(&CheckedBundle::parse(&bundle).unwrap(), &public).unwrap();
        }
    }
}

#[test]
fn an_ec_parameters_block_before_a_sec1_key_is_skipped() {
    // `openssl ecparam -genkey` without `-noout` writes the curve first.
    let params = "-----BEGIN EC PARAMETERS-----\nBggqhkjOPQMBBw==\n-----END EC PARAMETERS-----\n";
    let sec1 = private_key("p256.sec1.pem");
    let key = SigningKey::from_pem(&format!("{params}{sec1}")).unwrap();
    let crlf = SigningKey::from_pem(&sec1.replace('\n', "\r\n")).unwrap();
    let public = VerifyingKey::from_pem(&private_key("p256.pub.pem")).unwrap();
    assert_eq!(key.verifying_key(), public);
    assert_eq!(crlf.verifying_key(), public);
}

#[test]
fn an_encrypted_private_key_is_refused_with_how_to_decrypt_it() {
    for file in ["p256.pkcs8.encrypted.pem", "p256.sec1.encrypted.pem"] {
        let err = refused(&private_key(file));
        assert!(
            matches!(err, PrivateKeyError::Encrypted { .. }),
            "{file}: {err}"
        );
        let text = err.to_string();
        assert!(
            text.starts_with("private key is encrypted") && text.contains("openssl pkey -in"),
            "{file}: {text}"
        );
    }
}

#[test]
fn anything_else_is_refused_naming_the_accepted_formats() {
    let sec1 = private_key("p256.sec1.pem");
    let damaged = sec1.replacen("MHcCAQEE", "MHcCAQEF", 1);
    assert_ne!(damaged, sec1, "the fixture starts as SEC1 P-256 keys do");
    let cases = [
        ("not PEM", "not a key".to_owned(), "no PEM block"),
        ("empty", String::new(), "no PEM block"),
        (
            "a public key",
            private_key("p256.pub.pem"),
            "this is a public key",
        ),
        (
            "two keys",
            format!("{sec1}{}", private_key("p384.sec1.pem")),
            "2 PEM blocks",
        ),
        ("damaged SEC1", damaged, "SEC1 EC key that is not on P-256"),
        (
            "PKCS#8 label on SEC1 contents",
            sec1.replace("EC PRIVATE KEY", "PRIVATE KEY"),
            "PKCS#8 key that is not",
        ),
        (
            "another format",
            "-----BEGIN OPENSSH PRIVATE KEY-----\nAAAA\n-----END OPENSSH PRIVATE KEY-----\n"
                .to_owned(),
            "labelled \"OPENSSH PRIVATE KEY\"",
        ),
    ];
    for (name, pem, why) in cases {
        let err = refused(&pem);
        assert!(
            matches!(err, PrivateKeyError::Unsupported(_)),
            "{name}: {err}"
        );
        let text = err.to_string();
        assert!(
            text.starts_with("private key is not usable")
                && text.contains(why)
                && text.contains("SEC1 (BEGIN EC PRIVATE KEY")
                && text.contains("PKCS#8 (BEGIN PRIVATE KEY"),
            "{name}: {text}"
        );
    }
}
