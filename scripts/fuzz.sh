#!/usr/bin/env bash
# Coverage-guided fuzzing (cargo-fuzz, libFuzzer) of every parser of
# untrusted bytes; the targets are listed in fuzz/README.md.
#
#   scripts/fuzz.sh                 the CI smoke run: every target but the guest's
#                                   for FUZZ_SECONDS (default 5) seconds
#   scripts/fuzz.sh --long          every target for FUZZ_RUNS (default 1000000) executions,
#                                   or FUZZ_MAX_SECONDS per target if that is set and comes first
#   scripts/fuzz.sh [--long] T...   only the targets named
#
# The guest targets (guest_*) build tract under the sanitizer, about half an
# hour on two cores, so the smoke run leaves them out; their seeds and
# reproducers run natively in the test suite instead (fuzz/README.md).
#
# Each target starts from its committed seeds (fuzz/corpus/<target>/, read
# only); what the fuzzer adds goes to a scratch directory (FUZZ_WORK, default
# a temporary one) so that the repository keeps only the seeds. A panic,
# hang (10 s) or more than 2 GB of memory is a finding: its reproducer lands
# in fuzz/artifacts/<target>/, the smoke run of that target stops (--long
# goes on), the other targets still run, and the script exits 1.
#
# Sanitizer: AddressSanitizer needs a nightly toolchain. With one
# installed (FUZZ_TOOLCHAIN, default nightly) the targets build with it;
# without (CI machines have only the stable toolchain and fetch no other),
# they build with the default toolchain and no sanitizer. Safe Rust needs
# none to find panics, overflows (debug assertions are on), hangs and
# memory blow-ups; ASan adds the unsafe code of dependencies.
#
# Installs cargo-fuzz (pinned) if it is missing. Honours CARGO_TARGET_DIR.
set -euo pipefail
cd "$(dirname "$0")/.."

CARGO_FUZZ_VERSION=0.13.2
LIBFUZZER_FLAGS=(-rss_limit_mb=2048 -timeout=10 -print_final_stats=1)

mode=smoke
if [[ ${1:-} == --long ]]; then
  mode=long
  shift
fi

if [[ $(cargo fuzz --version 2>/dev/null || true) != "cargo-fuzz $CARGO_FUZZ_VERSION" ]]; then
  cargo install --locked --version "$CARGO_FUZZ_VERSION" cargo-fuzz
fi

# Release code with debug assertions and overflow checks (the cargo-fuzz
# defaults); 16 codegen units keep tract's build bearable.
build_flags=(--fuzz-dir fuzz --codegen-units 16)
toolchain=()
nightly=${FUZZ_TOOLCHAIN:-nightly}
if rustup run "$nightly" rustc --version >/dev/null 2>&1; then
  toolchain=("+$nightly")
else
  echo "fuzz: no $nightly toolchain: building without AddressSanitizer" >&2
  build_flags+=(--sanitizer none)
fi
if [[ -n ${CARGO_TARGET_DIR:-} ]]; then
  build_flags+=(--target-dir "$CARGO_TARGET_DIR")
fi
fuzz() {
  cargo "${toolchain[@]}" fuzz "$@"
}

if [[ $# -gt 0 ]]; then
  targets=("$@")
elif [[ $mode == long ]]; then
  mapfile -t targets < <(fuzz list --fuzz-dir fuzz)
else
  mapfile -t targets < <(fuzz list --fuzz-dir fuzz | grep -v '^guest_')
fi
for t in "${targets[@]}"; do
  if [[ $t == guest_* ]]; then
    build_flags+=(--features guest)
    break
  fi
done
if [[ $mode == smoke && $# -eq 0 ]]; then
  # One build per target: `cargo fuzz build` without a name would build
  # them all, the guest's included.
  for t in "${targets[@]}"; do fuzz build "${build_flags[@]}" "$t"; done
else
  fuzz build "${build_flags[@]}"
fi

work=${FUZZ_WORK:-$(mktemp -d)}
case $mode in
  # Stop at the first finding.
  smoke) limit=(-max_total_time="${FUZZ_SECONDS:-5}") ;;
  # Go on after a finding (libFuzzer's fork mode, one job at a time), so that
  # a known panic does not cut the run short; every reproducer is kept.
  long)
    limit=(-runs="${FUZZ_RUNS:-1000000}" -fork=1 -ignore_crashes=1 -ignore_timeouts=1 -ignore_ooms=1)
    [[ -z ${FUZZ_MAX_SECONDS:-} ]] || limit+=(-max_total_time="$FUZZ_MAX_SECONDS")
    ;;
esac

reproducers() {
  find "fuzz/artifacts/$1" -type f \( -name 'crash-*' -o -name 'timeout-*' -o -name 'oom-*' -o -name 'leak-*' \) | sort
}

failed=()
summary=()
for t in "${targets[@]}"; do
  mkdir -p "$work/$t" "fuzz/artifacts/$t"
  log="$work/$t.log"
  echo "== $t ($mode)"
  before=$(reproducers "$t")
  start=$SECONDS
  rc=0
  fuzz run "${build_flags[@]}" "$t" "$work/$t" "fuzz/corpus/$t" -- "${limit[@]}" "${LIBFUZZER_FLAGS[@]}" \
    >"$log" 2>&1 || rc=$?
  found=$(comm -13 <(echo "$before") <(reproducers "$t") | grep -c . || true)
  if [[ $rc -eq 0 && $found -eq 0 ]]; then
    status=ok
  else
    # libFuzzer exits 72 when it was interrupted (SIGINT, SIGTERM).
    if [[ $rc -eq 72 && $found -eq 0 ]]; then status=interrupted; else status=FINDING; fi
    failed+=("$t")
    grep -E "^(==[0-9]+==ERROR|thread .* panicked|SUMMARY|Test unit written)" "$log" | sort | uniq -c | head -20 || true
  fi
  # Executions: the final stats, or in fork mode the last progress line.
  runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  [[ -n $runs ]] || runs=$(sed -n 's/^#\([0-9]*\): cov:.*/\1/p' "$log" | tail -1)
  summary+=("$(printf '%-18s %-11s %8s %12s %7ss' "$t" "$status" "$found" "${runs:-?}" "$((SECONDS - start))")")
done

echo
echo "target             status      findings   executions    time  (logs, corpus growth: $work)"
printf '%s\n' "${summary[@]}"
if [[ ${#failed[@]} -gt 0 ]]; then
  echo "not clean: ${failed[*]} (reproducers in fuzz/artifacts/)" >&2
  exit 1
fi
