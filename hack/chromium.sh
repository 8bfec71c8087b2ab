#!/usr/bin/env bash
# Provides a headless-capable Chromium for the dashboard's browser test and prints the
# path of its binary.
#
#   hack/chromium.sh            find (or install) chromium; print its path
#
# With CHROMIUM set to an executable, that one is used as it is. Otherwise the first of
# chromium, chromium-browser, google-chrome on PATH, or /usr/bin/chromium. When none is
# there and this runs as root on a Debian-like system, Debian's `chromium` package is
# installed with apt-get. Messages go to stderr; only the path goes to stdout.
set -euo pipefail

log() { printf 'chromium: %s\n' "$*" >&2; }

if [ -n "${CHROMIUM:-}" ]; then
  if [ -x "$CHROMIUM" ]; then echo "$CHROMIUM"; exit 0; fi
  log "CHROMIUM=$CHROMIUM is not an executable"; exit 1
fi

find_browser() {
  for c in chromium chromium-browser google-chrome google-chrome-stable; do
    if p=$(command -v "$c" 2>/dev/null); then echo "$p"; return 0; fi
  done
  if [ -x /usr/bin/chromium ]; then echo /usr/bin/chromium; return 0; fi
  return 1
}

if p=$(find_browser); then echo "$p"; exit 0; fi

if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  log "installing Debian's chromium package (apt-get; about 100 MB, once per machine)"
  export DEBIAN_FRONTEND=noninteractive
  # Another apt run (say hack/clickhouse.sh in a parallel job) holds the dpkg lock for a
  # while: wait for it rather than fail.
  apt_install() { apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends chromium >&2; }
  apt_install || { apt-get -o DPkg::Lock::Timeout=600 update -qq >&2 && apt_install; }
  if p=$(find_browser); then echo "$p"; exit 0; fi
  log "apt-get finished but no chromium binary was found"; exit 1
fi

log "Chromium is not installed and apt-get is unavailable (or this is not root)."
log "Install Chromium or Chrome with your system's package manager (Debian/Ubuntu:"
log "'sudo apt-get install chromium'; Fedora: 'sudo dnf install chromium'; macOS:"
log "'brew install --cask chromium'), or point CHROMIUM at a browser binary, then run again."
exit 1
