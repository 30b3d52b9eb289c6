#!/usr/bin/env bash
# Installs what building medguard needs beyond a stock Rust toolchain:
# the wasm target the sandbox guest is compiled for, plus rustfmt and clippy.
set -euo pipefail
rustup target add wasm32-unknown-unknown
rustup component add rustfmt clippy
