#!/usr/bin/env bash
# The embedding layers' per-image overhead, in one run: the C ABI against
# the Rust library call (cargo bench -p medguard-embed --bench overhead),
# then the Python package against the bare C call (python/benches/overhead.py,
# in the pinned test venv). Figures go to target/bench/embed.json.
set -euo pipefail
cd "$(dirname "$0")/.."
python=$(scripts/python-tool.sh embed)
export MEDGUARD_BENCH_JSON=$PWD/target/bench/embed.json
cargo bench -p medguard-embed --bench overhead
model=$(cat target/renewed-models/current)
data=$(mktemp -d)
trap 'rm -rf "$data"' EXIT
MEDGUARD_LIBRARY=$PWD/target/release/deps/libmedguard_embed.so PYTHONPATH=$PWD/python \
  "$python" python/benches/overhead.py "$data" models/trust/demo-policy.toml "$model" \
  tests/adversarial/ci/clean.npz "$MEDGUARD_BENCH_JSON"
