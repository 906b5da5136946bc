#!/usr/bin/env bash
# Make real Lua interpreters available for the Argo CD health-check tests: lua5.1
# (the language level of gopher-lua, which Argo CD embeds) and lua5.4, from Debian.
# Idempotent: installs only what is missing. Prints the interpreters found, one a line.
set -euo pipefail
missing=()
for v in 5.1 5.4; do command -v "lua$v" >/dev/null 2>&1 || missing+=("lua$v"); done
if [ "${#missing[@]}" -gt 0 ]; then
  if ! command -v apt-get >/dev/null 2>&1; then
    echo "[get-lua] need ${missing[*]} and apt-get is not available" >&2; exit 1
  fi
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  echo "[get-lua] installing ${missing[*]}" >&2
  $SUDO apt-get install -y --no-install-recommends "${missing[@]}" >&2 \
    || { $SUDO apt-get update >&2 && $SUDO apt-get install -y --no-install-recommends "${missing[@]}" >&2; }
fi
for v in 5.1 5.4; do command -v "lua$v"; done
