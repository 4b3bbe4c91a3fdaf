#!/usr/bin/env bash
# Build the runtime virtualenv of the AttestMesh image: scripts/build-venv.sh DEST
#
# The one recipe shared by the Dockerfile (DEST=/opt/attestmesh in its build stage) and the component test
# tests/component/test_image.py (DEST in a temporary directory), so the test proves what the image runs.
# It makes a venv at DEST with $PYTHON (default python3) and pip-installs the attestmesh distribution into
# it NON-editable, without the dev extras, with the versions pinned by constraints.txt; then it uninstalls
# pip and setuptools from it (the venv is finished: a runtime installs nothing). The distribution is
# built from a staged copy of exactly the files it consists of, so a build never writes build/ or
# *.egg-info into the checkout and cannot pick up anything else lying around in it.
#
# Must not: install dev tools, touch the checkout, or reuse an existing DEST (venvs are not relocatable and
# a half-built one must not be mistaken for a good one). pip honours its usual PIP_* environment (the
# Dockerfile sets PIP_NO_CACHE_DIR; the test lets pip use its cache).
set -euo pipefail

if (($# != 1)); then
  echo "usage: $0 DEST" >&2
  exit 2
fi
dest=$1
python=${PYTHON:-python3}
repo=$(cd "$(dirname "$0")/.." && pwd)

if [[ -e $dest ]] && [[ -n $(ls -A "$dest" 2>/dev/null) ]]; then
  echo "build-venv: $dest exists and is not empty" >&2
  exit 1
fi

stage=$(mktemp -d "${TMPDIR:-/tmp}/attestmesh-stage.XXXXXX")
trap 'rm -rf "$stage"' EXIT

# What the distribution consists of: metadata and build hook, the three packages of the image (sidecar,
# indexer, ops: the operator CLI), the committed artifacts (setup.py copies them into the built sidecar
# package). NOT devnet: the development lab and its KMS never ship (pyproject's package discovery finds only
# what is staged; a dev checkout's editable install has devnet too).
cp "$repo/pyproject.toml" "$repo/setup.py" "$repo/MANIFEST.in" "$repo/README.md" "$repo/constraints.txt" "$stage/"
cp -R "$repo/sidecar" "$repo/indexer" "$repo/ops" "$stage/"
mkdir -p "$stage/contracts"
cp -R "$repo/contracts/artifacts" "$stage/contracts/"
find "$stage" -name __pycache__ -type d -prune -exec rm -rf {} +

"$python" -m venv "$dest"
"$dest/bin/python" -m pip install --quiet --disable-pip-version-check --no-input \
  --constraint "$stage/constraints.txt" "$stage"
# The installers leave with the build: nothing in the runtime installs packages, and pip/setuptools would
# only be attack surface and CVE noise there (pip can uninstall itself).
"$dest/bin/python" -m pip uninstall --quiet --yes --disable-pip-version-check pip setuptools
echo "build-venv: attestmesh installed in $dest"
