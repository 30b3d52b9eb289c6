#!/usr/bin/env bash
# The kernel microbenchmark (README, Measurements): the guest's wasm
# matrix-product kernel against tract's own 8x8 loop, in wasmtime, under the
# sandbox's engine settings, with wasmtime's NaN canonicalisation, and
# without the deadline check. Both kernels must agree to the bit; with
# `--check` (as scripts/test.sh runs it) that is all it does.
set -euo pipefail
cd "$(dirname "$0")/.."
rustup target add wasm32-unknown-unknown >/dev/null 2>&1
# The repository's cargo configuration builds wasm32 with the guest's
# flags (+simd128; relaxed SIMD on the kernels' own functions).
cargo build --quiet --release --manifest-path tests/kernel-probe/Cargo.toml \
  --target wasm32-unknown-unknown --target-dir target/kernel-probe
# KERNEL_PROBE_BIN: an already built `kernel_probe` example (scripts/test.sh
# passes the one its test run built, with the workspace's features).
probe=${KERNEL_PROBE_BIN:-}
if [ -z "$probe" ]; then
  cargo build --quiet --release -p medguard --example kernel_probe
  probe=target/release/examples/kernel_probe
fi
"$probe" target/kernel-probe/wasm32-unknown-unknown/release/medguard_kernel_probe.wasm "$@"
