#!/usr/bin/env bash
# Installs the real OpenSSF model_signing tool (tests/interop/requirements.txt,
# every package pinned) in a venv OUTSIDE the repository and prints the path
# of its executable. Reuses the venv while the requirements are unchanged.
# Used by scripts/test.sh for the interop test; needs Python 3.10+ with venv
# (scripts/system-packages.sh installs it).
set -euo pipefail
cd "$(dirname "$0")/.."
req=tests/interop/requirements.txt
venv=${MEDGUARD_SIGNING_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/medguard/venv-model-signing}
stamp="$venv/.requirements.sha256"
want=$(sha256sum "$req" | cut -d' ' -f1)
if [[ ! -x "$venv/bin/model_signing" || "$(cat "$stamp" 2>/dev/null)" != "$want" ]]; then
  if ! python3 -c 'import venv, ensurepip' 2>/dev/null; then
    echo "scripts/model-signing.sh: python3 with venv is missing; run scripts/system-packages.sh" >&2
    exit 1
  fi
  rm -rf "$venv"
  python3 -m venv "$venv" >&2
  "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$req" >&2
  echo "$want" > "$stamp"
fi
echo "$venv/bin/model_signing"
