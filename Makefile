# Two entry points (see README): `make demo` runs the built-in example, `make test` runs the test suite.
# Each creates the local virtualenv .venv and installs the package with its test and dev dependencies if needed.
# `make test` runs, in order: ruff (lint), ruff format --check (every Python file and notebook), mypy (strict on
# the core), then pytest; `make lint` runs the first three alone.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test,dev]'
	touch $(STAMP)

.PHONY: install demo test lint test-slow bench calibrate chromium
install: $(STAMP)

# Lint, format and type checks (configured in pyproject.toml: [tool.ruff], [tool.mypy]).
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

# Headless Chromium renders the `pkpd report` pages in tests/test_report.py (Debian package `chromium`).
# Installed with apt where it is missing and apt is available (CI runs as root on Debian); if that is not
# possible the report tests fail and say how to install it.
chromium:
	@if [ ! -x /usr/bin/chromium ] && ! command -v chromium >/dev/null 2>&1; then \
		if command -v apt-get >/dev/null 2>&1; then \
			echo "installing chromium (headless browser for the report tests) with apt-get"; \
			(DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium || \
			 (apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium)) \
			|| echo "warning: could not install chromium; tests/test_report.py will fail until it is installed"; \
		else \
			echo "warning: chromium is missing and apt-get is not available; tests/test_report.py will fail"; \
		fi; \
	fi

demo: $(STAMP)
	mkdir -p demo-out
	$(BIN)/pkpd simulate examples/oxycodone_postop.csv --params examples/oxycodone_agema2021.toml \
		--out demo-out/oxycodone_postop_sim.csv --plot demo-out/oxycodone_postop.png --force
	$(BIN)/pkpd drugs list
	$(BIN)/pkpd simulate --regimen C0 --population 500 --seed 1 --out demo-out/C0 --force
	$(BIN)/pkpd simulate --regimen C1 --population 500 --seed 1 --out demo-out/C1 --force
	$(BIN)/pkpd simulate --regimen C1 --patient examples/patient_spine.toml --population 200 --seed 1 \
		--out demo-out/C1_patient --force
	$(BIN)/pkpd fit pkpd/datasets/theoph.csv --model examples/models/theoph.toml --out demo-out/theoph_fit --force
	$(BIN)/pkpd optimize --patient examples/patient_spine.toml --out demo-out/optimized --force
	@echo "Wrote demo-out/: oxycodone IR+ER dataset simulation; C0 vs C1 in 500 SPINE-72 patients; C1 for the example patient; Theoph population fit; optimized schedule for the example patient (demo-out/optimized: schedule, comparison with C0/C1, why)"

test: $(STAMP) lint chromium
	PKPD_JAX_CACHE=$(CURDIR)/.jax-cache $(BIN)/python -m pytest -q -n 2 --dist loadfile --durations=25

test-slow: $(STAMP)
	$(BIN)/python -m pytest -q -m slow

# Outcome-model calibration on the evidence base (regimens/evidence): design waves of the population simulator,
# emulators, NumPyro posterior, leave-one-trial-out validation; writes pkpd/datasets/outcome_posterior.json,
# docs/outcome_calibration.md and docs/img/outcome_*.png, then the exact-simulator checks (docs/outcome_checks.md).
# About two hours on 2 cores; the design waves are cached in out/calibration (delete it to start afresh).
calibrate: $(STAMP)
	$(BIN)/python -m regimens.calibration --out out/calibration
	$(BIN)/python -m regimens.calibration.checks --out docs/outcome_checks.md

bench: $(STAMP)
	$(BIN)/python benchmarks/simulate.py --n 1 100 1000 10000 --ode-max-n 1000
