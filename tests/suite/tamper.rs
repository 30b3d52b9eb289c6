//! Supply-chain tampering: every altered model or guest is refused before the
//! sandbox sees a byte. `attest` is the only way to an `AttestedModel`, and
//! the sandbox takes nothing else, so a refusal here means no byte reached it.

use std::fs;

use medguard::guest::{self, GuestPinError};
use medguard::model_dir::{self, ModelDirError};
use medguard_attest::{AttestError, Manifest, Sha256Digest, vouch_unsigned};
use medguard_tests::{files_in_memory, model_dir as bundled_dir, repo_root};
use rand::{Rng, SeedableRng};

fn bundled_parts() -> (Manifest, Vec<u8>) {
    let dir = bundled_dir();
    let manifest = Manifest::parse(&fs::read(dir.join("manifest.json")).unwrap()).unwrap();
    let bytes = fs::read(dir.join(&manifest.model.file)).unwrap();
    (manifest, bytes)
}

/// A copy of the bundled model directory to vandalise.
fn scratch_copy() -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    for f in ["manifest.json", "model.onnx"] {
        fs::copy(bundled_dir().join(f), tmp.path().join(f)).unwrap();
    }
    tmp
}

#[test]
fn a_single_flipped_bit_anywhere_is_refused() {
    let (manifest, bytes) = bundled_parts();
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let mut offsets: Vec<usize> = (0..200).map(|_| rng.random_range(0..bytes.len())).collect();
    offsets.extend([0, bytes.len() - 1]);
    for offset in offsets {
        let mut flipped = bytes.clone();
        flipped[offset] ^= 1 << rng.random_range(0..8);
        match vouch_unsigned(manifest.clone(), flipped) {
            Err(AttestError::Digest(m)) => {
                assert_eq!(m.expected, manifest.model.sha256);
                assert_ne!(m.actual, manifest.model.sha256);
            }
            other => panic!("bit flip at {offset} not refused: {other:?}"),
        }
    }
    assert!(
        vouch_unsigned(manifest, bytes).is_ok(),
        "the untouched model must pass"
    );
}

#[test]
fn flipped_bits_on_disk_are_refused_with_both_digests_named() {
    let tmp = scratch_copy();
    let path = tmp.path().join("model.onnx");
    let mut bytes = fs::read(&path).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x10;
    fs::write(&path, &bytes).unwrap();
    let err = model_dir::load_unsigned(tmp.path()).unwrap_err();
    let msg = err.to_string();
    let (manifest, _) = bundled_parts();
    assert!(matches!(
        err,
        ModelDirError::Attest {
            source: AttestError::Digest(_),
            ..
        }
    ));
    assert!(
        msg.contains(&manifest.model.sha256.to_string()),
        "expected digest named: {msg}"
    );
    assert!(
        msg.contains(&Sha256Digest::of(&bytes).to_string()),
        "actual digest named: {msg}"
    );
}

#[test]
fn a_manifest_with_a_wrong_digest_is_refused() {
    let tmp = scratch_copy();
    let path = tmp.path().join("manifest.json");
    let mut v: serde_json::Value = serde_json::from_slice(&fs::read(&path).unwrap()).unwrap();
    v["model"]["sha256"] = Sha256Digest::of(b"something else").to_string().into();
    fs::write(&path, serde_json::to_vec(&v).unwrap()).unwrap();
    assert!(matches!(
        model_dir::load_unsigned(tmp.path()),
        Err(ModelDirError::Attest {
            source: AttestError::Digest(_),
            ..
        })
    ));
}

#[test]
fn truncated_and_empty_models_are_refused() {
    let tmp = scratch_copy();
    let path = tmp.path().join("model.onnx");
    let bytes = fs::read(&path).unwrap();
    fs::write(&path, &bytes[..bytes.len() - 1]).unwrap();
    assert!(matches!(
        model_dir::load_unsigned(tmp.path()),
        Err(ModelDirError::Attest {
            source: AttestError::SizeMismatch { .. },
            ..
        })
    ));
    fs::write(&path, b"").unwrap();
    assert!(matches!(
        model_dir::load_unsigned(tmp.path()),
        Err(ModelDirError::Attest {
            source: AttestError::Empty { .. },
            ..
        })
    ));
}

#[test]
fn a_padded_model_is_refused_without_reading_it_all() {
    let tmp = scratch_copy();
    let path = tmp.path().join("model.onnx");
    let mut bytes = fs::read(&path).unwrap();
    bytes.extend(std::iter::repeat_n(0u8, 1 << 20));
    fs::write(&path, &bytes).unwrap();
    assert!(matches!(
        model_dir::load_unsigned(tmp.path()),
        Err(ModelDirError::TooLarge { .. })
    ));
}

#[test]
fn another_valid_onnx_model_in_place_is_refused() {
    // Same architecture, untrained weights: a valid ONNX model that the guest
    // would happily run.
    let other = fs::read(repo_root().join("tests/fixtures/untrained-twin.onnx")).unwrap();
    let (manifest, right) = bundled_parts();
    assert_ne!(other, right);
    let tmp = scratch_copy();
    fs::write(tmp.path().join("model.onnx"), &other).unwrap();
    assert!(model_dir::load_unsigned(tmp.path()).is_err());
    // Even if the attacker also fixes the manifest's size, the digest refuses it.
    let mut resized = manifest.clone();
    resized.model.size = other.len() as u64;
    assert!(matches!(
        vouch_unsigned(resized, other),
        Err(AttestError::Digest(_))
    ));
}

#[test]
fn a_different_guest_module_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("guest.wasm");
    // A valid component implementing the same world, but not the pinned one.
    fs::write(
        &path,
        medguard_tests::hostile_component("unreachable", "unreachable", ""),
    )
    .unwrap();
    assert!(matches!(
        guest::from_file(&path),
        Err(GuestPinError::Mismatch(_))
    ));
    // The pinned guest with one flipped bit.
    let mut bytes = guest::bundled().unwrap().bytes().to_vec();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x01;
    fs::write(&path, &bytes).unwrap();
    assert!(matches!(
        guest::from_file(&path),
        Err(GuestPinError::Mismatch(_))
    ));
    // The pinned guest itself, from a file, is accepted.
    bytes[mid] ^= 0x01;
    fs::write(&path, &bytes).unwrap();
    assert!(guest::from_file(&path).is_ok());
}

/// Copies every file of the bundled model directory (signature, manifest,
/// model, samples, docs) into `to`.
fn copy_signed_dir(to: &std::path::Path) {
    fn copy(from: &std::path::Path, to: &std::path::Path) {
        fs::create_dir_all(to).unwrap();
        for e in fs::read_dir(from).unwrap() {
            let e = e.unwrap();
            if e.file_type().unwrap().is_dir() {
                copy(&e.path(), &to.join(e.file_name()));
            } else {
                fs::copy(e.path(), to.join(e.file_name())).unwrap();
            }
        }
    }
    copy(&bundled_dir(), to);
}

#[test]
fn a_flipped_bit_in_the_signature_manifest_or_model_is_refused_by_signed_admission() {
    use medguard::admission::{admit_directory, load_policy};
    let (policy, _) = load_policy(&repo_root().join("models/trust/demo-policy.toml")).unwrap();
    let now = jiff::Timestamp::now();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("pneumonia");
    copy_signed_dir(&dir);
    admit_directory(&dir, &policy, |_| None, now).expect("the untouched copy is admitted");
    let mut rng = rand::rngs::StdRng::seed_from_u64(11);
    let mut refused = 0;
    for file in ["model.sig", "manifest.json", "model.onnx"] {
        let path = dir.join(file);
        let original = fs::read(&path).unwrap();
        let mut offsets: Vec<usize> = (0..66)
            .map(|_| rng.random_range(0..original.len()))
            .collect();
        offsets.extend([0, original.len() - 1]);
        for offset in offsets {
            let bit = rng.random_range(0..8);
            let mut flipped = original.clone();
            flipped[offset] ^= 1 << bit;
            fs::write(&path, &flipped).unwrap();
            let outcome = admit_directory(&dir, &policy, |_| None, now);
            assert!(
                outcome.is_err(),
                "{file}: bit {bit} of byte {offset} flipped and still admitted"
            );
            refused += 1;
        }
        fs::write(&path, &original).unwrap();
    }
    assert_eq!(refused, 204);
    admit_directory(&dir, &policy, |_| None, now).expect("restored, admitted again");
}

#[test]
fn in_memory_admission_admits_and_refuses_exactly_as_the_directory_admission() {
    use medguard::admission::{AdmissionError, admit_directory, load_policy};
    use medguard_attest::admit_files;
    let (policy, _) = load_policy(&repo_root().join("models/trust/demo-policy.toml")).unwrap();
    let now = jiff::Timestamp::now();
    type Change = fn(&std::path::Path);
    let changes: [(&str, Change); 9] = [
        ("untouched", |_| {}),
        ("no signature", |d| {
            fs::remove_file(d.join("model.sig")).unwrap()
        }),
        ("no manifest", |d| {
            fs::remove_file(d.join("manifest.json")).unwrap()
        }),
        ("no model", |d| {
            fs::remove_file(d.join("model.onnx")).unwrap()
        }),
        ("a flipped model bit", |d| {
            let mut b = fs::read(d.join("model.onnx")).unwrap();
            b[1000] ^= 4;
            fs::write(d.join("model.onnx"), b).unwrap();
        }),
        ("a longer model", |d| {
            let mut b = fs::read(d.join("model.onnx")).unwrap();
            b.push(0);
            fs::write(d.join("model.onnx"), b).unwrap();
        }),
        ("an extra file", |d| {
            fs::write(d.join("notes.txt"), "x").unwrap()
        }),
        ("a changed sample", |d| {
            fs::write(d.join("README.md"), "edited").unwrap();
        }),
        ("git metadata, which the signer ignores", |d| {
            fs::create_dir_all(d.join(".git/objects")).unwrap();
            fs::write(d.join(".git/objects/x"), "y").unwrap();
            fs::write(d.join(".gitignore"), "*.tmp").unwrap();
        }),
    ];
    for (what, change) in changes {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("pneumonia");
        copy_signed_dir(&dir);
        change(&dir);
        let on_disk = admit_directory(&dir, &policy, |_| None, now);
        let in_memory = admit_files(&policy, &files_in_memory(&dir), |_| None, now);
        match (on_disk, in_memory) {
            (Ok(a), Ok(b)) => {
                assert_eq!(a.model_digest(), b.model_digest(), "{what}");
                assert_eq!(a.manifest_digest(), b.manifest_digest(), "{what}");
                assert_eq!(a.model_bytes(), b.model_bytes(), "{what}");
                assert!(
                    what == "untouched" || what.starts_with("git"),
                    "{what} admitted"
                );
            }
            (Err(AdmissionError::Refused { source, .. }), Err(e)) => {
                assert_eq!(source.to_string(), e.to_string(), "{what}");
            }
            // On disk the missing manifest is a failed read; in memory, a
            // file the signature lists and the directory lacks.
            (Err(AdmissionError::Read(read)), Err(e)) => {
                assert_eq!(what, "no manifest", "{read}");
                assert!(
                    e.to_string()
                        .contains("signed file manifest.json is missing"),
                    "{e}"
                );
            }
            (Err(AdmissionError::Unsigned { .. }), Err(e)) => {
                assert_eq!(what, "no signature");
                assert!(
                    e.to_string().contains("has no signature (model.sig)"),
                    "{e}"
                );
            }
            (a, b) => panic!("{what}: on disk {a:?}, in memory {b:?}"),
        }
    }
}
