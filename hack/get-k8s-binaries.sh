#!/usr/bin/env bash
# Obtain a pinned Kubernetes control plane for the integration tests:
# kube-apiserver, kube-controller-manager, kube-scheduler, kubectl, etcd and kwok.
#
# Air-gapped machines reach only the Go module proxy, so everything is built from
# Go modules:
#   * k8s.io/kubernetes through a tiny wrapper module whose go.mod maps every
#     k8s.io staging module to its published v0.Y.Z tag (the upstream go.mod points
#     them at ./staging, which a module consumer cannot see);
#   * etcd from go.etcd.io/etcd/server/v3 through a second wrapper module;
#   * kwok with `go install`.
# Module cache, build cache and binaries are cached per version under
# $SEALTUNE_CACHE (default ~/.cache/sealtune), so a warm run takes a second.
# Prints the bin directory on stdout.
set -euo pipefail

K8S_VERSION="${K8S_VERSION:-1.35.4}"
ETCD_VERSION="${ETCD_VERSION:-3.6.16}"
KWOK_VERSION="${KWOK_VERSION:-0.7.0}"
CACHE="${SEALTUNE_CACHE:-$HOME/.cache/sealtune}"
BIN="$CACHE/k8s/v${K8S_VERSION}-etcd${ETCD_VERSION}-kwok${KWOK_VERSION}/bin"

export GOMODCACHE="$CACHE/go/mod" GOCACHE="$CACHE/go/build" GOFLAGS=-mod=mod GOTOOLCHAIN=local
export CGO_ENABLED=0 GOPATH="$CACHE/go/path"

log() { echo "[k8s-binaries] $*" >&2; }

want=(kube-apiserver kube-controller-manager kube-scheduler kubectl etcd kwok)
have_all() { for b in "${want[@]}"; do [ -x "$BIN/$b" ] || return 1; done; }
if have_all; then echo "$BIN"; exit 0; fi
mkdir -p "$BIN"
command -v go >/dev/null || { log "go is required (apt-get install golang, or a Go toolchain)"; exit 1; }

minor="${K8S_VERSION#*.}"; minor="${minor%%.*}"
staging_tag="v0.${K8S_VERSION#*.}"

build_k8s() {
  local work="$CACHE/k8s/wrapper-k8s-$K8S_VERSION"
  mkdir -p "$work"
  log "resolving k8s.io/kubernetes@v$K8S_VERSION through the module proxy"
  local gomod
  gomod=$(cd "$work" && [ -f go.mod ] || (cd "$work" && go mod init sealtune.local/k8swrapper >/dev/null 2>&1); \
          cd "$work" && go mod download -json "k8s.io/kubernetes@v$K8S_VERSION" | sed -n 's/.*"GoMod": "\(.*\)".*/\1/p')
  {
    echo "module sealtune.local/k8swrapper"
    echo
    echo "go $(go env GOVERSION | sed 's/^go//; s/^\([0-9]*\.[0-9]*\).*/\1/')"
    echo
    echo "require k8s.io/kubernetes v$K8S_VERSION"
    echo
    echo "replace ("
    # "k8s.io/api => ./staging/src/k8s.io/api" becomes "k8s.io/api => k8s.io/api v0.35.4"
    grep -E '^\s*k8s\.io/[^ ]+ => \./staging/' "$gomod" | awk -v t="$staging_tag" '{print "\t" $1 " => " $1 " " t}'
    echo ")"
  } > "$work/go.mod"
  cat > "$work/tools.go" <<'GO'
//go:build tools

package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver/app"
)
GO
  local date ld
  date=$(date -u +%Y-%m-%dT%H:%M:%SZ)
  ld="-s -w"
  for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ld="$ld -X $pkg.gitVersion=v$K8S_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor"
    ld="$ld -X $pkg.gitTreeState=clean -X $pkg.buildDate=$date -X $pkg.gitCommit=module-v$K8S_VERSION"
  done
  log "building kube-apiserver, kube-controller-manager, kube-scheduler, kubectl (one go build; cold: long)"
  (cd "$work" && go build -tags tools -o "$BIN/" -ldflags "$ld" \
      k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager \
      k8s.io/kubernetes/cmd/kube-scheduler k8s.io/kubernetes/cmd/kubectl)
}

build_etcd() {
  local work="$CACHE/k8s/wrapper-etcd-$ETCD_VERSION"
  mkdir -p "$work"
  printf 'module sealtune.local/etcdwrapper\n\ngo 1.24\n\nrequire go.etcd.io/etcd/server/v3 v%s\n' "$ETCD_VERSION" > "$work/go.mod"
  log "building etcd v$ETCD_VERSION"
  (cd "$work" && go build -o "$BIN/etcd" -ldflags "-s -w" go.etcd.io/etcd/server/v3)
}

build_kwok() {
  log "building kwok v$KWOK_VERSION"
  GOBIN="$BIN" go install -ldflags "-s -w" "sigs.k8s.io/kwok/cmd/kwok@v$KWOK_VERSION"
}

for b in kube-apiserver kube-controller-manager kube-scheduler kubectl; do
  [ -x "$BIN/$b" ] || { build_k8s; break; }
done
[ -x "$BIN/etcd" ] || build_etcd
[ -x "$BIN/kwok" ] || build_kwok
have_all || { log "some binaries are missing in $BIN"; exit 1; }
"$BIN/kube-apiserver" --version >&2
echo "$BIN"
