#!/usr/bin/env bash
# Idempotent build of the front end (js/build.mjs): the shared bundle js/src/widgets.js ->
# steerwidgets/static/widgets.js, one small `_esm` loader per widget (js/src/loader.js ->
# steerwidgets/static/<kind>.js) and widget.css.
# Installs js/node_modules (npm ci, from js/package-lock.json) only when it is missing or the lock
# file changed since the last install; needs nothing from the network but the npm registry.
# Usage: bash scripts/build_js.sh
set -euo pipefail
cd "$(dirname "$0")/../js"

for tool in node npm; do
  if ! command -v "$tool" >/dev/null 2>&1; then
    echo "build_js.sh: '$tool' not found. Install Node.js >= 18 with npm" \
      "(e.g. 'apt-get install -y nodejs npm') and rerun 'bash scripts/build_js.sh'." >&2
    exit 1
  fi
done
major=$(node -p 'process.versions.node.split(".")[0]')
if [ "$major" -lt 18 ]; then
  echo "build_js.sh: Node.js >= 18 is needed, found $(node --version)." >&2
  exit 1
fi

# npm copies the lock file to node_modules/.package-lock.json on install; compare against a stamp of
# our own so that a changed lock (git pull) reinstalls.
stamp=node_modules/.steerwidgets-lock.sha256
npm_flags=(--no-audit --no-fund --loglevel=error)
if [ -f package-lock.json ]; then
  want=$(sha256sum package-lock.json package.json | sha256sum | cut -d' ' -f1)
  if [ ! -d node_modules ] || [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    echo "build_js.sh: npm ci"
    npm ci "${npm_flags[@]}"
    echo "$want" > "$stamp"
  fi
else
  if [ ! -d node_modules ]; then
    echo "build_js.sh: no package-lock.json, npm install"
    npm install "${npm_flags[@]}"
  fi
fi

npm run --silent build
