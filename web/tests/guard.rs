//! The browser's guard, natively: the same admission, screening and receipt
//! check the wasm module runs, held to the host's guard on the same inputs.

#![cfg(not(target_arch = "wasm32"))]
#![allow(clippy::unwrap_used)] // Tests fail loudly by design.

use std::path::Path;

use medguard::guard::{ClassifyOptions, Guard};
use medguard::prediction::{ModelRef, Prediction};
use medguard_ledger::entry::ScreeningPolicy;
use medguard_tests::{
    assert_json_close, demo_policy, files_in_memory, model_dir, repo_root, shared_program_owned,
};
use medguard_web::guard::{Model, Policy, WebError, verify_result};

fn policy() -> Policy {
    let trust = repo_root().join("models/trust");
    let text = std::fs::read_to_string(trust.join("demo-policy.toml")).unwrap();
    Policy::parse(&text, |name| {
        std::fs::read_to_string(trust.join(name)).map_err(|e| e.to_string())
    })
    .unwrap()
}

fn admitted() -> Model {
    Model::admit(
        &policy(),
        &files_in_memory(&model_dir()),
        jiff::Timestamp::now(),
    )
    .unwrap()
}

#[test]
fn the_bundled_model_is_admitted_from_memory_with_its_signer() {
    let model = admitted();
    let a = model.attestation();
    assert_eq!(
        (a.name.as_str(), a.version.as_str()),
        ("pneumonia-cnn", "1.0.0")
    );
    assert_eq!(a.signer, "medguard-demo");
    assert_eq!(a.labels, ["normal", "pneumonia"]);
    assert!(a.takes_dicom);
    assert_eq!(a.statistics, ["margin", "squeeze-median-2x2"]);
    assert_eq!(a.policy_sha256, demo_policy().sha256.to_string());
}

#[test]
fn a_tampered_or_expired_directory_is_refused_with_the_reason() {
    let mut tampered = files_in_memory(&model_dir());
    tampered.get_mut("model.onnx").unwrap()[4096] ^= 1;
    let e = Model::admit(&policy(), &tampered, jiff::Timestamp::now()).unwrap_err();
    assert!(matches!(e, WebError::Refused(_)), "{e}");
    assert!(e.to_string().contains("model.onnx"), "{e}");
    let far = "2100-01-01T00:00:00Z".parse().unwrap();
    let e = Model::admit(&policy(), &files_in_memory(&model_dir()), far).unwrap_err();
    assert!(e.to_string().contains("expired"), "{e}");
}

/// The host's guard with the model of `dir` admitted, in a fresh data
/// directory.
fn host_guard(
    dir: &Path,
) -> (
    tempfile::TempDir,
    Guard,
    Box<medguard_attest::AttestedModel>,
) {
    let data = tempfile::tempdir().unwrap();
    let guard = Guard::open(data.path(), demo_policy())
        .unwrap()
        .with_sandbox(shared_program_owned());
    let model = match guard.admit(dir).unwrap() {
        medguard::guard::Admission::Admitted { model, .. } => model,
        other => panic!("{other:?}"),
    };
    (data, guard, model)
}

fn enforce(seed: u64) -> ClassifyOptions {
    ClassifyOptions {
        seed,
        policy: ScreeningPolicy::Enforce,
        allow_unscreened: false,
    }
}

/// Every field `predict --json` prints but the receipt and the guest's
/// digest, from the host's guard running the sandboxed guest on the model
/// of `dir`.
fn host_answers_of(dir: &Path, file: &Path, seed: u64) -> Vec<serde_json::Value> {
    let (_data, guard, model) = host_guard(dir);
    let options = enforce(seed);
    let classified = guard
        .classify(&model, &std::fs::read(file).unwrap(), options)
        .unwrap();
    classified
        .images
        .iter()
        .map(|image| {
            let p = Prediction::new(None, image, &classified, ModelRef::of(&model), "");
            let mut v = serde_json::to_value(p).unwrap();
            let o = v.as_object_mut().unwrap();
            o.remove("receipt");
            o.remove("guest_sha256");
            v
        })
        .collect()
}

fn host_answers(file: &Path, seed: u64) -> Vec<serde_json::Value> {
    host_answers_of(&model_dir(), file, seed)
}

/// The browser's answers without the wasm module's digest.
fn web_answers(model: &Model, bytes: &[u8], seed: u64) -> Vec<serde_json::Value> {
    model
        .classify(None, bytes, seed, "")
        .unwrap()
        .into_iter()
        .map(|p| {
            let mut v = serde_json::to_value(p).unwrap();
            v.as_object_mut().unwrap().remove("guest_sha256");
            v
        })
        .collect()
}

#[test]
fn answers_equal_the_sandboxed_guests_for_clean_attacked_and_dicom_inputs() {
    let model = admitted();
    let dir = model_dir();
    let inputs = [
        dir.join("samples/normal-1.png"),
        dir.join("samples/pneumonia-2.png"),
        dir.join("adversarial/pgd8-1.png"),
        repo_root().join("tests/dicom/fixtures/chest-rle.dcm"),
    ];
    for (seed, file) in inputs.iter().enumerate() {
        let seed = seed as u64 * 977 + 5;
        let web: Vec<serde_json::Value> = model
            .classify(None, &std::fs::read(file).unwrap(), seed, "")
            .unwrap()
            .into_iter()
            .map(|p| {
                let mut v = serde_json::to_value(p).unwrap();
                v.as_object_mut().unwrap().remove("guest_sha256");
                v
            })
            .collect();
        // tract's native kernels here, its wasm kernels in the guest:
        // equal to rounding, not to the bit. Labels and verdicts are
        // compared exactly; a p-value is a rank over at most 484
        // references, so one place apart is 2e-3, far outside 1e-5.
        assert_json_close(
            &web.into(),
            &host_answers(file, seed).into(),
            1e-5,
            &file.display().to_string(),
        );
    }
}

#[test]
fn bad_inputs_are_refused_each_with_its_reason() {
    let model = admitted();
    let cases: [(&[u8], &str); 3] = [
        (b"GIF89a", "input refused"),
        (b"\x89PNG\r\n\x1a\n", "input refused"),
        (&[0u8; 200], "input refused"),
    ];
    for (bytes, want) in cases {
        let e = model.classify(None, bytes, 1, "").unwrap_err();
        assert!(e.to_string().starts_with(want), "{e}");
    }
    let mr = std::fs::read(repo_root().join("tests/dicom/fixtures/refused-mr.dcm")).unwrap();
    let e = model.classify(None, &mr, 1, "").unwrap_err();
    assert!(matches!(e, WebError::Dicom(_)), "{e}");
    // And the next input is served as if nothing happened.
    let ok = std::fs::read(model_dir().join("samples/normal-1.png")).unwrap();
    assert_eq!(model.classify(None, &ok, 1, "").unwrap().len(), 1);
}

#[test]
fn a_servers_result_verifies_and_an_edited_one_does_not() {
    let (_data, guard, model) = host_guard(&model_dir());
    let options = enforce(3);
    let png = std::fs::read(model_dir().join("samples/normal-2.png")).unwrap();
    let classified = guard.classify(&model, &png, options).unwrap();
    let digest = guard.program().unwrap().digest().to_string();
    let p = Prediction::new(
        None,
        &classified.images[0],
        &classified,
        ModelRef::of(&model),
        &digest,
    );
    let line = serde_json::to_string(&p).unwrap();
    let key = guard.verifier().to_string();
    let v = verify_result(line.as_bytes(), &key).unwrap();
    assert_eq!(v.kind, "inference");
    assert!(
        v.description.starts_with("inference pneumonia-cnn 1.0.0"),
        "{}",
        v.description
    );
    // The evidence detail beside the result is not in the signed entry.
    assert_eq!(v.unsigned, ["statistics", "integrity"]);

    let mut edited: serde_json::Value = serde_json::from_str(&line).unwrap();
    edited["verdict"] = "reject".into();
    let e = verify_result(edited.to_string().as_bytes(), &key).unwrap_err();
    assert!(e.to_string().contains("`verdict`"), "{e}");
    let other = Guard::open(tempfile::tempdir().unwrap().path(), demo_policy()).unwrap();
    let e = verify_result(line.as_bytes(), &other.verifier().to_string()).unwrap_err();
    assert!(e.to_string().contains("receipt does not verify"), "{e}");
    let e = verify_result(line.as_bytes(), "not a key").unwrap_err();
    assert!(matches!(e, WebError::LedgerKey(_)), "{e}");
}

/// Normal-1 and pneumonia-1 blended 0.55 to 0.45, rounded to 8 bits, as
/// an .npy: near the decision boundary, so neither method certifies it.
fn boundary_blend() -> Vec<u8> {
    let pixels = |name: &str| {
        let png = std::fs::read(model_dir().join("samples").join(name)).unwrap();
        let manifest = files_in_memory(&model_dir());
        let manifest: serde_json::Value =
            serde_json::from_slice(&manifest["manifest.json"]).unwrap();
        let spec: medguard_attest::InputSpec =
            serde_json::from_value(manifest["input"].clone()).unwrap();
        medguard_input::decode(&png, &spec, 1).unwrap().data
    };
    let (a, b) = (pixels("normal-1.png"), pixels("pneumonia-1.png"));
    let blend: Vec<u8> = a
        .iter()
        .zip(&b)
        .map(|(x, y)| ((0.55 * x + 0.45 * y) * 255.0).round() as u8)
        .collect();
    let mut npy = Vec::new();
    ndarray_npy::WriteNpyExt::write_npy(
        &ndarray::Array3::from_shape_vec((1, 28, 28), blend).unwrap(),
        &mut npy,
    )
    .unwrap();
    npy
}

#[test]
fn interval_certificates_equal_the_sandboxed_guests() {
    // No noise: the browser's certificates are the host's, field for field
    // (the margin to rounding).
    let dir = repo_root().join("models/pneumonia-ibp");
    let model = Model::admit(&policy(), &files_in_memory(&dir), jiff::Timestamp::now()).unwrap();
    let blend = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(blend.path(), boundary_blend()).unwrap();
    for (seed, file) in [
        model_dir().join("samples/normal-1.png"),
        model_dir().join("samples/pneumonia-1.png"),
        blend.path().to_owned(),
    ]
    .iter()
    .enumerate()
    {
        let seed = seed as u64 + 11;
        let mut web = web_answers(&model, &std::fs::read(file).unwrap(), seed);
        let mut host = host_answers_of(&dir, file, seed);
        // A withheld label's screening evidence is withheld too, as the
        // server withholds it (the CLI prints it for its operator).
        for (w, h) in web.iter_mut().zip(&mut host) {
            if w["label"].is_null() {
                assert!(w["p_value"].is_null(), "{w}");
                assert_eq!(w["statistics"], serde_json::json!({}), "{w}");
                for key in ["p_value", "statistics"] {
                    h.as_object_mut().unwrap().remove(key);
                    w.as_object_mut().unwrap().remove(key);
                }
            }
        }
        // tract's native kernels here, its wasm kernels in the guest.
        assert_json_close(
            &web.clone().into(),
            &host.into(),
            1e-5,
            &file.display().to_string(),
        );
        let c = &web[0]["certificate"];
        assert_eq!(c["method"], "interval-bound-propagation", "{c}");
    }
    // The blend is not certified: flagged, its label and margin withheld.
    let web = web_answers(&model, &boundary_blend(), 3);
    assert_eq!(web[0]["verdict"], "flag", "{}", web[0]);
    assert!(web[0]["label"].is_null() && web[0]["certificate"]["margin"].is_null());
}

#[test]
fn smoothed_models_are_certified_with_noise_the_page_does_not_choose() {
    let dir = repo_root().join("models/pneumonia-smoothed");
    let model = Model::admit(&policy(), &files_in_memory(&dir), jiff::Timestamp::now()).unwrap();
    let png = std::fs::read(model_dir().join("samples/pneumonia-1.png")).unwrap();
    let first = web_answers(&model, &png, 9);
    let again = web_answers(&model, &png, 9);
    for answer in [&first[0], &again[0]] {
        let c = &answer["certificate"];
        assert_eq!(c["method"], "randomized-smoothing", "{c}");
        assert_eq!(c["certified"], true, "{c}");
        assert_eq!(answer["label"], "pneumonia");
        let votes: u64 = c["votes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap())
            .sum();
        assert_eq!(votes, 400);
    }
    // Fresh noise per request, whatever seed the page passes (that one
    // reproduces screening).
    assert_ne!(
        first[0]["certificate"]["noise"]["seed"],
        again[0]["certificate"]["noise"]["seed"]
    );
    assert_eq!(first[0]["seed"], 9);
    // The same model in the host's guard: the same label, certified too.
    let host = host_answers_of(&dir, &model_dir().join("samples/pneumonia-1.png"), 9);
    assert_eq!(host[0]["label"], first[0]["label"]);
    assert_eq!(host[0]["certificate"]["certified"], true);
    // Near the boundary the copies split: flagged, label and votes withheld.
    let blend = web_answers(&model, &boundary_blend(), 9);
    assert_eq!(blend[0]["verdict"], "flag", "{}", blend[0]);
    assert!(blend[0]["label"].is_null());
    assert!(
        blend[0]["certificate"]["votes"].is_null() && blend[0]["certificate"]["class"].is_null()
    );
}
