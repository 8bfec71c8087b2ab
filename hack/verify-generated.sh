#!/usr/bin/env bash
# Fails when generated files differ from what their generators produce now. It compares
# the files before and after regenerating, so it works on a clean checkout (CI) and in a
# working tree with uncommitted edits alike; on failure the regenerated files are left in
# place for review.
#
#   hack/verify-generated.sh <regenerate command> -- <paths...>
set -euo pipefail

cmd=()
while [ $# -gt 0 ] && [ "$1" != "--" ]; do cmd+=("$1"); shift; done
shift || true
paths=("$@")

before=$(mktemp -d)
trap 'rm -rf "$before"' EXIT
for p in "${paths[@]}"; do
  if [ -e "$p" ]; then mkdir -p "$before/$(dirname "$p")"; cp -r "$p" "$before/$p"; fi
done

"${cmd[@]}" >/dev/null

stale=0
for p in "${paths[@]}"; do
  if [ ! -e "$before/$p" ]; then
    echo "verify: $p was missing and has been generated"; stale=1
  elif ! diff -r -u "$before/$p" "$p" >/dev/null; then
    echo "verify: $p is stale:"; diff -r -u "$before/$p" "$p" | head -40 || true; stale=1
  fi
done
if [ "$stale" = 1 ]; then
  echo "verify: generated files were stale; they are regenerated now: review and commit them"
  exit 1
fi
echo "verify: generated files are up to date"
