//! Output shapes and documented exit codes.

use crate::{
    assert_one_line_error, committed_model_dir, medguard, medguard_command, model_dir, s,
    signed_copy, text,
};

#[test]
fn digest_prints_the_sha256() {
    let out = medguard(&[
        "digest",
        model_dir().join("manifest.json").to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(0));
    let digest = text(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_owned();
    assert_eq!(digest.len(), 64);
    let model = medguard(&["digest", model_dir().join("model.onnx").to_str().unwrap()]);
    let model_digest = text(&model.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_owned();
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(model_dir().join("manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest["model"]["sha256"], model_digest.as_str());
}

#[test]
fn verify_accepts_the_bundled_model_and_refuses_a_tampered_one() {
    let ok = medguard(&["verify", model_dir().to_str().unwrap()]);
    assert_eq!(ok.status.code(), Some(0), "{}", text(&ok.stderr));
    assert!(text(&ok.stdout).starts_with("accepted: "));

    let tmp = tempfile::tempdir().unwrap();
    let copy = signed_copy(tmp.path(), None, |_| {});
    let mut bytes = std::fs::read(copy.join("model.onnx")).unwrap();
    bytes[1000] ^= 0x80;
    std::fs::write(copy.join("model.onnx"), bytes).unwrap();
    let refused = medguard(&["verify", s(&copy)]);
    assert_eq!(refused.status.code(), Some(1));
    assert_one_line_error(&refused);
    assert!(
        text(&refused.stderr).contains("hash mismatch for model.onnx"),
        "{}",
        text(&refused.stderr)
    );

    let missing = medguard(&["verify", tmp.path().join("nope").to_str().unwrap()]);
    assert_eq!(missing.status.code(), Some(1));
    assert_one_line_error(&missing);
}

#[test]
fn predict_refuses_a_model_whose_tensors_contradict_its_manifest() {
    // The digest still matches; only the manifest's claim about the output
    // tensor is wrong, so attestation passes and the guest must refuse.
    let tmp = tempfile::tempdir().unwrap();
    let copy = signed_copy(tmp.path(), None, |m| {
        m["output"]["tensor"] = "probabilities".into();
    });
    let sample = model_dir().join("samples/normal-1.png");
    let out = medguard(&["predict", s(&copy), s(&sample)]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert_one_line_error(&out);
    assert!(
        text(&out.stderr).contains("\"logits\""),
        "{}",
        text(&out.stderr)
    );
    assert!(out.stdout.is_empty());
}

#[test]
fn predict_json_gives_one_object_per_input() {
    let samples = ["samples/normal-1.png", "samples/pneumonia-1.png"].map(|s| model_dir().join(s));
    let dir = model_dir();
    let mut args = vec!["predict", "--json", dir.to_str().unwrap()];
    args.extend(samples.iter().map(|p| p.to_str().unwrap()));
    let out = medguard(&args);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let lines: Vec<serde_json::Value> = text(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2);
    for (line, path) in lines.iter().zip(&samples) {
        assert_eq!(line["input"], path.to_str().unwrap());
        let probs = line["probabilities"].as_object().unwrap();
        assert_eq!(probs.len(), 2);
        let sum: f64 = probs.values().map(|v| v.as_f64().unwrap()).sum();
        assert!((sum - 1.0).abs() < 1e-5);
        let label = line["label"].as_str().unwrap();
        assert!(probs.values().all(|v| v.as_f64() <= probs[label].as_f64()));
        assert_eq!(line["model"]["name"], "pneumonia-cnn");
        assert_eq!(line["guest_sha256"].as_str().unwrap().len(), 64);
    }
}

#[test]
fn predict_rejects_a_bad_input_with_exit_1_and_keeps_going() {
    let tmp = tempfile::tempdir().unwrap();
    let bad = tmp.path().join("not-an-image.png");
    std::fs::write(&bad, b"this is not a PNG").unwrap();
    let good = model_dir().join("samples/normal-1.png");
    let out = medguard(&[
        "predict",
        "--json",
        model_dir().to_str().unwrap(),
        bad.to_str().unwrap(),
        good.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    let lines: Vec<serde_json::Value> = text(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(
        lines[0]["error"]
            .as_str()
            .unwrap()
            .contains("not a PNG or .npy")
    );
    assert!(
        lines[1]["label"].is_string(),
        "the good input after the bad one is still classified"
    );
}

#[test]
fn predict_reads_npy_batches() {
    // A [3, 28, 28] uint8 array written by hand in the .npy v1 format.
    let header = "{'descr': '|u1', 'fortran_order': False, 'shape': (3, 28, 28), }";
    let mut header = header.to_string();
    while !(10 + header.len() + 1).is_multiple_of(64) {
        header.push(' ');
    }
    header.push('\n');
    let mut npy = b"\x93NUMPY\x01\x00".to_vec();
    npy.extend((header.len() as u16).to_le_bytes());
    npy.extend(header.as_bytes());
    npy.extend((0..3 * 784).map(|i| (i % 251) as u8));
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("batch.npy");
    std::fs::write(&path, npy).unwrap();
    // Synthetic stripes are nothing like an X-ray: the guard may reject them,
    // so flag-only keeps every prediction for this format test.
    let out = medguard(&[
        "predict",
        "--json",
        "--policy",
        "flag-only",
        model_dir().to_str().unwrap(),
        path.to_str().unwrap(),
    ]);
    assert!(
        matches!(out.status.code(), Some(0 | 1)),
        "{}",
        text(&out.stderr)
    );
    let inputs: Vec<String> = text(&out.stdout)
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["input"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    let p = path.to_str().unwrap();
    assert_eq!(
        inputs,
        [format!("{p}[0]"), format!("{p}[1]"), format!("{p}[2]")]
    );
}

#[test]
fn demo_runs_and_usage_errors_exit_2() {
    let (mut cmd, tmp) = medguard_command(&["demo"]);
    // Even with a trust policy in the environment the demo uses its own.
    cmd.env_remove("MEDGUARD_TRUST_POLICY");
    let demo = cmd.output().unwrap();
    assert_eq!(demo.status.code(), Some(0), "{}", text(&demo.stderr));
    let out = text(&demo.stdout);
    assert!(
        out.contains("matches the manifest") && out.contains("matches the pin"),
        "{out}"
    );
    assert!(
        out.contains("normal-1.png") && out.contains("pneumonia-1.png"),
        "{out}"
    );
    // The attacked samples are rejected and get no prediction.
    for attacked in ["pgd8-1.png", "pgd8-2.png"] {
        let line = out
            .lines()
            .find(|l| l.contains(attacked))
            .unwrap_or_else(|| panic!("{attacked} missing: {out}"));
        assert!(
            line.contains("prediction withheld") && line.contains("reject"),
            "{line}"
        );
    }
    // Its ledger is its own: the deployment's data directory stays untouched.
    assert!(!tmp.path().join("data").exists());
    assert!(tmp.path().join("xdg/medguard-demo/ledger").is_dir());

    assert_eq!(medguard(&["predict"]).status.code(), Some(2));
    assert_eq!(medguard(&["no-such-command"]).status.code(), Some(2));
    let wrong_guest = medguard(&[
        "--guest",
        model_dir().join("model.onnx").to_str().unwrap(),
        "demo",
    ]);
    assert_eq!(wrong_guest.status.code(), Some(2));
    assert_one_line_error(&wrong_guest);
    assert!(text(&wrong_guest.stderr).contains("guest module refused"));
}

/// The tests run on a renewed copy (main.rs), so this one checks the
/// committed signature itself: it covers the committed files, and the
/// committed manifest is refused for nothing but its age once it expires.
#[test]
fn the_committed_model_verifies_as_committed() {
    let out = medguard(&["verify", s(&committed_model_dir())]);
    let manifest: serde_json::Value = serde_json::from_slice(
        &std::fs::read(committed_model_dir().join("manifest.json")).unwrap(),
    )
    .unwrap();
    let expires: jiff::Timestamp = manifest["expires"].as_str().unwrap().parse().unwrap();
    if expires > jiff::Timestamp::now() {
        assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    } else {
        assert_eq!(out.status.code(), Some(1));
        assert!(
            text(&out.stderr).contains("expiry:"),
            "{}",
            text(&out.stderr)
        );
    }
}

#[test]
fn the_demo_renews_its_copy_of_a_manifest_about_to_expire() {
    let tmp = tempfile::tempdir().unwrap();
    let tomorrow = jiff::Timestamp::now() + jiff::SignedDuration::from_hours(24);
    let model = signed_copy(tmp.path(), None, |m| {
        m["expires"] = tomorrow.to_string().into();
    });
    let xdg = tmp.path().join("xdg");
    let run = || {
        let (mut cmd, _data) = medguard_command(&["demo", "--model-dir", s(&model)]);
        cmd.env_remove("MEDGUARD_TRUST_POLICY")
            .env("XDG_DATA_HOME", &xdg)
            .output()
            .unwrap()
    };
    let renewed_until = medguard::signing::renewal_expiry(jiff::Timestamp::now());
    for attempt in 0..2 {
        let out = run();
        assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
        let stdout = text(&out.stdout);
        assert!(
            stdout.contains("re-signed its own copy")
                && stdout.contains(&renewed_until.to_string())
                && stdout.contains("normal-1.png"),
            "run {attempt}: {stdout}"
        );
    }
    // One renewed copy, with its own ledger; the source is untouched.
    let renewed: Vec<_> = std::fs::read_dir(xdg.join("medguard-demo/renewed"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| !p.file_name().unwrap().to_string_lossy().starts_with('.'))
        .collect();
    assert_eq!(renewed.len(), 1, "{renewed:?}");
    assert!(renewed[0].join("data/ledger").is_dir());
    let copy: serde_json::Value = serde_json::from_slice(
        &std::fs::read(renewed[0].join("model/pneumonia/manifest.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(copy["expires"], renewed_until.to_string().as_str());
    let source: serde_json::Value =
        serde_json::from_slice(&std::fs::read(model.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(source["expires"], tomorrow.to_string().as_str());
}

#[test]
fn the_demo_renews_nothing_the_demo_policy_would_refuse() {
    // An expiring copy whose model was swapped after signing: renewing it
    // would launder the swap under the demo key.
    let tmp = tempfile::tempdir().unwrap();
    let tomorrow = jiff::Timestamp::now() + jiff::SignedDuration::from_hours(24);
    let model = signed_copy(tmp.path(), None, |m| {
        m["expires"] = tomorrow.to_string().into();
    });
    let mut bytes = std::fs::read(model.join("model.onnx")).unwrap();
    bytes[1000] ^= 0x01;
    std::fs::write(model.join("model.onnx"), bytes).unwrap();
    let (mut cmd, data) = medguard_command(&["demo", "--model-dir", s(&model)]);
    let out = cmd.env_remove("MEDGUARD_TRUST_POLICY").output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stdout));
    assert!(
        text(&out.stderr).contains("model.onnx"),
        "{}",
        text(&out.stderr)
    );
    assert!(!text(&out.stdout).contains("re-signed"));
    assert!(!data.path().join("xdg/medguard-demo/renewed").exists());
}
