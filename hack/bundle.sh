#!/usr/bin/env bash
# Build the offline bundle an air-gapped platform team carries into its network:
#
#   dist/sealtune-bundle-<version>.tar.gz (+ .sha256), holding sealtune-bundle-<version>/
#     chart/sealtune-<version>.tgz        the packaged Helm chart (CRDs inside)
#     crds/*.yaml                         the CRDs, for `kubectl apply` / GitOps
#     images.txt                          "<source>@<digest> <internal target>" per image
#     values-internal-registry.yaml       global.imageRegistry + every image pinned by digest
#     sbom/sealtune-python.cdx.json       CycloneDX SBOM of the images' Python deps
#     argocd/                             Argo CD health checks, argocd-cm snippet, Applications
#     docs/install-airgapped.md, docs/gitops.md, examples/*.yaml
#     SHA256SUMS                          sha256 of every file above
#
# Digests: the images are built and pushed by the release pipeline, which writes
# IMAGE_DIGESTS (default dist/image-digests.txt): one "<repository> sha256:<hex>" a line,
# e.g. "sealtune/sealtune-operator sha256:...". Without that file, digests are resolved
# with `crane digest` or `skopeo inspect` when either tool and the registry are at hand.
# An image without a digest fails the build: the bundle never carries a floating tag.
#
# Environment: IMAGE_DIGESTS, INTERNAL_REGISTRY (default registry.internal.example:5000),
# OUT (default dist), PYTHON (default .venv/bin/python), SOURCE_DATE_EPOCH (default: the
# last commit's time; the outer tarball's file times and the SBOM timestamp).
set -euo pipefail

REPO="$(cd "$(dirname "$0")/.." && pwd)"
CHART="$REPO/charts/sealtune"
OUT="${OUT:-$REPO/dist}"
PYTHON="${PYTHON:-$REPO/.venv/bin/python}"
INTERNAL_REGISTRY="${INTERNAL_REGISTRY:-registry.internal.example:5000}"
IMAGE_DIGESTS="${IMAGE_DIGESTS:-$OUT/image-digests.txt}"
SOURCE_DATE_EPOCH="${SOURCE_DATE_EPOCH:-$(git -C "$REPO" log -1 --format=%ct 2>/dev/null || echo 0)}"
export SOURCE_DATE_EPOCH

log() { echo "[bundle] $*" >&2; }
die() { echo "[bundle] ERROR: $*" >&2; exit 1; }

HELM="$("$REPO/hack/get-helm.sh")"
VERSION="$("$PYTHON" -c 'import sys, yaml; print(yaml.safe_load(open(sys.argv[1]))["version"])' "$CHART/Chart.yaml")"
NAME="sealtune-bundle-$VERSION"

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
stage="$work/$NAME"
mkdir -p "$stage"/{chart,crds,sbom,argocd,docs,examples} "$OUT"

log "linting and packaging the chart ($VERSION)"
"$HELM" lint --strict "$CHART" >&2
"$HELM" package "$CHART" --destination "$stage/chart" >&2
cp "$REPO"/crds/*.yaml "$stage/crds/"

log "pinning images (digests from ${IMAGE_DIGESTS})"
"$PYTHON" - "$CHART/values.yaml" "$IMAGE_DIGESTS" "$INTERNAL_REGISTRY" "$stage" <<'EOF'
"""images.txt and values-internal-registry.yaml from the chart's values and the digests."""
import re
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

values_path, digests_path, internal, stage = sys.argv[1:5]
values = yaml.safe_load(Path(values_path).read_text())
chart = yaml.safe_load((Path(values_path).parent / "Chart.yaml").read_text())
digests: dict[str, str] = {}
if Path(digests_path).is_file():
    for line in Path(digests_path).read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            repo, digest = line.split()
            digests[repo] = digest


def resolve(ref: str) -> str | None:
    """Ask the registry for a tag's digest with crane or skopeo, if present."""
    if shutil.which("crane"):
        p = subprocess.run(["crane", "digest", ref], capture_output=True, text=True)
        if p.returncode == 0:
            return p.stdout.strip()
    if shutil.which("skopeo"):
        p = subprocess.run(["skopeo", "inspect", "--format", "{{.Digest}}", f"docker://{ref}"],
                           capture_output=True, text=True)
        if p.returncode == 0:
            return p.stdout.strip()
    return None


lines, pinned, missing = [], {"global": {"imageRegistry": internal}}, []
for key in ("image", "trainerImage", "serveImage", "vllmImage"):
    img = values[key]
    tag = str(img.get("tag") or chart["appVersion"])
    source = f"{img['registry']}/{img['repository']}:{tag}" if img["registry"] else \
        f"{img['repository']}:{tag}"
    digest = img.get("digest") or digests.get(img["repository"]) or resolve(source)
    if not digest or not re.fullmatch(r"sha256:[0-9a-f]{64}", digest):
        missing.append(f"{key} ({source})")
        continue
    pinned[key] = {"digest": digest}
    line = f"{source}@{digest} {internal}/{img['repository']}:{tag}"
    if line not in lines:
        lines.append(line)
if missing:
    sys.exit("no digest for: " + ", ".join(missing) +
             "; write them to IMAGE_DIGESTS as '<repository> sha256:<hex>' lines")
Path(stage, "images.txt").write_text(
    "# <source image pinned by digest> <target in the internal registry>\n"
    "# mirror: see docs/install-airgapped.md (skopeo copy / crane copy)\n"
    + "\n".join(lines) + "\n")
header = ("# Values for installing from the internal registry: every image rewritten to it\n"
          "# and pinned by the digest this bundle was built with. Add your storage classes:\n"
          "#   helm install sealtune chart/sealtune-*.tgz -n sealtune-system \\\n"
          "#     -f values-internal-registry.yaml --set 'encryptingStorageClasses={...}'\n")
Path(stage, "values-internal-registry.yaml").write_text(
    header + yaml.safe_dump(pinned, sort_keys=False))
EOF

log "checking the packaged chart renders only pinned internal images"
"$HELM" template sealtune "$stage"/chart/sealtune-*.tgz -n sealtune-system \
  -f "$stage/values-internal-registry.yaml" \
| "$PYTHON" -c '
import re, sys, yaml
ok = re.compile(re.escape(sys.argv[1]) + r"/[^@]+@sha256:[0-9a-f]{64}$")
seen = []
for doc in yaml.safe_load_all(sys.stdin):
    pod = ((doc or {}).get("spec", {}).get("template") or {}).get("spec") or {}
    for c in pod.get("containers", []) + pod.get("initContainers", []):
        seen.append(c["image"])
        seen += [e["value"] for e in c.get("env", []) if e["name"].endswith("_IMAGE")]
bad = [i for i in seen if not ok.match(i)]
if not seen or bad:
    sys.exit(f"unpinned or external images in the rendered chart: {bad or seen}")
' "$INTERNAL_REGISTRY"

log "writing the CycloneDX SBOM of the Python dependencies"
"$PYTHON" -m cyclonedx_py environment --pyproject "$REPO/pyproject.toml" \
  --output-reproducible --of JSON -o "$work/sbom-full.json" "$PYTHON" >&2
"$PYTHON" "$REPO/hack/sbom_closure.py" "$work/sbom-full.json" "$stage/sbom/sealtune-python.cdx.json"

cp "$REPO"/deploy/argocd/* "$stage/argocd/"
cp "$REPO/docs/install-airgapped.md" "$REPO/docs/gitops.md" "$stage/docs/"
cp "$REPO"/examples/*.yaml "$stage/examples/"

(cd "$stage" && find . -type f ! -name SHA256SUMS -printf '%P\n' | LC_ALL=C sort \
  | xargs -d '\n' sha256sum > SHA256SUMS)

tarball="$OUT/$NAME.tar.gz"
tar --sort=name --mtime="@$SOURCE_DATE_EPOCH" --owner=0 --group=0 --numeric-owner \
  -C "$work" -cf - "$NAME" | gzip -n -9 > "$tarball"
(cd "$OUT" && sha256sum "$NAME.tar.gz" > "$NAME.tar.gz.sha256")
log "wrote $tarball ($(du -h "$tarball" | cut -f1))"
echo "$tarball"
