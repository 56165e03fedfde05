# bento-fleet: `make serve` runs the service, `make test` runs every test.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
PORT   ?= 3000
HOST   ?= 127.0.0.1
RESULTS := var/test-results
TIMED  := scripts/timed
export BENTOML_DO_NOT_TRACK := True
export PATH := $(CURDIR)/$(BIN):$(PATH)

MOLECULE_SCENARIOS ?= default

.PHONY: venv serve build test test-deps lint unit integration test-gpu molecule-host molecule bench clean

# The venv is rebuilt only when the pinned requirements change.
$(VENV)/.installed: requirements.txt requirements-dev.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --quiet --disable-pip-version-check -r requirements-dev.txt
	$(BIN)/pip install --quiet --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
	touch $@

venv: $(VENV)/.installed

serve: venv
	$(BIN)/bentoml serve --host $(HOST) --port $(PORT)

build: venv
	$(BIN)/bentoml build

# System packages the tests use as real parts (PostgreSQL); idempotent.
test-deps:
	scripts/install-test-deps.sh

lint: venv
	$(BIN)/ruff check service tests bench molecule
	$(BIN)/ruff format --check service tests bench molecule
	$(BIN)/yamllint --strict .
	$(BIN)/ansible-lint --profile production

unit: venv
	$(BIN)/pytest tests/unit --junitxml=$(RESULTS)/unit.xml

integration: venv test-deps
	$(BIN)/pytest tests/integration --junitxml=$(RESULTS)/integration.xml

# The GPU path (CUDA, float16, channels_last); needs a host with CUDA, so not part of `test`.
test-gpu: venv
	$(BIN)/pytest tests/gpu --junitxml=$(RESULTS)/gpu.xml

# Podman, its settings and the instance image built from Debian's archive; idempotent, root.
molecule-host:
	scripts/prepare-molecule-host.sh

# One `molecule test` per scenario (create, converge, idempotence, check mode, Testinfra
# verify, destroy); each writes its JUnit XML to $(RESULTS)/molecule-NAME.xml.
molecule: venv molecule-host
	@for scenario in $(MOLECULE_SCENARIOS); do \
	  $(TIMED) "molecule $$scenario" $(BIN)/molecule test -s $$scenario || exit 1; \
	done

test:
	@rm -rf $(RESULTS) && mkdir -p $(RESULTS)
	@$(TIMED) "install (venv)" $(MAKE) --no-print-directory venv
	@$(TIMED) "install (test deps)" $(MAKE) --no-print-directory test-deps
	@$(TIMED) "install (molecule host)" $(MAKE) --no-print-directory molecule-host
	@$(TIMED) lint $(MAKE) --no-print-directory lint
	@$(TIMED) "pytest unit" $(MAKE) --no-print-directory unit
	@$(TIMED) "pytest integration" $(MAKE) --no-print-directory integration
	@$(MAKE) --no-print-directory molecule

bench: venv
	$(BIN)/python bench/benchmark.py

clean:
	rm -rf var bench/results .pytest_cache .ruff_cache
