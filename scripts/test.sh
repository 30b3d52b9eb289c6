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
# Interop both ways with the real OpenSSF model_signing tool, installed
# (pinned) in a venv outside the repository.
MEDGUARD_MODEL_SIGNING=$(scripts/model-signing.sh)
export MEDGUARD_MODEL_SIGNING
cargo test --release --package medguard --test cli -- --ignored the_real_model_signing_tool_agrees_both_ways
