.PHONY: setup lab test bench lint

setup:
	bash scripts/setup.sh

# The main job: JupyterLab on the quickstart notebook with the default model.
lab: setup
	.venv/bin/jupyter lab example_notebooks/quickstart.ipynb

# The whole test suite (unit, real-model integration and real-browser tests).
test:
	bash scripts/setup.sh --browser
	.venv/bin/python -m pytest -q

bench: setup
	.venv/bin/python benchmarks/run.py

lint:
	.venv/bin/ruff check .
