//! The `medguard` binary end to end, one test binary organised by topic:
//! `commands` (output shapes and documented exit codes), `screening`
//! (verdicts in predict, calibration reproducibility, the CI regression
//! floors on committed attack images), `signing` (the OpenSSF model-signing
//! format both ways) and `trust` (the trust policy against one named attack
//! per test, TUF's threat model).

#![allow(clippy::unwrap_used)] // Tests fail loudly by design.

mod certify;
mod commands;
mod dicom;
mod intervals;
mod ledger;
// Shared with the benchmarks (medguard-tests), which cannot be a dependency here.
#[path = "../../../tests/src/orthanc.rs"]
mod orthanc;
mod pacs;
mod regression;
mod screening;
mod serve;
mod signing;
mod trust;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_owned()
}

/// The committed model directory, exactly as a clone has it.
fn committed_model_dir() -> PathBuf {
    root().join("models/pneumonia")
}

/// The bundled model re-signed with the demo key to expire over a year from
/// today (`medguard::signing::renewal_expiry`), so that no test depends on
/// the committed manifest's own expiry date. One copy per content and year,
/// under the target directory.
fn model_dir() -> PathBuf {
    static DIR: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    DIR.get_or_init(|| {
        let pem = std::fs::read_to_string(root().join("models/trust/demo.key.pem")).unwrap();
        let key = medguard_attest::SigningKey::from_pem(&pem).unwrap();
        medguard::signing::renewed_copy(
            &committed_model_dir(),
            &Path::new(env!("CARGO_TARGET_TMPDIR")).join("renewed-models"),
            &key,
            medguard::signing::renewal_expiry(jiff::Timestamp::now()),
        )
        .unwrap()
    })
    .clone()
}

/// The demo's trust policy, which every test runs under unless it says otherwise.
fn demo_policy() -> PathBuf {
    root().join("models/trust/demo-policy.toml")
}

/// `medguard` with the test defaults: the demo trust policy, shared compiled
/// guests, and a fresh data directory per run (so that high-water marks of
/// one test never leak into another; a test that wants them passes
/// `--data-dir`).
fn medguard_command(args: &[&str]) -> (Command, tempfile::TempDir) {
    let data = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_medguard"));
    // From the repository root, as the README's commands run; the demo's
    // own data directory goes under the same temporary directory.
    cmd.args(args)
        .current_dir(root())
        .env("MEDGUARD_CACHE_DIR", root().join("target/test-guest-cache"))
        .env("MEDGUARD_TRUST_POLICY", demo_policy())
        .env("MEDGUARD_DATA_DIR", data.path().join("data"))
        .env("XDG_DATA_HOME", data.path().join("xdg"));
    (cmd, data)
}

fn medguard(args: &[&str]) -> Output {
    let (mut cmd, _data) = medguard_command(args);
    cmd.output().expect("run medguard")
}

/// A copy of the bundled model directory (manifest, model, samples) with
/// `edit` applied to its manifest, signed by `medguard sign` with `key`
/// (the demo key by default: it is public, so tests can sign with it).
fn signed_copy(
    dir: &Path,
    key: Option<&Path>,
    edit: impl FnOnce(&mut serde_json::Value),
) -> PathBuf {
    let model = dir.join("pneumonia");
    std::fs::create_dir_all(model.join("samples")).unwrap();
    std::fs::copy(model_dir().join("model.onnx"), model.join("model.onnx")).unwrap();
    std::fs::copy(
        model_dir().join("samples/normal-1.png"),
        model.join("samples/normal-1.png"),
    )
    .unwrap();
    let mut manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(model_dir().join("manifest.json")).unwrap()).unwrap();
    edit(&mut manifest);
    std::fs::write(
        model.join("manifest.json"),
        serde_json::to_vec_pretty(&manifest).unwrap(),
    )
    .unwrap();
    sign(&model, key);
    model
}

/// Signs `dir` in place with `key` (default: the demo key).
fn sign(dir: &Path, key: Option<&Path>) {
    let demo_key = root().join("models/trust/demo.key.pem");
    let key = key.unwrap_or(&demo_key);
    let out = medguard(&["sign", s(dir), "--key", s(key)]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn json_lines(out: &Output) -> Vec<serde_json::Value> {
    text(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn assert_one_line_error(out: &Output) {
    let err = text(&out.stderr);
    assert_eq!(
        err.trim_end().lines().count(),
        1,
        "error should be one line: {err:?}"
    );
}
