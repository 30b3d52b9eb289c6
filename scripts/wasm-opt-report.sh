#!/usr/bin/env bash
# What binaryen's wasm-opt does to the sandbox guest (issue 16): its size,
# and guest/native inference in the latency benchmark, with and without it.
#
#   scripts/wasm-opt-report.sh            (flags: -O3)
#   WASM_OPT_FLAGS="-O2" scripts/wasm-opt-report.sh
#
# Needs a binaryen that reads the final relaxed-SIMD opcodes: Debian
# bookworm's binaryen 108 stops at the guest's first f32x4.relaxed_madd
# ("invalid code after SIMD prefix: 270"). Installs Debian's binaryen if
# wasm-opt is missing (needs root); WASM_OPT names another. Builds the
# host twice through host/build.rs's MEDGUARD_GUEST_WASM_OPT hook, so the
# benchmark's pinned guest is the optimised one, then rebuilds the normal
# host. Writes target/bench/wasm-opt/{plain,optimised}.json (the latency
# benchmark's figures) and prints the comparison.
set -euo pipefail
cd "$(dirname "$0")/.."
wasm_opt=${WASM_OPT:-wasm-opt}
command -v "$wasm_opt" >/dev/null || { apt-get update -qq && apt-get install -y -qq binaryen; }
flags=${WASM_OPT_FLAGS:--O3}
# The guest's features, which wasm-opt must be told to keep.
features="--enable-simd --enable-relaxed-simd --enable-bulk-memory --enable-sign-ext --enable-nontrapping-float-to-int --enable-mutable-globals --enable-multivalue --enable-reference-types"
out=$PWD/target/bench/wasm-opt
mkdir -p "$out"
MEDGUARD_BENCH_JSON=$out/plain.json cargo bench -p medguard-tests --bench latency
MEDGUARD_GUEST_WASM_OPT="$wasm_opt $flags $features" MEDGUARD_BENCH_JSON=$out/optimised.json \
  cargo bench -p medguard-tests --bench latency
# Back to the normal guest, so that later builds do not pin the optimised one.
cargo build --release -p medguard-tests --benches >/dev/null
python3 - "$out" "$flags" <<'PY'
import json, sys
out, flags = sys.argv[1], sys.argv[2]
load = lambda n: {f["name"]: f["value"] for f in json.load(open(f"{out}/{n}.json"))}
plain, opt = load("plain"), load("optimised")
print(f"wasm-opt {flags}")
for name in ["guest component size", "guest start-up, compile", "fresh sandbox with model load, guest",
             "inference batch 1, guest/native", "inference batch 16, guest/native",
             "fresh sandbox from the snapshot, p50"]:
    a, b = plain[name], opt[name]
    print(f"  {name}: {a:,.2f} -> {b:,.2f} ({b / a:.3f}x)")
PY
