#!/usr/bin/env bash
# Every Debian package the test suite needs, installed in this one place
# (scripts/test.sh runs it; scripts/demo.sh needs none). Installs only what
# is missing, so a prepared machine is not touched.
#   python3-venv: the venv for the real OpenSSF model_signing (interop test)
#   g++: libFuzzer, which cargo-fuzz's libfuzzer-sys compiles (scripts/fuzz.sh)
#   dicom3tools: dciodvfy, which validates medguard's DICOM structured reports
#   orthanc, orthanc-dicomweb: the real PACS `medguard pacs` is tested against
#   chromium, chromium-driver: the browser build's tests (wasm-bindgen-test
#     and the demo page under Playwright) run in the system's Chromium
set -euo pipefail
need=()
python3 -c 'import venv, ensurepip' 2>/dev/null || need+=(python3 python3-venv)
command -v c++ >/dev/null || need+=(g++)
command -v dciodvfy >/dev/null || need+=(dicom3tools)
[[ -x /usr/sbin/Orthanc ]] || need+=(orthanc)
[[ -e /usr/share/orthanc/plugins/libOrthancDicomWeb.so ]] || need+=(orthanc-dicomweb)
command -v chromium >/dev/null || need+=(chromium)
command -v chromedriver >/dev/null || need+=(chromium-driver)
if ((${#need[@]})); then
  echo "scripts/system-packages.sh: installing ${need[*]}" >&2
  apt-get update -qq >&2
  apt-get install -y -qq "${need[@]}" >&2
fi
