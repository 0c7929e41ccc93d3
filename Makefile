# Autopack: `make run` runs the example plan on the embedded default stack,
# `make test` sets everything up and runs every test.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
SERVICE_PACKAGES := common estimator builder applier memory orchestrator cli
PROTO_FILES := $(shell find protos -name '*.proto')
INSTALLED := $(VENV)/.installed
GENERATED := services/common/autopack/.generated
PLAN ?= examples/plan.yaml

.PHONY: setup protos snapshot run test lint format bench postgres up down clean

setup: $(INSTALLED)

$(VENV)/.deps: requirements.lock
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -r requirements.lock
	touch $@

# Stubs are generated, never committed; each generated folder is a package.
$(GENERATED): $(VENV)/.deps $(PROTO_FILES) scripts/gen-protos.sh
	bash scripts/gen-protos.sh $(BIN)/python services/common
	touch $@

protos: $(GENERATED)

$(INSTALLED): $(GENERATED) $(foreach s,$(SERVICE_PACKAGES),services/$(s)/pyproject.toml)
	$(BIN)/pip install -q --no-deps $(foreach s,$(SERVICE_PACKAGES),-e services/$(s))
	touch $@

# Freeze the released estimator contract (run on release; the contract test compares against it).
snapshot: setup
	$(BIN)/python protos/snapshots/update_snapshot.py autopack/estimator/v1/estimator.proto

postgres:
	@bash scripts/ensure-postgres.sh

run: setup
	@bash scripts/run-example.sh $(PLAN)

up: setup
	$(BIN)/autopack up

down:
	$(BIN)/autopack down

test: setup postgres
	bash scripts/run-tests.sh

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: setup
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

bench: setup
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) services/common/autopack .autopack
