#!/usr/bin/env bash
# Builds the chatvec wheel (maturin, bindings = "bin": the release binary in a py3-none wheel for
# this platform), then installs it into a fresh venv and runs `chatvec merge` on the bundled lab
# models from that venv's bin/, as a user who only ran `pip install` would.
#
#   scripts/build-wheel.sh [OUT_DIR]      # default OUT_DIR: target/wheels
#
# MATURIN names a maturin to use; without it, maturin 1.16.0 is installed into target/maturin-venv.
# MATURIN_PROFILE=dev builds the wheel from the (faster to build) dev profile instead of release.
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-target/wheels}"
maturin="${MATURIN:-}"
if [ -z "$maturin" ]; then
  [ -x target/maturin-venv/bin/maturin ] || {
    python3 -m venv target/maturin-venv
    target/maturin-venv/bin/pip install -q --disable-pip-version-check maturin==1.16.0
  }
  maturin=target/maturin-venv/bin/maturin
fi
rm -rf "$out"
"$maturin" build --profile "${MATURIN_PROFILE:-release}" --out "$out"
wheel=$(ls "$out"/chatvec-*.whl)
echo "built $wheel ($(du -h "$wheel" | cut -f1))"

# A fresh venv, the wheel alone (no index), and a merge from its bin/.
check=$(mktemp -d)
trap 'rm -rf "$check"' EXIT
python3 -m venv "$check/venv"
"$check/venv/bin/pip" install -q --disable-pip-version-check --no-index "$wheel"
"$check/venv/bin/chatvec" --version
"$check/venv/bin/chatvec" merge --base models/lab/base --chat models/lab/chat --target models/lab/target \
  -o "$check/merged" --quiet
test -f "$check/merged/model.safetensors" -o -f "$check/merged/model.safetensors.index.json"
grep -q 2004 "$check/merged/generation_config.json"
echo "ok: the wheel's chatvec merged the bundled models"
