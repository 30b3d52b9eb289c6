#!/usr/bin/env bash
# The kernel microbenchmark (README, Measurements): the guest's wasm
# matrix-product kernel against tract's own 8x8 loop, in wasmtime, under the
# sandbox's engine settings, with wasmtime's NaN canonicalisation, and
# without the deadline check. Both kernels must agree to the bit.
set -euo pipefail
cd "$(dirname "$0")/.."
rustup target add wasm32-unknown-unknown >/dev/null 2>&1
# The repository's cargo configuration builds wasm32 with the guest's
# flags (+simd128,+relaxed-simd).
cargo build --quiet --release --manifest-path tests/kernel-probe/Cargo.toml \
  --target wasm32-unknown-unknown --target-dir target/kernel-probe
cargo run --quiet --release -p medguard --example kernel_probe -- \
  target/kernel-probe/wasm32-unknown-unknown/release/medguard_kernel_probe.wasm
