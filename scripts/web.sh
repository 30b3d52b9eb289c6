#!/usr/bin/env bash
# The browser build (web/README.md).
#   scripts/web.sh          build the package and serve the demo on http://127.0.0.1:8080/
#   scripts/web.sh build    build the package and the demo site only (CI)
#
# Installs what it needs: the wasm32 target, the `wasm-bindgen` CLI at the
# exact version web/Cargo.toml pins (cargo install, once), and the demo's npm
# packages from web/package-lock.json.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
mode=${1:-serve}

rustup target add wasm32-unknown-unknown >&2
version=$(sed -n 's/^wasm-bindgen = "=\(.*\)"$/\1/p' web/Cargo.toml)
if [[ "$(wasm-bindgen --version 2>/dev/null)" != "wasm-bindgen $version" ]]; then
  echo "scripts/web.sh: installing wasm-bindgen-cli $version" >&2
  # Unoptimised: it installs in under 2 minutes instead of over 6 on a
  # 2-core machine, and writes the same bytes (10 s a run instead of 1).
  cargo install --debug --quiet --force wasm-bindgen-cli --version "$version" >&2
fi

# 128-bit wasm SIMD, as the sandbox guest: tract's wasm kernels need it, and
# relaxed SIMD, which the guest core's matrix-product kernel enables on its
# own functions (the worker says so when a browser lacks either).
# Set for this target only, so native builds are untouched.
export CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_RUSTFLAGS="-C target-feature=+simd128"
cargo build --locked --package medguard-web --target wasm32-unknown-unknown --profile web >&2
dist=web/package/dist
rm -rf "$dist"
# Function names and producer notes stay out of the module every page
# downloads (about a tenth of its gzipped size).
wasm-bindgen --target web --out-dir "$dist" --out-name medguard_web \
  --remove-name-section --remove-producers-section \
  target/wasm32-unknown-unknown/web/medguard_web.wasm

# The demo site: the page, the package, the bundled model and the demo
# policy with its public key (never the private key beside it).
site=target/web-site
rm -rf "$site"
mkdir -p "$site/models/trust"
cp -r web/demo/. "$site/"
cp -r web/package "$site/package"
cp -r models/pneumonia "$site/models/pneumonia"
cp models/trust/demo-policy.toml models/trust/demo.pub.pem "$site/models/trust/"
echo "$root/$site"

if [[ "$mode" == serve ]]; then
  (cd web && npm ci --silent --no-audit --no-fund >&2)
  echo "medguard demo on http://127.0.0.1:8080/ (Ctrl-C stops it)" >&2
  exec node web/tools/serve.mjs "$site" 8080
fi
