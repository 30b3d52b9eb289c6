#!/usr/bin/env bash
# The browser build's size and per-image time next to the wasmtime guest and
# native tract (web/benches/browser.rs), in one run: target/bench/web.json.
set -euo pipefail
cd "$(dirname "$0")/.."
MEDGUARD_WEB_SITE=$(scripts/web.sh build)
export MEDGUARD_WEB_SITE
(cd web && npm ci --silent --no-audit --no-fund)
cargo bench --workspace --bench browser
