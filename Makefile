# The two commands a new user runs: `make demo` and `make test`. Both build .venv first.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp

.PHONY: demo test docs bench bench-quality bench-gaps bench-anomaly lint fmt clean compose-test images

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/forecast demo

test: $(STAMP)
	$(PY) -m pytest -q

bench: $(STAMP)
	$(VENV)/bin/forecast bench

# Forecast accuracy on real bundled series against statsforecast's AutoETS/AutoTheta (bench extra).
bench-quality: $(STAMP)
	$(PY) -m pip install -q -e '.[test,bench]'
	nice -n 10 $(VENV)/bin/forecast bench --quality

# The gap policies (FORECAST_GAP_POLICY) on real series with values removed (bench extra).
bench-gaps: $(STAMP)
	$(PY) -m pip install -q -e '.[test,bench]'
	nice -n 10 $(VENV)/bin/forecast bench --gaps

# The anomaly verdicts on the NAB v1.1 corpus (bench/data/nab) through the real worker,
# scored by NAB's rules (no extra needed; a model is trained per file: it takes a while).
bench-anomaly: $(STAMP)
	nice -n 10 $(VENV)/bin/forecast bench --anomaly

# The documentation site (MkDocs, Material theme), warnings as errors, into site/.
docs: $(STAMP)
	$(PY) -m pip install -q -e '.[test,docs]'
	DISABLE_MKDOCS_2_WARNING=true NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --quiet

lint: $(STAMP)
	$(VENV)/bin/ruff check forecast worker trainer cli testkit tests bench
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

fmt: $(STAMP)
	$(VENV)/bin/ruff format forecast worker trainer cli testkit tests bench

# The compose deployment, built and run for real (needs a Docker engine; README: Deployment).
compose-test: $(STAMP)
	$(PY) deploy/compose_test.py

# Local stand-ins for the official base images, for machines without an image registry.
images:
	deploy/images/build.sh

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
