#!/usr/bin/env bash
# Install checkov (the Kubernetes manifest scanner, from PyPI) into its own cached
# virtualenv and print the path to the checkov executable.
#
# Why not the project venv: checkov pins networkx<3, packaging<24 and an old
# python-dateutil, which would downgrade what torch and transformers use there.
set -euo pipefail
CHECKOV_VERSION="${CHECKOV_VERSION:-3.3.30}"
CACHE="${SEALTUNE_CACHE:-$HOME/.cache/sealtune}"
VENV="$CACHE/tools/checkov-$CHECKOV_VERSION"
BIN="$VENV/bin/checkov"
if [ -x "$BIN" ] && "$BIN" --version >/dev/null 2>&1; then echo "$BIN"; exit 0; fi
PY="${PYTHON:-python3}"
echo "[get-checkov] installing checkov==$CHECKOV_VERSION into $VENV" >&2
rm -rf "$VENV"
"$PY" -m venv "$VENV"
PIP_CACHE_DIR="${PIP_CACHE_DIR:-$CACHE/pip}" "$VENV/bin/pip" install --quiet --disable-pip-version-check \
  "checkov==$CHECKOV_VERSION" >&2
"$BIN" --version >&2
echo "$BIN"
