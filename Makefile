# Quickstart: `make train`, `make test`. Both create .venv on first use.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
UV := $(PYTHON) -m uv

.PHONY: train train-record-dp train-aml federation test venv clean

$(PY): pyproject.toml uv.lock
	@$(UV) --version >/dev/null 2>&1 || $(PYTHON) -m pip install --quiet --user uv \
		|| $(PYTHON) -m pip install --quiet uv
	@# --compile-bytecode: with PYTHONDONTWRITEBYTECODE set (as on CI) every process would
	@# otherwise compile TensorFlow from source, 16 s instead of 5 s per import.
	UV_PYTHON_DOWNLOADS=never $(UV) sync --frozen --compile-bytecode --python $(PYTHON)
	@touch $(PY)

venv: $(PY)

train: $(PY)
	$(PY) scripts/train.py --config=configs/loan_risk.py --workdir=runs/loan_risk

train-record-dp: $(PY)
	$(PY) scripts/train.py --config=configs/loan_risk.py:record_dp --workdir=runs/loan_risk_record_dp

# 1M synthetic transactions across 20 banks (written once), then the AML classifier.
data/transactions.csv: | $(PY)
	$(PY) scripts/generate_transactions.py --num_banks=20 --num_transactions=1000000 --seed=0 --output=$@

# The public corpus configs/aml.py:public starts from (another seed, bank
# count, time span, amount scale and typology mix): public data, no privacy cost.
data/public_transactions.csv: | $(PY)
	$(PY) scripts/generate_transactions.py --output=$@ $$($(PY) -c 'from configs import aml; print(aml.PUBLIC_CORPUS_FLAGS)')

train-aml: data/transactions.csv data/public_transactions.csv
	$(PY) scripts/train.py --config=configs/aml.py:public --config.data.path=data/transactions.csv --workdir=runs/aml

# The default data as a federation of separate processes on this machine: a
# SuperLink and one node per institution (TLS, node keys), stopped at the end.
federation: $(PY)
	$(PY) scripts/federation.py --workdir=runs/federation

test: $(PY)
	@# Four workers on CI's two cores: many tests wait on processes they start, and the extra workers
	@# fill those waits (191% of the cores against 179-188% with three; docs/results.md, "The test suite").
	@# A class with a setUpClass fixture stays on one (tests/conftest.py).
	$(PY) -m pytest -q -n 4 --dist loadgroup --durations=25

clean:
	rm -rf runs
