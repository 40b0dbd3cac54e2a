#!/usr/bin/env bash
# JupyterLab on the quickstart notebook, for `make lab` (run scripts/setup.sh first; `make lab` does).
#   * --allow-root only when running as root (containers): JupyterLab refuses root without it, and a
#     normal user keeps JupyterLab's default refusal.
#   * No call to the internet: the settings in jupyter/lab-settings/overrides.json turn off the news feed
#     (and its "Would you like to get notified about official Jupyter news?" toast) and the update check;
#     the server side is told the same (no news URL, never check for updates).
#   * The token stays on; the printed URL (with the token) opens example_notebooks/quickstart.ipynb.
# Extra arguments go to `jupyter lab`, e.g. `bash scripts/lab.sh --no-browser --ServerApp.port=8899`.
# STEERWIDGETS_PYTHON picks the interpreter (default .venv/bin/python); STEERWIDGETS_LAB_DRY_RUN=1 prints
# the command instead of running it.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
PY="${STEERWIDGETS_PYTHON:-$ROOT/.venv/bin/python}"
if [ ! -x "$PY" ]; then
  echo "lab.sh: $PY is missing; run 'make lab' (or 'bash scripts/setup.sh') first." >&2
  exit 1
fi
ARGS=(
  -m jupyterlab
  "--LabApp.app_settings_dir=$ROOT/jupyter/lab-settings"
  "--LabApp.news_url=None"
  "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"
  # The printed URL (what a container user copies; no browser opens as root) opens the quickstart too.
  "--LabApp.default_url=/lab/tree/quickstart.ipynb"
)
if [ "$(id -u)" -eq 0 ]; then
  ARGS+=(--allow-root)
fi
ARGS+=("$@" example_notebooks/quickstart.ipynb)
if [ -n "${STEERWIDGETS_LAB_DRY_RUN:-}" ]; then
  printf '%s\n' "$PY" "${ARGS[@]}"
  exit 0
fi
exec "$PY" "${ARGS[@]}"
