#!/usr/bin/env bash
# Every check CI runs: format, lints, and the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo fmt --all --check
cargo clippy --workspace --all-targets -- -D warnings
# Attestation and screening arithmetic are reused by the browser build: they
# must stay wasm-clean.
cargo check --package medguard-attest --package medguard-screen --target wasm32-unknown-unknown
cargo test --workspace --release
