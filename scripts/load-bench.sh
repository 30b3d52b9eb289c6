#!/usr/bin/env bash
# Load benchmark of `medguard serve` (issue 12): oha against 127.0.0.1 at
# concurrency 1, 2, 8 and 64, next to a bare in-process loop over the same
# guard calls (host/examples/serve_baseline.rs) run in the same script, and
# the server's resident memory after 1,000 and after 10,000 requests.
# Prints a table and writes target/load-bench/summary.json.
#
#   scripts/load-bench.sh             REQUESTS (default 1000) per concurrency
#   REQUESTS=300 scripts/load-bench.sh
#
# Installs oha (pinned) with cargo into ~/.cache/medguard/tools if missing.
# Needs python3 for the summary. Ratios, not absolute times, are the result:
# run it on a quiet machine.
set -euo pipefail
cd "$(dirname "$0")/.."

OHA_VERSION=1.16.0
REQUESTS=${REQUESTS:-1000}
tools=${MEDGUARD_TOOLS:-${XDG_CACHE_HOME:-$HOME/.cache}/medguard/tools}
oha="$tools/bin/oha"
if [[ ! -x $oha || $("$oha" --version) != "oha $OHA_VERSION" ]]; then
  # (oha 1.16 does not build without a TLS feature: its default, rustls.)
  cargo install --locked --version "$OHA_VERSION" --root "$tools" oha
fi

cargo build --release --package medguard --bin medguard --example serve_baseline
medguard=target/release/medguard
baseline=target/release/examples/serve_baseline
# The tests' renewed copy of the bundled model if there is one (it never
# expires under the bench), else the committed one.
model=models/pneumonia
[[ -f target/renewed-models/current ]] && model=$(cat target/renewed-models/current)
policy=models/trust/demo-policy.toml
image=$model/samples/normal-1.png

out=target/load-bench
rm -rf "$out" && mkdir -p "$out"
work=$(mktemp -d)
server=
cleanup() {
  [[ -n $server ]] && kill "$server" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

"$baseline" --body "$out/body.json" "$policy" "$model" "$image"
for threads in 1 2; do
  "$baseline" "$work/bare-$threads" "$policy" "$model" "$image" "$REQUESTS" "$threads" \
    > "$out/bare-$threads.json"
done

"$medguard" --data-dir "$work/serve" --cache-dir "$work/cache" serve "$model" \
  --trust-policy "$policy" --listen 127.0.0.1:0 --concurrency 2 --queue 32 \
  --max-connections-per-client 128 2> "$out/serve.log" &
server=$!
for _ in $(seq 600); do
  addr=$(sed -n 's|^medguard: listening on http://\(.*\)/v2$|\1|p' "$out/serve.log")
  [[ -n $addr ]] && break
  kill -0 "$server" || { cat "$out/serve.log"; exit 1; }
  sleep 0.2
done
url="http://$addr/v2/models/pneumonia-cnn/infer"
run() {
  "$oha" --no-tui --output-format json -m POST -T application/json -D "$out/body.json" \
    -n "$1" -c "$2" "$url" > "$3"
}
rss() { awk '/^VmRSS/ {print $2}' "/proc/$server/status"; }

run 200 2 "$out/warmup.json"
for c in 1 2 8 64; do
  run "$REQUESTS" "$c" "$out/oha-c$c.json"
done
# Memory: after 1,000 requests, then after 9,000 more.
run 1000 2 "$out/rss-1k.json"
rss_1k=$(rss)
run 9000 2 "$out/rss-10k.json"
rss_10k=$(rss)
echo "{\"rss_kib_after_1000\": $rss_1k, \"rss_kib_after_10000\": $rss_10k}" > "$out/rss.json"

python3 - "$out" <<'PY'
import json, sys, pathlib
out = pathlib.Path(sys.argv[1])
bare = {t: json.loads((out / f"bare-{t}.json").read_text()) for t in (1, 2)}
rows, summary = [], {"bare": bare, "oha": {}}
for c in (1, 2, 8, 64):
    r = json.loads((out / f"oha-c{c}.json").read_text())
    s = r["summary"]
    lat = r["latencyPercentiles"]
    codes = r.get("statusCodeDistribution", {})
    errors = r.get("errorDistribution", {})
    base = bare[min(c, 2)]
    row = {
        "concurrency": c,
        "rps": s["requestsPerSec"],
        "p50_ms": lat["p50"] * 1e3,
        "p99_ms": lat["p99"] * 1e3,
        "status": codes,
        "errors": errors,
        "rps_vs_bare": s["requestsPerSec"] / base["rps"],
        "p99_over_p50": lat["p99"] / lat["p50"],
    }
    summary["oha"][c] = row
    rows.append(row)
rss = json.loads((out / "rss.json").read_text())
summary["rss"] = rss
(out / "summary.json").write_text(json.dumps(summary, indent=2))
print(f"bare loop: 1 thread {bare[1]['rps']:.1f} req/s (p50 {bare[1]['p50_ms']:.1f} ms), "
      f"2 threads {bare[2]['rps']:.1f} req/s (p50 {bare[2]['p50_ms']:.1f} ms)")
print("| concurrency | req/s | x bare | p50 ms | p99 ms | p99/p50 | answers |")
print("| --- | --- | --- | --- | --- | --- | --- |")
for r in rows:
    answers = ", ".join(f"{k}: {v}" for k, v in sorted(r["status"].items()))
    if r["errors"]:
        answers += "; errors: " + ", ".join(f"{k}: {v}" for k, v in r["errors"].items())
    print(f"| {r['concurrency']} | {r['rps']:.1f} | {r['rps_vs_bare']:.2f} | {r['p50_ms']:.1f} | "
          f"{r['p99_ms']:.1f} | {r['p99_over_p50']:.2f} | {answers} |")
growth = rss["rss_kib_after_10000"] / rss["rss_kib_after_1000"]
print(f"RSS: {rss['rss_kib_after_1000']} KiB after 1,000 requests, "
      f"{rss['rss_kib_after_10000']} KiB after 10,000 ({growth:.3f}x)")
PY
