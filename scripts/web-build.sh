#!/usr/bin/env bash
# `make web`: the web client (web/src, JsSIP) bundled by esbuild into web/dist, which the server's
# `listen.web` serves (`web.root`). npm installs exactly package-lock.json's versions, and only
# when they changed; the bundle takes a fraction of a second.
set -euo pipefail
cd "$(dirname "$0")/../web"
command -v npm >/dev/null || { echo "web: npm is needed (Debian: apt-get install npm)" >&2; exit 1; }
if [ ! -f node_modules/.package-lock.json ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  echo "web: npm ci (package-lock.json)"
  timeout 600 npm ci --no-audit --no-fund --loglevel=error
fi
if ! out=$(npm run --silent build 2>&1); then
  echo "$out" >&2
  echo "web: the build failed" >&2
  exit 1
fi
echo "web: built web/dist ($(du -sh dist | cut -f1))"
