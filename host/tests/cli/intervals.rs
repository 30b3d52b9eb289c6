//! Certified predictions by interval bound propagation end to end (issue
//! 15, item 4): the L-infinity certificate in `predict --json`, the same
//! every time and covered by the receipt; a requirement the bounds do not
//! reach flags and withholds; `eval` finds no silent flip inside the radius;
//! a certification section that mixes the methods is refused at admission.

use std::path::{Path, PathBuf};

use crate::certify::{NpzArray, certified_copy, sample, sample_pixels, write_npz};
use crate::{assert_one_line_error, json_lines, medguard, s, text};

/// The manifest's requirement, two grey levels.
const REQUIRED: f64 = 2.0 / 255.0;

fn ibp_copy(dir: &Path, edit: impl FnOnce(&mut serde_json::Value)) -> PathBuf {
    certified_copy(dir, "pneumonia-ibp", edit)
}

#[test]
fn interval_certificates_are_deterministic_and_covered_by_the_receipt() {
    let tmp = tempfile::tempdir().unwrap();
    let model = ibp_copy(tmp.path(), |_| {});
    let data = tmp.path().join("data");
    let predict = || {
        let out = medguard(&[
            "predict",
            "--json",
            "--data-dir",
            s(&data),
            s(&model),
            s(&sample("normal-1.png")),
            s(&sample("pneumonia-1.png")),
        ]);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
        json_lines(&out)
    };
    let lines = predict();
    assert_eq!(lines.len(), 2);
    for (line, (label, class)) in lines.iter().zip([("normal", 0), ("pneumonia", 1)]) {
        let c = &line["certificate"];
        assert_eq!(c["method"], "interval-bound-propagation", "{line}");
        // The requirement as the guest applied it: rounded up to f32.
        let required = c["required_radius_linf"].as_f64().unwrap();
        assert!(required >= REQUIRED && required - REQUIRED < 1e-9, "{c}");
        assert!(c["radius_linf"].as_f64().unwrap() >= required, "{c}");
        assert!(c["margin"].as_f64().unwrap() > 0.0, "{c}");
        assert_eq!(c["certified"], true);
        assert_eq!(c["class"], class);
        assert_eq!(line["label"], label);
        assert_eq!(line["verdict"], "accept");
        // Nothing of smoothing's: no votes, no noise.
        assert!(c.get("votes").is_none() && c.get("noise").is_none(), "{c}");
    }
    // No noise: the same image gets the same certificate every time.
    for (a, b) in lines.iter().zip(&predict()) {
        assert_eq!(a["certificate"], b["certificate"]);
    }

    // The receipt covers the certificate: an inflated radius is refused.
    let out = medguard(&["ledger", "key", "--data-dir", s(&data)]);
    let key = tmp.path().join("ledger.pub");
    std::fs::write(&key, &out.stdout).unwrap();
    let check = |line: &serde_json::Value| {
        let path = tmp.path().join("line.json");
        std::fs::write(&path, serde_json::to_vec(line).unwrap()).unwrap();
        medguard(&["ledger", "verify-receipt", s(&path), "--key", s(&key)])
    };
    assert_eq!(check(&lines[0]).status.code(), Some(0));
    let mut inflated = lines[0].clone();
    inflated["certificate"]["radius_linf"] = 0.5.into();
    let out = check(&inflated);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stdout));
    assert!(text(&out.stderr).contains("`certificate`"));

    let out = medguard(&["verify", s(&model), "--data-dir", s(&data)]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains(
            "certified predictions: interval bound propagation, required L-infinity radius"
        ),
        "{}",
        text(&out.stdout)
    );
}

#[test]
fn a_requirement_beyond_the_bounds_flags_and_withholds_under_enforce() {
    let tmp = tempfile::tempdir().unwrap();
    // Half the pixel range: no bound of this network gets near it.
    let model = ibp_copy(tmp.path(), |m| {
        m["certification"]["required_radius_linf"] = 0.5.into();
    });
    let run = |policy: &str| {
        let out = medguard(&[
            "predict",
            "--json",
            "--policy",
            policy,
            s(&model),
            s(&sample("normal-1.png")),
        ]);
        (out.status.code(), json_lines(&out))
    };
    let (code, lines) = run("enforce");
    assert_eq!(code, Some(1), "a withheld label is a refusal");
    let line = &lines[0];
    assert_eq!(line["verdict"], "flag", "{line}");
    assert!(line["label"].is_null() && line["probabilities"].is_null());
    let c = &line["certificate"];
    assert_eq!(c["certified"], false);
    // What it does reach is still reported; what gives the label away is not.
    assert!(c["radius_linf"].as_f64().unwrap() < 0.5, "{c}");
    assert!(c["class"].is_null() && c["margin"].is_null(), "{c}");
    let entry = line["receipt"]["entry"].as_str().unwrap();
    assert!(
        entry.contains("\"margin\":null") && entry.contains("\"label\":null"),
        "{entry}"
    );

    let (code, lines) = run("flag-only");
    assert_eq!(code, Some(0));
    assert_eq!(lines[0]["verdict"], "flag");
    assert_eq!(lines[0]["label"], "normal", "flag-only shows it, flagged");
    assert!(lines[0]["certificate"]["margin"].as_f64().unwrap() < 0.0);
}

/// Every pixel of `pixels` moved by `levels` grey levels, up and down in a
/// checkerboard, within the 8-bit range.
fn checkerboard(pixels: &[u8], levels: i16) -> Vec<u8> {
    pixels
        .iter()
        .enumerate()
        .map(|(i, &v)| {
            let sign = if (i % 28 + i / 28) % 2 == 0 { 1 } else { -1 };
            (i16::from(v) + sign * levels).clamp(0, 255) as u8
        })
        .collect()
}

/// `medguard eval` on the interval-certified model: images moved by at
/// most the clean image's certified radius keep their label (no silent
/// flip inside it); each clean image swapped for the other class's is a
/// silent flip far outside it.
#[test]
fn eval_finds_no_silent_flip_inside_the_interval_radius() {
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
        &sets.join("moved.npz"),
        vec![
            (
                "images",
                NpzArray::Images(
                    [
                        checkerboard(&normal, 2),
                        checkerboard(&pneumonia, 2),
                        pneumonia.clone(),
                        normal.clone(),
                    ]
                    .concat(),
                ),
            ),
            ("source_index", NpzArray::I64(vec![0, 1, 0, 1])),
            ("clean_pred", NpzArray::U8(vec![0, 1, 0, 1])),
            ("flipped", NpzArray::Bool(vec![false, false, true, true])),
        ],
    );
    let report_path = tmp.path().join("eval.json");
    let out = medguard(&[
        "eval",
        s(&crate::root().join("models/pneumonia-ibp")),
        "--clean",
        s(&clean),
        "--sets",
        s(&sets),
        "--out",
        s(&report_path),
        "--bootstrap",
        "10",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("certified (interval bound propagation)"),
        "{}",
        text(&out.stdout)
    );
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&report_path).unwrap()).unwrap();
    let c = &report["certified"];
    assert!(c["smoothing"].is_null(), "{c}");
    assert_eq!(c["interval_bounds"]["required_radius_linf"], REQUIRED);
    assert_eq!(c["certified_at_requirement"], 1.0, "{c}");
    // Reported at 0, 1, 2 and 4 grey levels, the requirement among them.
    let at: Vec<f64> = c["at"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["radius_linf"].as_f64().unwrap() * 255.0)
        .collect();
    assert_eq!(at.len(), 4, "{at:?}");
    assert!(
        at.iter()
            .zip([0.0, 1.0, 2.0, 4.0])
            .all(|(a, b)| (a - b).abs() < 1e-4),
        "{at:?}"
    );
    let g = &report["attacks"][0]["guarded"];
    assert_eq!(g["inside_radius"]["images"], 2, "{g}");
    assert_eq!(g["inside_radius"]["silent_flips"], 0, "{g}");
    assert_eq!(g["inside_radius"]["class_changed"], 0, "{g}");
    assert_eq!(g["outside_radius"]["class_changed"], 2, "{g}");
    assert_eq!(g["outside_radius"]["images"], 2, "{g}");
    assert_eq!(g["outside_radius"]["silent_flips"], 2, "{g}");
    assert_eq!(g["accepted_clean_label"]["value"], 0.5, "{g}");
}

#[test]
fn a_certification_section_that_mixes_the_methods_is_refused_at_admission() {
    let tmp = tempfile::tempdir().unwrap();
    let refused = |edit: fn(&mut serde_json::Value), want: &str| {
        let dir = tempfile::tempdir_in(tmp.path()).unwrap();
        let model = ibp_copy(dir.path(), edit);
        let out = medguard(&["verify", s(&model)]);
        assert_eq!(out.status.code(), Some(1), "{}", text(&out.stdout));
        assert_one_line_error(&out);
        assert!(
            text(&out.stderr).contains(want),
            "{want:?} in {}",
            text(&out.stderr)
        );
    };
    refused(
        |m| m["certification"]["sigma"] = 0.25.into(),
        "belong to randomized smoothing",
    );
    refused(
        |m| m["certification"]["method"] = "interval-bounds".into(),
        "interval-bound-propagation",
    );
    refused(
        |m| m["certification"]["required_radius_linf"] = (-0.01).into(),
        "required_radius_linf must be finite and at least 0",
    );
    refused(
        |m| {
            m["certification"]
                .as_object_mut()
                .unwrap()
                .remove("required_radius_linf");
        },
        "needs `required_radius_linf`",
    );
}
