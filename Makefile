# The two commands of the README: `make up` (local stack) and `make test` (whole suite).
VENV := .venv
BIN := $(VENV)/bin

.PHONY: up test deps lint

$(VENV)/.installed: pyproject.toml requirements/dev.lock requirements/litellm.lock scripts/install-deps.sh
	bash scripts/install-deps.sh

deps: $(VENV)/.installed

up: deps
	$(BIN)/extauthz up

lint: deps
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

# pytest exits 5 when it collected no test: that is a failure here, not a pass. The suite
# runs on two workers a core (pytest-xdist: its tests wait for the processes they start about a
# third of the time; a test module stays on one worker: its tests share stacks). Bytecode is
# written even where PYTHONDONTWRITEBYTECODE is set, and the test modules are compiled (with
# pytest's assertions) once before the workers start: else each of the hundreds of processes
# the suite starts compiles extauthz again, and each worker every test module (mypy runs
# meanwhile).
test: export PYTHONDONTWRITEBYTECODE :=
test: deps
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy & mypy=$$!; \
	  $(BIN)/python -m pytest --collect-only -q >/dev/null; \
	  wait $$mypy  # (a collection error: shown by the run below)
	$(BIN)/python -m pytest -n $$(( 2 * $$(nproc) )) --dist loadfile --durations=20; rc=$$?; \
	  if [ $$rc -eq 5 ]; then echo "pytest collected no tests: failing" >&2; exit 1; fi; \
	  exit $$rc
