# Quickstart: `make train`, `make test`. Both create .venv on first use.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
UV := $(shell command -v uv 2>/dev/null || echo $(HOME)/.local/bin/uv)

.PHONY: train test venv clean

$(PY): pyproject.toml uv.lock
	@command -v uv >/dev/null 2>&1 || test -x $(UV) || $(PYTHON) -m pip install --user --quiet uv
	UV_PYTHON_DOWNLOADS=never $(UV) sync --frozen --python $(PYTHON)
	@touch $(PY)

venv: $(PY)

train: $(PY)
	$(PY) scripts/train.py --config=configs/loan_risk.py --workdir=runs/loan_risk

test: $(PY)
	$(PY) -m pytest -q

clean:
	rm -rf runs
