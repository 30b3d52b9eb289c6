//! The demo page in the system Chromium, end to end (`tests/e2e.mjs` drives
//! it with Playwright), held to `medguard predict --json` answer for answer.
//!
//! Needs the built site and the npm tools: `scripts/test.sh` builds them with
//! `scripts/web.sh build` and sets `MEDGUARD_WEB_SITE`; without it the test
//! is ignored.

#![cfg(not(target_arch = "wasm32"))]
#![allow(clippy::unwrap_used)] // Tests fail loudly by design.

use std::path::{Path, PathBuf};
use std::process::Command;

use medguard_tests::{assert_json_close, model_dir, repo_root};
use serde_json::Value;

/// `target/<profile>/medguard`, which `cargo test --workspace` builds.
fn medguard_bin() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let bin = exe.parent().unwrap().parent().unwrap().join("medguard");
    assert!(
        bin.exists(),
        "{} is missing: test the workspace",
        bin.display()
    );
    bin
}

fn medguard(data: &Path, args: &[&str]) -> std::process::Output {
    Command::new(medguard_bin())
        .args(args)
        .env(
            "MEDGUARD_CACHE_DIR",
            repo_root().join("target/test-guest-cache"),
        )
        .env(
            "MEDGUARD_TRUST_POLICY",
            repo_root().join("models/trust/demo-policy.toml"),
        )
        .env("MEDGUARD_DATA_DIR", data)
        .output()
        .unwrap()
}

/// `medguard predict --json --seed SEED FILE` with a fresh ledger: its one line.
fn predict(file: &Path, seed: u64) -> Value {
    let data = tempfile::tempdir().unwrap();
    let model = model_dir();
    let out = medguard(
        data.path(),
        &[
            "predict",
            "--json",
            "--seed",
            &seed.to_string(),
            model.to_str().unwrap(),
            file.to_str().unwrap(),
        ],
    );
    // Exit 1 for a flagged or rejected input: the line is the answer.
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stderr)))
}

#[test]
#[ignore = "needs the built web package and Chromium: scripts/test.sh sets MEDGUARD_WEB_SITE"]
fn the_demo_page_answers_as_the_cli_and_sends_nothing() {
    let site = PathBuf::from(std::env::var_os("MEDGUARD_WEB_SITE").expect("MEDGUARD_WEB_SITE"));
    let out = repo_root().join("target/web-e2e");
    std::fs::create_dir_all(&out).unwrap();
    let samples = model_dir().join("samples");
    let adversarial = model_dir().join("adversarial");
    let dicom = repo_root().join("tests/dicom/fixtures");
    let junk = out.join("not-an-image.png");
    std::fs::write(&junk, b"GIF89a, whatever the name says").unwrap();
    let mut files: Vec<PathBuf> = ["normal-1", "normal-2", "pneumonia-1", "pneumonia-3"]
        .iter()
        .map(|s| samples.join(format!("{s}.png")))
        .collect();
    files.extend([
        adversarial.join("pgd8-1.png"),
        adversarial.join("pgd8-2.png"),
    ]);
    files.extend([
        dicom.join("chest-explicit-le.dcm"),
        dicom.join("chest-jpeg-baseline.dcm"),
    ]);
    files.extend([dicom.join("refused-mr.dcm"), junk.clone()]);

    // A genuine result with its receipt and the ledger's key, for the
    // page's receipt check.
    let ledger = tempfile::tempdir().unwrap();
    let model = model_dir();
    let predicted = medguard(
        ledger.path(),
        &[
            "predict",
            "--json",
            "--seed",
            "7",
            model.to_str().unwrap(),
            files[0].to_str().unwrap(),
        ],
    );
    assert!(
        !predicted.stdout.is_empty(),
        "{}",
        String::from_utf8_lossy(&predicted.stderr)
    );
    let result_file = out.join("result.json");
    std::fs::write(&result_file, &predicted.stdout).unwrap();
    let key = medguard(ledger.path(), &["ledger", "key"]);
    assert!(
        key.status.success(),
        "{}",
        String::from_utf8_lossy(&key.stderr)
    );
    let key_file = out.join("ledger.key");
    std::fs::write(&key_file, &key.stdout).unwrap();

    let node = Command::new("node")
        .arg(repo_root().join("web/tests/e2e.mjs"))
        .arg(&site)
        .arg(&out)
        .args(&files)
        .arg("--verify")
        .args([&result_file, &key_file])
        // Damaged RLE data on which dicom-rs 0.10 panics: in the browser a
        // trap, after which the client starts a fresh worker with the module
        // it already has; the next file is served.
        .arg("--trap")
        .args([
            repo_root().join("web/tests/fixtures/rle-decoder-panic.dcm"),
            samples.join("normal-3.png"),
        ])
        .current_dir(repo_root().join("web"))
        .output()
        .unwrap();
    assert!(
        node.status.success(),
        "e2e.mjs failed:\n{}\n{}",
        String::from_utf8_lossy(&node.stdout),
        String::from_utf8_lossy(&node.stderr)
    );
    let report: Value = serde_json::from_slice(&node.stdout).unwrap();
    std::fs::write(out.join("report.json"), &node.stdout).unwrap();

    // After the model loaded, not one request, to any origin.
    assert_eq!(
        report["requests_after_ready"],
        Value::Array(vec![]),
        "{report}"
    );
    let before = report["requests_before_ready"].as_array().unwrap();
    assert!(
        before
            .iter()
            .all(|u| u.as_str().unwrap().starts_with("GET http://127.0.0.1:")),
        "{before:?}"
    );

    assert_eq!(report["console"], Value::Array(vec![]), "{report}");
    let results = report["results"].as_array().unwrap();
    assert_eq!(results.len(), files.len(), "{report}");
    let mut rejected = 0;
    for (file, result) in files.iter().zip(results) {
        let name = file.file_name().unwrap().to_str().unwrap();
        assert_eq!(result["input"], name);
        if file == &junk || name.starts_with("refused-") {
            let error = result["error"].as_str().unwrap();
            assert!(error.contains("refused"), "{name}: {error}");
            continue;
        }
        let page = &result["predictions"][0];
        assert!(page.is_object(), "{name}: {result}");
        let seed = page["seed"].as_u64().unwrap();
        let cli = predict(file, seed);
        for field in [
            "label",
            "probabilities",
            "verdict",
            "p_value",
            "statistics",
            "integrity",
            "seed",
            "model",
            "dicom",
        ] {
            assert_json_close(&page[field], &cli[field], 1e-6, &format!("{name}: {field}"));
        }
        if page["verdict"] == "reject" {
            assert_eq!(page["label"], Value::Null);
            assert_eq!(page["probabilities"], Value::Null);
            rejected += 1;
        }
    }
    assert_eq!(rejected, 2, "both PGD-8 images are rejected, as by the CLI");

    let tamper = report["tamper"].as_str().unwrap();
    assert!(
        tamper.starts_with("Refused:") && tamper.contains("model.onnx"),
        "{tamper}"
    );
    let verified = &report["verified"];
    assert!(
        verified["genuine"].as_str().unwrap().starts_with("Valid:"),
        "{verified}"
    );
    let edited = verified["edited"].as_str().unwrap();
    assert!(
        edited.starts_with("Refused:") && edited.contains("`label`"),
        "{edited}"
    );
    let trapped = report["trapped"].as_array().unwrap();
    let error = trapped[0]["error"].as_str().unwrap();
    assert!(
        error.contains("stopped on this input") && error.contains("restarted"),
        "{error}"
    );
    assert_eq!(trapped[1]["predictions"][0]["label"], "normal", "{report}");
    // With calls in flight at once, only the trapping one fails.
    let concurrent = trapped[2].as_array().unwrap();
    assert_eq!(concurrent[0], "normal", "{report}");
    assert!(
        concurrent[1].as_str().unwrap().contains("was restarted"),
        "{report}"
    );
    assert_eq!(concurrent[2], "normal", "{report}");
    // The restart fetches the worker's two scripts again and nothing else:
    // not the module (the first one's bytes are reused), no data.
    for request in report["requests_during_restart"].as_array().unwrap() {
        let request = request.as_str().unwrap();
        assert!(
            request.starts_with("GET http://127.0.0.1:")
                && (request.ends_with("/package/worker.js")
                    || request.ends_with("/package/dist/medguard_web.js")),
            "{request}"
        );
    }
    assert!(out.join("demo.png").exists());
}

/// The module every page downloads has relaxed SIMD only where the guest
/// core's source asks for it, as the sandbox's guest (tests/suite/parity.rs):
/// its kernel's fused multiply-add. A relaxed `max` or `min` would let NaNs
/// through with a sign that differs between CPUs (.cargo/config.toml), and
/// browsers run it as the CPU does.
#[test]
#[ignore = "needs the built web package: scripts/test.sh sets MEDGUARD_WEB_SITE"]
fn the_web_module_has_no_relaxed_simd_but_its_kernels_fused_multiply_add() {
    let site = PathBuf::from(std::env::var_os("MEDGUARD_WEB_SITE").expect("MEDGUARD_WEB_SITE"));
    let module = std::fs::read(site.join("package/dist/medguard_web_bg.wasm")).unwrap();
    let found = medguard_tests::relaxed_simd(&module);
    assert!(
        found.others.is_empty(),
        "relaxed SIMD in the web module: {:?}",
        found.others
    );
    // All in one function, the tile product, whole steps of eight. (The
    // web profile builds the guest core for size, so LLVM unrolls it less
    // than in the sandbox's guest, which has 48.)
    let madds = &found.madds_per_function;
    assert!(
        madds.len() == 1 && madds[0].is_multiple_of(8),
        "fused multiply-adds per function: {madds:?}"
    );
}
