# The two commands a user needs: `make demo` (main job) and `make test` (whole suite).
# Both set up what they need themselves: a virtualenv with the package, and for the tests
# Debian's chromium (browser tests drive it through Playwright; nothing is downloaded at run
# time), prometheus and docker-compose.

PYTHON ?= python3
VENV ?= .venv
# The install is redone when the dependencies or their pinned versions change.
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml constraints.txt | cksum | cut -d' ' -f1)

.PHONY: demo test test-fast lint system-tools benchmark clean

# Bytecode is written the first time a module is imported: where PYTHONDONTWRITEBYTECODE is set,
# every process of a stack would compile scikit-learn, pandas and MLflow from source at each start.
unexport PYTHONDONTWRITEBYTECODE

# What the processes of a stack, a build and the tests import, imported once at install in two
# processes: their bytecode (and the package's own) is written before the first run, whose
# processes would otherwise each compile it at the same time. Compiling the whole virtualenv
# instead takes longer than these imports; most of it is never imported. The two lists take
# about the same time (the browser driver goes with the stack's, to even them up).
WARM_STACK := sandbox.cli sandbox.world.build sandbox.services.model_server \
	sandbox.services.retrieval sandbox.services.gateway.app sandbox.services.jobs \
	sandbox.services.traffic mlflow.server.fastapi_app playwright.sync_api
WARM_CHECKS := sandbox.monitor.drift evidently.legacy.calculations.stattests.registry \
	evidently.presets schemathesis xdist
WARM := $(VENV)/bin/python -W ignore -c \
	'import importlib, sys; [importlib.import_module(m) for m in sys.argv[1:]]'

# uv installs the pinned set from the same index in seconds where pip takes minutes; its version
# is pinned in constraints.txt with the rest.
$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check -c constraints.txt uv
	$(VENV)/bin/uv pip install --quiet --python $(VENV)/bin/python -c constraints.txt -e '.[dev]'
	$(WARM) $(WARM_STACK) & $(WARM) $(WARM_CHECKS); status=$$?; wait $$! && exit $$status
	rm -f $(VENV)/.installed-*
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/sandbox demo

# Debian packages the tests drive: chromium (browser tests), prometheus (the metric history),
# docker-compose (checks compose/ without a Docker engine). Installed once, when missing.
SYSTEM_TOOLS := chromium prometheus docker-compose

system-tools:
	@missing=""; for tool in $(SYSTEM_TOOLS); do command -v $$tool >/dev/null 2>&1 || missing="$$missing $$tool"; done; \
	if [ -n "$$missing" ]; then \
		echo "installing Debian's$$missing for the tests"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	fi

lint: $(STAMP)
	$(VENV)/bin/ruff check sandbox tests benchmarks
	$(VENV)/bin/ruff format --check sandbox tests benchmarks
	$(VENV)/bin/mypy

# Three test processes on two cores: much of the suite waits (on a stack starting, a browser, a
# query's time limit), and a third process keeps the cores busy meanwhile (from a fresh clone,
# 4.6 to 4.7 min with three against 4.6 to 5.2 with two). The tests that share one stack run
# together on one of them. Workers take the groups in the order tests/grouping.py gives them
# (longest first), not by size.
TEST_WORKERS ?= 3
PYTEST := $(VENV)/bin/python -m pytest -n $(TEST_WORKERS) --dist loadgroup --no-loadscope-reorder

# The lint runs beside the tests, on the core they leave idle while they wait; either failing
# fails the target.
BESIDE_LINT := $(MAKE) --no-print-directory lint & lint=$$!;

test: $(STAMP) system-tools
	@$(BESIDE_LINT) $(PYTEST); status=$$?; wait $$lint || status=1; exit $$status

# Every test that needs no built world and starts no stack: the tier to run while editing.
test-fast: $(STAMP) system-tools
	@$(BESIDE_LINT) $(PYTEST) -m "not world"; status=$$?; wait $$lint || status=1; exit $$status

benchmark: $(STAMP)
	$(VENV)/bin/python -m benchmarks.build
	$(VENV)/bin/python -m benchmarks.stack
	$(VENV)/bin/python -m benchmarks.workspace
	$(VENV)/bin/python -m benchmarks.hardening --fleet-worlds worlds/fleet

clean:
	rm -rf $(VENV) worlds .pytest_cache .ruff_cache .mypy_cache
