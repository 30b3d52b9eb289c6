//! The `medguard` binary end to end, one test binary organised by topic:
//! `commands` (output shapes and documented exit codes) and `screening`
//! (verdicts in predict, calibration reproducibility, the CI regression
//! floors on committed attack images).

#![allow(clippy::unwrap_used)] // Tests fail loudly by design.

mod commands;
mod screening;
mod signing;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_owned()
}

fn model_dir() -> PathBuf {
    root().join("models/pneumonia")
}

fn medguard(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_medguard"))
        .args(args)
        // Share compiled guests with the rest of the suite.
        .env("MEDGUARD_CACHE_DIR", root().join("target/test-guest-cache"))
        .output()
        .expect("run medguard")
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
