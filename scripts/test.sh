#!/usr/bin/env bash
# Every check CI runs: format, lints, and the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
scripts/system-packages.sh
cargo fmt --all --check
# In the release profile, like the tests below, so that build scripts and
# proc macros compile once for both.
cargo clippy --workspace --all-targets --release -- -D warnings
# The guest core's wasm-only code (its matrix-product kernel, the pooling's
# and the NaN scan's vector paths) compiles only for wasm: lint it there.
cargo clippy --locked --package medguard-guest-core --target wasm32-unknown-unknown \
  --profile web --all-targets -- -D warnings
# The ledger without its file store (what the browser build links) builds on its own.
cargo check --package medguard-ledger --no-default-features
# The interop tests run against the real OpenSSF model_signing tool,
# installed (pinned) in a venv outside the repository. It is #[ignore]d so
# that a bare `cargo test` needs no Python; here it runs in the same
# invocation (a second one would resolve other features and rebuild).
MEDGUARD_MODEL_SIGNING=$(scripts/python-tool.sh model-signing)
# The server's interop test drives `medguard serve` with Triton's own Python
# client, from a pinned venv the same way.
MEDGUARD_TRITON_PYTHON=$(scripts/python-tool.sh triton-client)
# The DICOM tests read medguard's structured reports back with highdicom and
# run pydicom's own test files through `predict` (pinned venv, likewise).
MEDGUARD_DICOM_PYTHON=$(scripts/python-tool.sh dicom)
# The Python package (python/, ctypes over the C ABI) runs its pytest suite
# against this build's library (pinned venv, likewise).
MEDGUARD_EMBED_PYTHON=$(scripts/python-tool.sh embed)
# The browser build: the package and the demo site (scripts/web.sh installs
# the pinned wasm-bindgen CLI), the npm tools of its end-to-end test, and
# the wasm module's own tests in headless Chromium. Building it is also the
# check that what it reuses (attestation, screening, the guest core, input,
# DICOM, the ledger's formats) stays wasm-clean; its wasm-bindgen surface
# compiles natively too, so the clippy run above lints it.
MEDGUARD_WEB_SITE=$(scripts/web.sh build)
(cd web && npm ci --silent --no-audit --no-fund)
(
  cd web
  export CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_RUSTFLAGS="-C target-feature=+simd128"
  export CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_RUNNER=wasm-bindgen-test-runner
  export CHROMEDRIVER=/usr/bin/chromedriver
  cargo test --locked --package medguard-web --target wasm32-unknown-unknown --profile web --test wasm
  # The guest core's wasm-only code (its matrix-product kernel, the max
  # pooling's vector path, the NaN scan) against tract, in wasm, under
  # Node (no configure! in that crate: Node is the runner's default), with
  # relaxed SIMD for the kernel's fused multiply-add.
  NODE_ARGS=--experimental-wasm-relaxed-simd \
    cargo test --locked --package medguard-guest-core --target wasm32-unknown-unknown --profile web --lib
)
# `medguard pacs` round-trips a study through a real Orthanc with its
# DICOMweb plugin (Debian packages, scripts/system-packages.sh).
MEDGUARD_ORTHANC=/usr/sbin/Orthanc
export MEDGUARD_MODEL_SIGNING MEDGUARD_TRITON_PYTHON MEDGUARD_DICOM_PYTHON MEDGUARD_EMBED_PYTHON MEDGUARD_ORTHANC
export MEDGUARD_WEB_SITE
cargo test --workspace --release -- --include-ignored
# The library example, built by the test run above, on the bundled model as
# the tests renewed it (re-signed with the demo key to expire over a year
# from now: tests/src/lib.rs, model_dir), so that it runs on any date.
example_data=$(mktemp -d)
trap 'rm -rf "$example_data"' EXIT
model=$(cat target/renewed-models/current)
target/release/examples/classify "$example_data" models/trust/demo-policy.toml \
  "$model" "$model/samples/normal-1.png"
# The kernel microbenchmark's module, its two kernels compared bit for bit
# under the sandbox's engine settings (README, Measurements), so that it
# cannot rot unnoticed.
KERNEL_PROBE_BIN=target/release/examples/kernel_probe scripts/kernel-probe.sh --check
# Every fuzz target but the guest's, a few seconds each from the committed
# seeds (fuzz/README.md; installs a nightly toolchain and cargo-fuzz).
scripts/fuzz.sh
