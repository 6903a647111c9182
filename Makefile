# The README's two commands: `make demo` and `make test`. Each creates or refreshes
# the virtual environment in .venv, installs the project into it, and runs.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# torch is pinned in pyproject.toml to the CPU wheel these machines carry; the
# explicit first install keeps the resolver from ever choosing a CUDA build.
TORCH_PIN := torch==2.13.0

.PHONY: demo test lint data venv clean slow

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q $(TORCH_PIN)
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $(STAMP)

venv: $(STAMP)

# Fashion-MNIST from Debian where apt is available; the demo falls back to scikit-learn's digits otherwise.
data:
	@if [ ! -d /usr/share/datasets/fashion-mnist ] && command -v apt-get >/dev/null 2>&1; then \
		(apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist) >/dev/null 2>&1 \
		|| echo "note: could not install dataset-fashion-mnist; the demo uses scikit-learn's digits"; \
	fi

demo: $(STAMP) data
	$(BIN)/hadmc-deploy demo

test: $(STAMP) data
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q -n 2 -m "not slow"

slow: $(STAMP) data
	$(BIN)/python -m pytest -q -m slow

lint: $(STAMP)
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) build *.egg-info
