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
# The pinned requirements as wheels, for the Molecule instances and their image (filled by
# scripts/prepare-molecule-host.sh as this machine's pip is configured; kept between runs).
export BENTO_FLEET_WHEELHOUSE ?= /var/cache/bento-fleet/molecule/wheelhouse

.PHONY: venv serve build image test check test-deps lint unit integration test-gpu podman-host \
	container-base molecule-host molecule molecule-bare bench bench-burst bench-profile bench-hop clean

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

# The OCI image of the Bento: `bentoml containerize` with podman, FROM the runtime base built from
# Debian's archive (container/). BentoML reads the Dockerfile template only from below the
# working directory, and writes its build context to TMPDIR: both in var/.
IMAGE_TAG ?= localhost/bento-fleet-classifier:latest
image: build container-base
	mkdir -p var/containerize
	cd var/containerize && TMPDIR=$(CURDIR)/var/containerize \
	  $(CURDIR)/$(BIN)/bentoml containerize bento-fleet-classifier:latest --backend podman \
	  --image-tag $(IMAGE_TAG)

# System packages the tests use as real parts (PostgreSQL); idempotent.
test-deps:
	scripts/install-test-deps.sh

lint: venv
	$(BIN)/ruff check service tests bench molecule scripts
	$(BIN)/ruff format --check service tests bench molecule scripts
	$(BIN)/yamllint --strict .
	$(BIN)/ansible-lint --profile production

unit: venv
	$(BIN)/pytest tests/unit --junitxml=$(RESULTS)/unit.xml

integration: venv test-deps container-base
	$(BIN)/pytest tests/integration --junitxml=$(RESULTS)/integration.xml

# The GPU path (CUDA, float16, channels_last); needs a host with CUDA, so not part of `test`.
test-gpu: venv
	$(BIN)/pytest tests/gpu --junitxml=$(RESULTS)/gpu.xml

# Podman, its settings and the wheelhouse; idempotent, root.
podman-host:
	scripts/prepare-podman-host.sh

# The container image's base: Debian's archive and the wheelhouse (container/runtime-image.sh);
# rebuilt only when the pins change.
container-base: podman-host
	container/runtime-image.sh $(BENTO_FLEET_WHEELHOUSE)

# The podman host and the instance images built from Debian's archive; idempotent, root.
molecule-host:
	scripts/prepare-molecule-host.sh

# One `molecule test` per scenario (create, converge, idempotence, check mode, Testinfra
# verify, destroy); each writes its JUnit XML to $(RESULTS)/molecule-NAME.xml. The instances
# start from images that carry their packages and the service's venv already (MOLECULE_IMAGE_SET).
molecule: venv molecule-host
	@for scenario in $(MOLECULE_SCENARIOS); do \
	  $(TIMED) "molecule $$scenario" $(BIN)/molecule test -s $$scenario || exit 1; \
	done

# The same scenarios from the bare image: the roles install every package and build the venv
# themselves: about 8 more minutes of converge (apt installs 4, the torch venv 3.5, as measured).
# Not in `test`; run it when a role's packages or its pip step change, and weekly.
molecule-bare:
	@$(MAKE) --no-print-directory molecule MOLECULE_IMAGE_SET=bare

# The inner loop: everything `test` runs except Molecule.
check: lint unit integration

test:
	@rm -rf $(RESULTS) && mkdir -p $(RESULTS)
	@$(TIMED) "install (venv)" $(MAKE) --no-print-directory venv
	@$(TIMED) "install (test deps)" $(MAKE) --no-print-directory test-deps
	@$(TIMED) "install (molecule host)" $(MAKE) --no-print-directory molecule-host
	@$(TIMED) "install (container base)" $(MAKE) --no-print-directory container-base
	@$(TIMED) lint $(MAKE) --no-print-directory lint
	@$(TIMED) "pytest unit" $(MAKE) --no-print-directory unit
	@$(TIMED) "pytest integration" $(MAKE) --no-print-directory integration
	@$(MAKE) --no-print-directory molecule

bench: venv
	$(BIN)/python bench/benchmark.py

# Photo clients beside a burst of 40-megapixel PNGs (bench/benchmark.py, section 4).
bench-burst: venv
	$(BIN)/python bench/benchmark.py --burst --duration 15

# Where the server's CPU goes under 16 clients (py-spy; root or ptrace rights).
bench-profile: venv
	$(BIN)/python bench/benchmark.py --profile 20

# What a bentoml.depends hop costs, the price of a front/model split (bench/hop.py).
bench-hop: venv
	$(BIN)/python bench/hop.py

clean:
	rm -rf var bench/results .pytest_cache .ruff_cache
