#!/usr/bin/env bash
# Provides the control-plane binaries envtest needs (kube-apiserver, etcd, kubectl) and
# prints the directory holding them. Tries setup-envtest's normal download first; where
# that is unreachable, builds kube-apiserver and kubectl from the Go module proxy and uses
# the system etcd. Binaries are cached outside the repository, keyed by version, so only
# the first run on a machine pays for the build.
#
#   hack/envtest.sh            -> prints the binary directory (progress goes to stderr)
#
# Environment: ENVTEST_K8S_VERSION (default 1.37.2), CUSTOMERLOOP_CACHE (default
# ${XDG_CACHE_HOME:-$HOME/.cache}/customerloop), SETUP_ENVTEST (path to setup-envtest).
set -euo pipefail

version=${ENVTEST_K8S_VERSION:-1.37.2}
cache=${CUSTOMERLOOP_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/customerloop}
dir="$cache/envtest/k8s-$version"
log() { printf 'envtest: %s\n' "$*" >&2; }

complete() { [ -x "$1/kube-apiserver" ] && [ -x "$1/etcd" ] && [ -x "$1/kubectl" ]; }

if complete "$dir"; then
  log "using cached binaries for Kubernetes $version"
  echo "$dir"
  exit 0
fi
mkdir -p "$dir"

# 1. The normal download. Short timeout: where it is unreachable it hangs rather than fails.
if [ -n "${SETUP_ENVTEST:-}" ] && [ -x "${SETUP_ENVTEST}" ]; then
  log "trying setup-envtest download of $version"
  if got=$(timeout 60 "$SETUP_ENVTEST" use "$version" --bin-dir "$cache/setup-envtest" -p path 2>/dev/null) \
      && [ -n "$got" ] && complete "$got"; then
    cp "$got"/kube-apiserver "$got"/etcd "$got"/kubectl "$dir"/
    log "downloaded"
    echo "$dir"
    exit 0
  fi
  log "download unavailable; building from the Go module proxy instead"
fi

# 2. etcd from the system (Debian's etcd-server works with kube-apiserver 1.33-1.37).
if [ ! -x "$dir/etcd" ]; then
  if ! command -v etcd >/dev/null 2>&1; then
    if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
      log "installing etcd-server (apt)"
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq etcd-server >&2 \
        || { apt-get update -qq >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq etcd-server >&2; }
    else
      log "etcd not found: install etcd 3.4+ and put it on PATH, then run again"
      exit 1
    fi
  fi
  ln -sf "$(command -v etcd)" "$dir/etcd"
fi

# 3. kube-apiserver and kubectl, built in a throwaway wrapper module. k8s.io/kubernetes
# pins its staging modules at v0.0.0 with local replaces, so the wrapper replaces each
# with its published v0.Y.Z.
if [ ! -x "$dir/kube-apiserver" ] || [ ! -x "$dir/kubectl" ]; then
  minor=${version#*.}; minor=${minor%%.*}; patch=${version##*.}
  staging="v0.$minor.$patch"
  build="$cache/envtest/build-$version"
  mkdir -p "$build"
  log "building kube-apiserver and kubectl $version (first run only: ~13 min on 2 cores)"
  gomod=$(cd "$build" && GOFLAGS=-mod=mod go mod download -json "k8s.io/kubernetes@v$version" | sed -n 's/.*"GoMod": "\(.*\)".*/\1/p')
  {
    echo "module customerloop.local/envtest-build"
    echo
    grep -E '^(go|godebug) ' "$gomod"
    echo
    echo "require k8s.io/kubernetes v$version"
    echo
    echo "replace ("
    sed -n '/^replace (/,/^)/p' "$gomod" | grep -oE 'k8s.io/[a-z0-9-]+ =>' | sed 's/ =>//' \
      | grep -vE 'sample-cli-plugin|sample-controller' \
      | while read -r m; do echo "	$m => $m $staging"; done
    echo ")"
  } > "$build/go.mod"
  cat > "$build/tools.go" <<'GO'
//go:build tools

package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kubectl"
)
GO
  (cd "$build" && GOFLAGS=-mod=mod go mod tidy -e >&2)
  ldflags="-s -w"
  for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ldflags="$ldflags -X $p.gitVersion=v$version -X $p.gitMajor=1 -X $p.gitMinor=$minor"
  done
  (cd "$build" && CGO_ENABLED=0 go build -trimpath -ldflags "$ldflags" -o "$dir/kube-apiserver" k8s.io/kubernetes/cmd/kube-apiserver >&2)
  (cd "$build" && CGO_ENABLED=0 go build -trimpath -ldflags "$ldflags" -o "$dir/kubectl" k8s.io/kubernetes/cmd/kubectl >&2)
  log "built $("$dir/kube-apiserver" --version 2>&1)"
fi

complete "$dir" || { log "incomplete binaries in $dir"; exit 1; }
echo "$dir"
