#!/usr/bin/env bash
# Idempotent set-up for the real-browser tests (tests/browser, `pytest -m browser`):
#   * Debian's Chromium at /usr/bin/chromium (installed with apt-get if missing; needs root),
#   * the Python `playwright` package (and Notebook 7) in .venv.
# Playwright drives the system Chromium via executable_path, so `playwright install` (which
# downloads browsers from a CDN) is never needed and must not be run.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ ! -x /usr/bin/chromium ]; then
  if ! command -v apt-get >/dev/null 2>&1; then
    echo "setup_browser.sh: /usr/bin/chromium is missing and apt-get is not available;" \
      "install Chromium so that /usr/bin/chromium exists." >&2
    exit 1
  fi
  SUDO=""
  if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then
      SUDO="sudo"
    else
      echo "setup_browser.sh: installing Chromium needs root (apt-get install -y chromium)." >&2
      exit 1
    fi
  fi
  echo "setup_browser.sh: installing Chromium with apt-get ..."
  $SUDO apt-get update -q
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends chromium
fi
/usr/bin/chromium --version 2>/dev/null || true

if [ ! -x .venv/bin/python ]; then
  echo "setup_browser.sh: .venv is missing; run 'bash scripts/setup.sh' first." >&2
  exit 1
fi
if ! .venv/bin/python -c "import playwright.sync_api" 2>/dev/null; then
  .venv/bin/python -m pip install -q "playwright>=1.40"
fi
if ! .venv/bin/python -c "import notebook" 2>/dev/null; then
  .venv/bin/python -m pip install -q "notebook>=7"
fi
echo "setup_browser.sh: browser test dependencies ready."
