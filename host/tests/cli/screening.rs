//! Screening end to end: verdicts in predict, calibration reproducibility,
//! and the CI regression floors on committed attack images.

use std::path::{Path, PathBuf};

use ndarray::Array3;
use ndarray_npy::WriteNpyExt;

use crate::{json_lines, medguard, model_dir, root, s, signed_copy, text};

fn ci_data() -> PathBuf {
    root().join("tests/adversarial/ci")
}

/// The 627 calibration images of the bundled model, committed in the
/// repository (`tests/data/README.md`) so a bare clone can recalibrate.
fn calibration_npz() -> PathBuf {
    root().join("tests/data/calibration.npz")
}

/// The first `n` images of a committed CI attack set, as a uint8 .npy file.
fn attack_npy(set: &str, n: usize, dir: &Path) -> PathBuf {
    let bytes = std::fs::read(ci_data().join("sets").join(format!("{set}.npz"))).unwrap();
    let batch = medguard::input::read_npz_images(&bytes, "images").unwrap();
    let pixels: Vec<u8> = batch.data[..n * 784]
        .iter()
        .map(|v| (v * 255.0).round() as u8)
        .collect();
    let path = dir.join(format!("{set}.npy"));
    Array3::from_shape_vec((n, 28, 28), pixels)
        .unwrap()
        .write_npy(std::fs::File::create(&path).unwrap())
        .unwrap();
    path
}

#[test]
fn predict_reports_verdict_p_value_and_statistics_reproducibly() {
    let samples = ["samples/normal-1.png", "samples/pneumonia-2.png"].map(|f| model_dir().join(f));
    let run = || {
        let out = medguard(&[
            "predict",
            "--json",
            "--seed",
            "42",
            s(&model_dir()),
            s(&samples[0]),
            s(&samples[1]),
        ]);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
        // Receipts name a time and a fresh ledger; the rest must repeat.
        let mut lines = json_lines(&out);
        for line in &mut lines {
            assert!(line["receipt"].is_object(), "{line}");
            line.as_object_mut().unwrap().remove("receipt");
        }
        lines
    };
    let lines = run();
    assert_eq!(lines.len(), 2);
    for line in &lines {
        let verdict = line["verdict"].as_str().unwrap();
        assert!(["accept", "flag"].contains(&verdict), "{line}");
        let p = line["p_value"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&p));
        let stats = line["statistics"].as_object().unwrap();
        assert_eq!(
            stats.keys().collect::<Vec<_>>(),
            ["margin", "squeeze-median-2x2"]
        );
        for v in stats.values() {
            assert!(v["value"].is_f64());
            assert!((0.0..=1.0).contains(&v["p_value"].as_f64().unwrap()));
        }
        assert_eq!(line["integrity"]["source_bits"], 8);
        assert_eq!(line["integrity"]["off_grid"], 0);
        assert_eq!(line["seed"], 42);
        assert!(line["label"].is_string());
    }
    assert_eq!(lines, run(), "same seed, same verdicts and evidence");
}

#[test]
fn enforce_withholds_rejected_predictions_and_flag_only_returns_them() {
    let tmp = tempfile::tempdir().unwrap();
    let npy = attack_npy("pgd-8", 10, tmp.path());
    let out = medguard(&["predict", "--json", "--seed", "1", s(&model_dir()), s(&npy)]);
    assert_eq!(out.status.code(), Some(1), "rejections exit 1");
    let lines = json_lines(&out);
    assert_eq!(lines.len(), 10);
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(model_dir().join("manifest.json")).unwrap()).unwrap();
    let reject_at = manifest["screening"]["profile"]["thresholds"]["reject"]
        .as_f64()
        .unwrap();
    let rejected: Vec<_> = lines.iter().filter(|l| l["verdict"] == "reject").collect();
    assert!(
        rejected.len() >= 8,
        "PGD 8/255 should mostly be rejected: {lines:?}"
    );
    for l in &rejected {
        assert!(l["label"].is_null() && l["probabilities"].is_null(), "{l}");
        assert!(l["p_value"].as_f64().unwrap() <= reject_at);
    }
    let out = medguard(&[
        "predict",
        "--json",
        "--seed",
        "1",
        "--policy",
        "flag-only",
        s(&model_dir()),
        s(&npy),
    ]);
    assert_eq!(out.status.code(), Some(1));
    let flag_only = json_lines(&out);
    assert!(flag_only.iter().all(|l| l["label"].is_string()));
    let verdicts =
        |ls: &[serde_json::Value]| ls.iter().map(|l| l["verdict"].clone()).collect::<Vec<_>>();
    assert_eq!(verdicts(&flag_only), verdicts(&lines));
    // The human output says so too.
    let out = medguard(&["predict", "--seed", "1", s(&model_dir()), s(&npy)]);
    let human = text(&out.stdout);
    assert!(
        human.contains("prediction withheld") && human.contains("reject (p = "),
        "{human}"
    );
}

#[test]
fn an_uncalibrated_model_is_refused_unless_unscreened_use_is_explicit() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = signed_copy(tmp.path(), None, |m| {
        m.as_object_mut().unwrap().remove("screening");
    });
    let sample = model_dir().join("samples/normal-1.png");

    let out = medguard(&["predict", s(&dir), s(&sample)]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("no screening profile"),
        "{}",
        text(&out.stderr)
    );
    let out = medguard(&[
        "predict",
        "--json",
        "--allow-unscreened",
        s(&dir),
        s(&sample),
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let line = &json_lines(&out)[0];
    assert_eq!(line["verdict"], "unscreened");
    assert!(line["p_value"].is_null() && line["label"].is_string());
}

#[test]
fn calibration_reproduces_the_committed_profile_and_refuses_bad_data() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("model");
    std::fs::create_dir(&dir).unwrap();
    std::fs::copy(model_dir().join("model.onnx"), dir.join("model.onnx")).unwrap();
    let committed: serde_json::Value =
        serde_json::from_slice(&std::fs::read(model_dir().join("manifest.json")).unwrap()).unwrap();
    let mut bare = committed.clone();
    bare.as_object_mut().unwrap().remove("screening");
    std::fs::write(
        dir.join("manifest.json"),
        serde_json::to_vec(&bare).unwrap(),
    )
    .unwrap();

    // Bad data first: the manifest must come out untouched.
    let before = std::fs::read(dir.join("manifest.json")).unwrap();
    let out = medguard(&["calibrate", s(&dir), "--data", s(&dir.join("model.onnx"))]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("not an .npz archive"),
        "{}",
        text(&out.stderr)
    );
    let out = medguard(&[
        "calibrate",
        s(&dir),
        "--data",
        s(&ci_data().join("clean.npz")),
        "--array",
        "test_images",
    ]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "300 images are too few per class"
    );
    assert!(
        text(&out.stderr).contains("calibration image"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(std::fs::read(dir.join("manifest.json")).unwrap(), before);

    let out = medguard(&["calibrate", s(&dir), "--data", s(&calibration_npz())]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let written: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(
        written["screening"]["profile"], committed["screening"]["profile"],
        "the guest is deterministic, so recalibration must reproduce the committed profile; \
         if the statistics changed on purpose, recalibrate models/pneumonia"
    );
    assert_eq!(
        written["screening"]["pixels"], committed["screening"]["pixels"],
        "the pixel statistics of the same images must be the committed ones"
    );
    assert_eq!(written["screening"]["calibration"]["images"], 627);
}

/// The regression floors sit a little below what `medguard eval` measured on
/// this subset when it was committed (README, "Screening"); a change that
/// weakens the detector or inflates clean false positives fails here.
#[test]
fn eval_on_the_ci_subset_keeps_the_floors() {
    let tmp = tempfile::tempdir().unwrap();
    let report_path = tmp.path().join("report.json");
    let plot_path = tmp.path().join("roc.svg");
    let out = medguard(&[
        "eval",
        s(&model_dir()),
        "--clean",
        s(&ci_data().join("clean.npz")),
        "--sets",
        s(&ci_data().join("sets")),
        "--out",
        s(&report_path),
        "--plot",
        s(&plot_path),
        "--bootstrap",
        "100",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&report_path).unwrap()).unwrap();
    assert!(
        std::fs::read_to_string(&plot_path)
            .unwrap()
            .contains("<svg")
    );
    let clean = &report["clean"];
    assert_eq!(clean["images"], 300);
    let flagged = clean["flagged"]["value"].as_f64().unwrap();
    let rejected = clean["rejected"]["value"].as_f64().unwrap();
    assert!(flagged <= 0.09, "clean flag rate {flagged} (target 0.05)");
    assert!(
        rejected <= 0.03,
        "clean reject rate {rejected} (target 0.01)"
    );
    let attack = |name: &str| {
        report["attacks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|a| a["name"] == name)
            .unwrap()
            .clone()
    };
    for (name, auc_floor, tpr5_floor) in [
        ("pgd-8", 0.99, 0.97),
        ("pgd-4", 0.98, 0.95),
        ("pgd-2", 0.95, 0.80),
        ("cw-l2", 0.98, 0.93),
        ("deepfool", 0.98, 0.93),
    ] {
        let a = attack(name);
        let auc = a["roc_auc"]["value"].as_f64().unwrap();
        let tpr5 = a["tpr_at_5pct_fpr"]["value"].as_f64().unwrap();
        assert!(auc >= auc_floor, "{name}: ROC-AUC {auc} < {auc_floor}");
        assert!(tpr5 >= tpr5_floor, "{name}: TPR@5% {tpr5} < {tpr5_floor}");
    }
}
