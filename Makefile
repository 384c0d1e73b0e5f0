# Two entry points: `make run` (the main job) and `make test`. Both set up on first use:
# a virtual environment in .venv and the broker and Delta jars in .cache/jars.

PYTHON ?= python3.11
VENV := .venv
BCRATOS := $(VENV)/bin/bcratos
INSTALLED := $(VENV)/.installed
JARS := .cache/jars/kafka/.resolved .cache/jars/spark/.resolved

# The test stack has its own data directory and ports, so `make test` never touches the data
# or the broker of a stack that `make run` left running.
TEST_ENV := BCRATOS_DATA_DIR=$(CURDIR)/.bcratos-test BCRATOS_KAFKA__PORT=19092 \
	BCRATOS_KAFKA__CONTROLLER_PORT=19093
PYTEST_ARGS ?=
# The real recordings that `make run` replays; see ../shared/data/README.md.
DATA ?= ../shared/data

.PHONY: run test setup jars stop lint slurm

setup: $(INSTALLED) $(JARS)

$(INSTALLED): pyproject.toml
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -e '.[dev]'
	touch $@

$(JARS): $(INSTALLED) infra/maven/kafka/pom.xml infra/maven/spark/pom.xml
	$(BCRATOS) stack jars

# The main job: the closed loop on the real recordings (`bcratos loop`). It starts the embedded
# stack, the stream processors with the retrain monitors and the orchestrator, replays the
# recordings as boards, and follows the retrains that volume and then drift trigger until the
# boards have installed the new decoders; it ends with a summary and the HTML report.
# Everything stays up for exploration: `make stop`. SPEED=1 replays in real time.
SPEED ?=
LOOP_ARGS ?=
run: setup
	$(BCRATOS) loop --recordings $(DATA) $(if $(SPEED),--speed $(SPEED)) $(LOOP_ARGS)

# Starts the test stack unless it already runs, runs pytest, and stops the stack only if this
# target started it.
test: setup slurm
	@started=0; \
	if ! $(TEST_ENV) $(BCRATOS) stack status >/dev/null 2>&1; then \
		$(TEST_ENV) $(BCRATOS) stack up || exit 1; started=1; \
	fi; \
	$(TEST_ENV) $(VENV)/bin/python -m pytest $(PYTEST_ARGS); rc=$$?; \
	if [ $$started = 1 ]; then $(TEST_ENV) $(BCRATOS) stack down; fi; \
	exit $$rc

# A single-node Slurm cluster (munged, slurmctld, slurmd) for the tests of the Slurm backend.
# Needs root; stop it with infra/slurm/stop.sh.
slurm:
	@if [ "$$(id -u)" -ne 0 ]; then \
		echo "make slurm: the Slurm test cluster needs root (apt-get, munged, slurmctld," \
			"slurmd); run make test as root, as CI does" >&2; \
		exit 1; \
	fi
	infra/slurm/setup.sh

stop: setup
	$(BCRATOS) orchestrator stop
	$(BCRATOS) streams stop
	$(BCRATOS) stack down

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy bcratos infra
