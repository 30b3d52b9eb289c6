#!/usr/bin/env bash
# The main job: admit the bundled signed model under the demo trust policy and
# classify its samples in the sandbox.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo run --release --package medguard -- demo "$@"
