#!/usr/bin/env bash
# Installs a pinned Python tool the tests run against, in a venv OUTSIDE the
# repository, and prints the path of its executable:
#
#   scripts/python-tool.sh model-signing   the OpenSSF model_signing CLI
#                                          (tests/interop/requirements.txt)
#   scripts/python-tool.sh triton-client   Triton's Python client, tritonclient[http]
#                                          (tests/interop/triton-requirements.txt);
#                                          prints the venv's python
#   scripts/python-tool.sh dicom           pydicom, highdicom and codecs
#                                          (tests/dicom/requirements.txt);
#                                          prints the venv's python
#   scripts/python-tool.sh embed           numpy and pytest for the Python package
#                                          (python/requirements-test.txt);
#                                          prints the venv's python
#
# Reuses a venv while its requirements are unchanged. Used by
# scripts/test.sh; needs Python 3.10+ with venv (scripts/system-packages.sh
# installs it). MEDGUARD_VENVS overrides where the venvs live.
set -euo pipefail
cd "$(dirname "$0")/.."
case ${1:-} in
  model-signing) req=tests/interop/requirements.txt; exe=model_signing ;;
  triton-client) req=tests/interop/triton-requirements.txt; exe=python ;;
  dicom) req=tests/dicom/requirements.txt; exe=python ;;
  embed) req=python/requirements-test.txt; exe=python ;;
  *) echo "usage: scripts/python-tool.sh model-signing|triton-client|dicom|embed" >&2; exit 2 ;;
esac
venv=${MEDGUARD_VENVS:-${XDG_CACHE_HOME:-$HOME/.cache}/medguard}/venv-$1
stamp="$venv/.requirements.sha256"
want=$(sha256sum "$req" | cut -d' ' -f1)
if [[ ! -x "$venv/bin/$exe" || "$(cat "$stamp" 2>/dev/null)" != "$want" ]]; then
  if ! python3 -c 'import venv, ensurepip' 2>/dev/null; then
    echo "scripts/python-tool.sh: python3 with venv is missing; run scripts/system-packages.sh" >&2
    exit 1
  fi
  rm -rf "$venv"
  python3 -m venv "$venv" >&2
  "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$req" >&2
  echo "$want" > "$stamp"
fi
echo "$venv/bin/$exe"
