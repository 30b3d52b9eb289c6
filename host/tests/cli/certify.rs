//! Certified predictions end to end (issue 15): the certificate in
//! `predict --json`, covered by the receipt; labels the certificate does not
//! cover flagged and withheld under enforce; requirements no vote count can
//! meet refused at admission; the training provenance `verify` prints.

use std::path::{Path, PathBuf};

use ndarray_npy::WriteNpyExt;

use crate::{assert_one_line_error, json_lines, medguard, root, s, sign, text};

/// The committed certifiable model.
fn committed_smoothed_dir() -> PathBuf {
    root().join("models/pneumonia-smoothed")
}

/// A signed copy of the certifiable model with `edit` applied to its
/// manifest (renewed expiry, so no test depends on the committed date).
fn smoothed_copy(dir: &Path, edit: impl FnOnce(&mut serde_json::Value)) -> PathBuf {
    certified_copy(dir, "pneumonia-smoothed", edit)
}

/// A signed copy of the committed model directory `models/<name>` with
/// `edit` applied to its manifest (renewed expiry).
pub(crate) fn certified_copy(
    dir: &Path,
    name: &str,
    edit: impl FnOnce(&mut serde_json::Value),
) -> PathBuf {
    let model = dir.join(name);
    std::fs::create_dir_all(&model).unwrap();
    let from = root().join("models").join(name);
    std::fs::copy(from.join("model.onnx"), model.join("model.onnx")).unwrap();
    let mut manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(from.join("manifest.json")).unwrap()).unwrap();
    manifest["expires"] = medguard::signing::renewal_expiry(jiff::Timestamp::now())
        .to_string()
        .into();
    edit(&mut manifest);
    std::fs::write(
        model.join("manifest.json"),
        serde_json::to_vec_pretty(&manifest).unwrap(),
    )
    .unwrap();
    sign(&model, None);
    model
}

pub(crate) fn sample(name: &str) -> PathBuf {
    root().join("models/pneumonia/samples").join(name)
}

#[test]
fn certified_predictions_carry_a_certificate_the_receipt_covers() {
    let tmp = tempfile::tempdir().unwrap();
    let model = smoothed_copy(tmp.path(), |_| {});
    let data = tmp.path().join("data");
    let predict = || {
        let out = medguard(&[
            "predict",
            "--json",
            "--seed",
            "3",
            "--data-dir",
            s(&data),
            s(&model),
            s(&sample("normal-2.png")),
            s(&sample("pneumonia-1.png")),
        ]);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
        json_lines(&out)
    };
    let lines = predict();
    assert_eq!(lines.len(), 2);
    for (line, label) in lines.iter().zip(["normal", "pneumonia"]) {
        let c = &line["certificate"];
        assert_eq!(c["method"], "randomized-smoothing", "{line}");
        assert_eq!(c["samples"], 400);
        assert_eq!(c["sigma"], 0.375);
        assert_eq!(c["alpha"], 0.001);
        assert_eq!(c["required_radius_l2"], 0.25);
        let votes: Vec<u64> = c["votes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap())
            .collect();
        assert_eq!(votes.iter().sum::<u64>(), 400);
        // Clean samples of each class: certified beyond the requirement,
        // the label is the certified class.
        assert!(c["radius_l2"].as_f64().unwrap() >= 0.25, "{line}");
        assert_eq!(c["certified"], true);
        assert_eq!(line["label"], label);
        assert_eq!(line["verdict"], "accept");
    }
    // The smoothing noise is the operating system's, whatever `--seed`
    // says (that seed reproduces screening): noise a caller could choose or
    // predict could be optimised against. Each request records its own.
    let again = predict();
    for (a, b) in lines.iter().zip(&again) {
        assert_eq!(a["certificate"]["noise"]["stream"], 0, "one image per file");
        assert_ne!(
            a["certificate"]["noise"]["seed"], b["certificate"]["noise"]["seed"],
            "a fresh smoothing seed per request"
        );
        assert_eq!(a["seed"], b["seed"], "the screening seed is the caller's");
    }
    assert_ne!(
        lines[0]["certificate"]["noise"]["seed"],
        lines[1]["certificate"]["noise"]["seed"]
    );

    // The receipt covers the certificate: an edited or dropped one is refused.
    let out = medguard(&["ledger", "key", "--data-dir", s(&data)]);
    let key = tmp.path().join("ledger.pub");
    std::fs::write(&key, &out.stdout).unwrap();
    let check = |line: &serde_json::Value| {
        let path = tmp.path().join("line.json");
        std::fs::write(&path, serde_json::to_vec(line).unwrap()).unwrap();
        medguard(&["ledger", "verify-receipt", s(&path), "--key", s(&key)])
    };
    let out = check(&lines[0]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let mut inflated = lines[0].clone();
    inflated["certificate"]["radius_l2"] = 5.0.into();
    let out = check(&inflated);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stdout));
    assert!(
        text(&out.stderr).contains("`certificate`"),
        "{}",
        text(&out.stderr)
    );
    let mut dropped = lines[0].clone();
    dropped.as_object_mut().unwrap().remove("certificate");
    assert_eq!(check(&dropped).status.code(), Some(1));

    // Admission prints what the model was made from and what it certifies.
    let out = medguard(&["verify", s(&model), "--data-dir", s(&data)]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let shown = text(&out.stdout);
    for want in [
        "certified predictions: randomized smoothing, sigma 0.375, 400 samples, alpha 0.001, required L2 radius 0.25",
        "trained from: data pneumoniamnist.npz (sha256 ",
        "trained from: splits splits.json",
        "training seeds: ",
        "training libraries: ",
        "torch=2.15.0",
    ] {
        assert!(shown.contains(want), "{want:?} in {shown}");
    }
    // And the admission entry records it.
    let out = medguard(&["ledger", "show", "--json", "--data-dir", s(&data)]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("\"training\":{\"inputs\":[{\"role\":\"data\""),
        "{}",
        text(&out.stdout)
    );
}

/// The 8-bit pixels of a bundled sample as the certifiable model reads them.
pub(crate) fn sample_pixels(name: &str) -> Vec<u8> {
    let bytes = std::fs::read(sample(name)).unwrap();
    let manifest: serde_json::Value = serde_json::from_slice(
        &std::fs::read(committed_smoothed_dir().join("manifest.json")).unwrap(),
    )
    .unwrap();
    let spec: medguard_attest::InputSpec =
        serde_json::from_value(manifest["input"].clone()).unwrap();
    medguard::input::decode(&bytes, &spec, 1)
        .unwrap()
        .data
        .iter()
        .map(|v| (v * 255.0).round() as u8)
        .collect()
}

/// The pixels of [`boundary_blend`].
fn blend_pixels() -> Vec<u8> {
    let pixels = |name: &str| -> Vec<f32> {
        sample_pixels(name)
            .iter()
            .map(|&v| f32::from(v) / 255.0)
            .collect()
    };
    let (a, b) = (pixels("normal-1.png"), pixels("pneumonia-1.png"));
    a.iter()
        .zip(&b)
        .map(|(x, y)| ((0.55 * x + 0.45 * y) * 255.0).round() as u8)
        .collect()
}

/// Writes an .npz of `arrays` (uint8 images [N, 28, 28] or 1-D arrays).
pub(crate) fn write_npz(path: &Path, arrays: Vec<(&str, NpzArray)>) {
    let mut npz = ndarray_npy::NpzWriter::new(std::fs::File::create(path).unwrap());
    for (name, array) in arrays {
        match array {
            NpzArray::Images(pixels) => npz.add_array(
                name,
                &ndarray::Array3::from_shape_vec((pixels.len() / 784, 28, 28), pixels).unwrap(),
            ),
            NpzArray::U8(v) => npz.add_array(name, &ndarray::Array1::from(v)),
            NpzArray::I32(v) => npz.add_array(name, &ndarray::Array1::from(v)),
            NpzArray::I64(v) => npz.add_array(name, &ndarray::Array1::from(v)),
            NpzArray::Bool(v) => npz.add_array(name, &ndarray::Array1::from(v)),
        }
        .unwrap();
    }
    npz.finish().unwrap();
}

pub(crate) enum NpzArray {
    Images(Vec<u8>),
    U8(Vec<u8>),
    I32(Vec<i32>),
    I64(Vec<i64>),
    Bool(Vec<bool>),
}

/// `medguard eval` on a certifiable model judges an attack set with the
/// whole guard, image by image against the clean image it names: here the
/// "attacks" are the clean images themselves (no change, inside the radius)
/// each clean image swapped for the other class's (accepted with the other
/// label: silent flips, far outside any radius), and the boundary blend,
/// which screening or its certificate flags (not silent).
#[test]
fn eval_counts_silent_flips_inside_and_outside_the_certified_radius() {
    let tmp = tempfile::tempdir().unwrap();
    let (normal, pneumonia) = (
        sample_pixels("normal-1.png"),
        sample_pixels("pneumonia-1.png"),
    );
    let clean = tmp.path().join("clean.npz");
    write_npz(
        &clean,
        vec![
            (
                "test_images",
                NpzArray::Images([normal.clone(), pneumonia.clone()].concat()),
            ),
            ("test_labels", NpzArray::U8(vec![0, 1])),
        ],
    );
    let sets = tmp.path().join("sets");
    std::fs::create_dir(&sets).unwrap();
    write_npz(
        &sets.join("swap.npz"),
        vec![
            (
                "images",
                NpzArray::Images(
                    [
                        normal.clone(),
                        pneumonia.clone(),
                        normal,
                        pneumonia,
                        blend_pixels(),
                    ]
                    .concat(),
                ),
            ),
            // int32, as NumPy writes on some platforms.
            ("source_index", NpzArray::I32(vec![0, 0, 1, 1, 1])),
            ("clean_pred", NpzArray::U8(vec![0, 0, 1, 1, 1])),
            (
                "flipped",
                NpzArray::Bool(vec![false, true, true, false, true]),
            ),
        ],
    );
    let report_path = tmp.path().join("eval.json");
    let eval = || {
        medguard(&[
            "eval",
            s(&committed_smoothed_dir()),
            "--clean",
            s(&clean),
            "--sets",
            s(&sets),
            "--out",
            s(&report_path),
            "--bootstrap",
            "10",
        ])
    };
    let out = eval();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("silent flips"));
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&report_path).unwrap()).unwrap();
    let g = &report["attacks"][0]["guarded"];
    assert_eq!(g["attempted"], 5, "{g}");
    assert_eq!(report["attacks"][0]["flipped"], 3);
    assert_eq!(g["inside_radius"]["images"], 2, "{g}");
    assert_eq!(g["inside_radius"]["silent_flips"], 0, "{g}");
    assert_eq!(g["outside_radius"]["images"], 3, "{g}");
    assert_eq!(g["outside_radius"]["silent_flips"], 2, "{g}");
    assert_eq!(g["silent_flips"]["value"], 0.4);
    assert_eq!(
        g["accepted"]["value"], 0.8,
        "the blend is not accepted: {g}"
    );
    assert_eq!(g["accepted_clean_label"]["value"], 0.4);

    // A source index past the clean images is a clear error, not a panic.
    write_npz(
        &sets.join("swap.npz"),
        vec![
            ("images", NpzArray::Images(sample_pixels("normal-1.png"))),
            ("source_index", NpzArray::I64(vec![2])),
            ("flipped", NpzArray::Bool(vec![true])),
        ],
    );
    let out = eval();
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert_one_line_error(&out);
    assert!(
        text(&out.stderr).contains("`source_index` 2 is past the 2 clean images"),
        "{}",
        text(&out.stderr)
    );
    write_npz(
        &sets.join("swap.npz"),
        vec![
            ("images", NpzArray::Images(sample_pixels("normal-1.png"))),
            ("source_index", NpzArray::I64(vec![-1])),
            ("flipped", NpzArray::Bool(vec![true])),
        ],
    );
    let out = eval();
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert_one_line_error(&out);
    assert!(
        text(&out.stderr).contains("`source_index` holds a negative value"),
        "{}",
        text(&out.stderr)
    );
}

/// Normal-1 and pneumonia-1 blended half and half (0.45 of the latter),
/// as an 8-bit .npy: near the decision boundary, so its noised copies split
/// (about 230 to 170 of 400 when measured) and no radius reaches 0.25,
/// whatever the noise draws.
fn boundary_blend(dir: &Path) -> PathBuf {
    let path = dir.join("blend.npy");
    ndarray::Array3::from_shape_vec((1, 28, 28), blend_pixels())
        .unwrap()
        .write_npy(std::fs::File::create(&path).unwrap())
        .unwrap();
    path
}

#[test]
fn a_label_the_certificate_does_not_cover_is_flagged_and_withheld_under_enforce() {
    let tmp = tempfile::tempdir().unwrap();
    let model = smoothed_copy(tmp.path(), |_| {});
    let blend = boundary_blend(tmp.path());
    let run = |policy: &str| {
        // Screening's seed fixed, so its verdict repeats; the smoothing
        // noise is the operating system's either way.
        let out = medguard(&[
            "predict",
            "--json",
            "--seed",
            "5",
            "--policy",
            policy,
            s(&model),
            s(&blend),
            s(&sample("pneumonia-1.png")),
        ]);
        (out.status.code(), json_lines(&out))
    };
    let (code, lines) = run("enforce");
    assert_eq!(code, Some(1), "a withheld label is a refusal");
    let uncovered = &lines[0];
    assert_eq!(uncovered["verdict"], "flag", "{uncovered}");
    assert!(uncovered["label"].is_null() && uncovered["probabilities"].is_null());
    let c = &uncovered["certificate"];
    assert_eq!(c["certified"], false);
    assert!(c["radius_l2"].as_f64().unwrap_or(0.0) < 0.25, "{c}");
    // The votes are the smoothed classifier's answer: withheld with the
    // label, here and in the signed entry the receipt carries.
    assert!(c["votes"].is_null() && c["class"].is_null(), "{c}");
    let entry = uncovered["receipt"]["entry"].as_str().unwrap();
    assert!(
        entry.contains("\"votes\":null") && entry.contains("\"label\":null"),
        "{entry}"
    );
    // The clean X-ray is certified and keeps its label.
    assert_eq!(lines[1]["label"], "pneumonia");
    assert_eq!(lines[1]["certificate"]["certified"], true);

    let (code, lines) = run("flag-only");
    assert_eq!(code, Some(0));
    assert_eq!(lines[0]["verdict"], "flag");
    assert!(lines[0]["label"].is_string(), "flag-only shows it, flagged");
    let votes = lines[0]["certificate"]["votes"].as_array().unwrap();
    assert_eq!(votes.iter().map(|v| v.as_u64().unwrap()).sum::<u64>(), 400);
}

#[test]
fn a_request_over_its_time_budget_is_refused_and_the_next_file_still_runs() {
    let tmp = tempfile::tempdir().unwrap();
    let model = smoothed_copy(tmp.path(), |_| {});
    // 400 noised copies take hundreds of milliseconds per image; each file
    // is a request of its own and gets the whole budget again.
    let out = medguard(&[
        "predict",
        "--json",
        "--request-budget-ms",
        "20",
        "--data-dir",
        s(&tmp.path().join("data")),
        s(&model),
        s(&sample("normal-2.png")),
        s(&sample("pneumonia-1.png")),
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let lines = json_lines(&out);
    assert_eq!(lines.len(), 2, "one answer per file");
    for line in &lines {
        let error = line["error"].as_str().unwrap_or_default();
        assert!(error.contains("20ms time budget"), "{line}");
    }
    // eval runs many images in each sandbox: a request budget means nothing there.
    let out = medguard(&[
        "eval",
        "--request-budget-ms",
        "5000",
        s(&model),
        "--clean",
        s(&tmp.path().join("none.npz")),
        "--out",
        s(&tmp.path().join("eval.json")),
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert_one_line_error(&out);
    assert!(text(&out.stderr).contains("applies to predict, serve and pacs"));
    // A budget of nothing is a usage error, not a refusal of every file.
    let out = medguard(&["predict", "--request-budget-ms", "0", s(&model)]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("--request-budget-ms"));
}

#[test]
fn a_requirement_no_vote_count_can_meet_is_refused_at_admission() {
    let tmp = tempfile::tempdir().unwrap();
    let model = smoothed_copy(tmp.path(), |m| {
        m["certification"]["required_radius_l2"] = 0.9.into();
    });
    let out = medguard(&["verify", s(&model)]);
    assert_ne!(out.status.code(), Some(0));
    let err = text(&out.stderr);
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(
        err.contains("unreachable") && err.contains("use at least"),
        "{err}"
    );
}
