#!/usr/bin/env bash
# Provides chdb's libchdb.so (ClickHouse 26.x built as an in-process engine) and prints its
# absolute path. No modern ClickHouse server is available to CustomerLoop's tests; this
# library lets test/modern execute the planners' SQL on 26.x. It comes from the npm
# registry as a ~178 MB tarball (~566 MB unpacked) and is cached outside the repository,
# keyed by version, so only the first run on a machine downloads it.
#
#   hack/chdb.sh            -> prints the path of libchdb.so (progress goes to stderr)
#
# Environment: CHDB_NPM_VERSION (default 26.7.3-stable.1), CUSTOMERLOOP_CACHE (default
# ${XDG_CACHE_HOME:-$HOME/.cache}/customerloop).
set -euo pipefail

version=${CHDB_NPM_VERSION:-26.7.3-stable.1}
package="@chdb/lib-linux-x64-gnu"
cache=${CUSTOMERLOOP_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/customerloop}
dir="$cache/chdb-$version"
log() { printf 'chdb: %s\n' "$*" >&2; }

if [ -s "$dir/libchdb.so" ]; then
  log "using cached libchdb.so $version"
  echo "$dir/libchdb.so"
  exit 0
fi

if ! command -v npm >/dev/null 2>&1; then
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    log "installing npm (apt)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -qq npm >&2 || { apt-get update -qq >&2 && apt-get install -y -qq npm >&2; }
  else
    log "npm is not installed. Install npm with your package manager, then run again."
    exit 1
  fi
fi

# Download and unpack beside the cache entry, then rename: an interrupted run leaves no
# half-written library that a later run would take for complete.
mkdir -p "$cache"
work=$(mktemp -d "$cache/chdb-$version.partial.XXXXXX")
trap 'rm -rf "$work"' EXIT
log "downloading $package@$version from the npm registry (first run only: ~178 MB)"
tarball=$(cd "$work" && npm pack --silent "$package@$version" 2>/dev/null | tail -n 1)
[ -s "$work/$tarball" ] || { log "npm pack of $package@$version produced no tarball"; exit 1; }
tar -xzf "$work/$tarball" -C "$work"
lib=$(find "$work/package" -name libchdb.so -type f | head -n 1)
[ -n "$lib" ] || { log "no libchdb.so in $tarball"; exit 1; }
mkdir -p "$work/out"
mv "$lib" "$work/out/libchdb.so"
rm -rf "$dir"
mv "$work/out" "$dir"
log "unpacked $(du -h "$dir/libchdb.so" | cut -f1) into $dir"
echo "$dir/libchdb.so"
