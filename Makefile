# One entry point for developers and CI. Every target creates the venv on a fresh machine.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo test test-fast lint bench lock clean

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)  ## embedded broker + Target simulator + sample events, end to end
	$(BIN)/profile-consumer demo

# Three workers on two cores: most tests wait on a broker, a simulator or a child process, so
# three overlap without starving each other; each worker starts its own broker.
TEST_WORKERS ?= 3

test: $(STAMP)  ## every test: unit, integration (real broker), e2e, slow scenarios
	$(BIN)/pytest -p no:cacheprovider -q -n $(TEST_WORKERS) --dist worksteal --durations=15

test-fast: $(STAMP)  ## unit tests only
	$(BIN)/pytest -p no:cacheprovider -q -m unit

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check consumer
	$(BIN)/mypy

bench: $(STAMP)  ## prints figures and ratios; never pass/fail
	@for b in benchmarks/bench_*.py; do echo "== $$b"; $(BIN)/python $$b || exit 1; done

# The image installs exactly these (pip --require-hashes): rerun after changing the dependencies
# in pyproject.toml. --universal: one lock for amd64 and arm64 images.
LOCK_FLAGS := --generate-hashes --universal --python-version 3.11 --custom-compile-command "make lock" --quiet
lock: $(STAMP)  ## requirements.lock (runtime) and requirements-build.lock (hatchling), hashed
	$(BIN)/uv pip compile pyproject.toml $(LOCK_FLAGS) -o requirements.lock
	printf 'hatchling\n' | $(BIN)/uv pip compile - $(LOCK_FLAGS) -o requirements-build.lock

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis
