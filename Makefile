# Everything a new machine needs is created on first use: `make run` and `make test` are the whole set-up.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cksum < pyproject.toml | cut -d' ' -f1)

.PHONY: run test lint bench soak fuzz chaos compat test-ha test-docker clean venv

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python >= 3.11 is required (set PYTHON=python3.11)")'
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@rm -f $(VENV)/.installed-*
	@touch $@

venv: $(STAMP)

## Start broker (embedded amqtt unless one answers), reader on the simulator, aggregator and gateway.
run: $(STAMP)
	$(BIN)/renogy-proxy run $(ARGS)

## Lint, type-check and run every test (short forms of soak, chaos and fuzz included; never the long ones).
test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy
	RENOGY_PROOF= $(BIN)/python -m pytest -q $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check . || true
	$(BIN)/mypy

## Benchmarks (~10 min): print figures and record them in docs/benchmarks.md. ARGS="--quick" for a smoke run.
bench: $(STAMP)
	$(BIN)/python -m tests.bench $(ARGS)

## Long proofs; each prints its figures and records them in docs/benchmarks.md.
## 10,000-cycle fault soak of the whole stack (~45 min) and a simulated day (~3 min).
soak: $(STAMP)
	RENOGY_PROOF=long $(BIN)/python -m pytest -q -s -m slow tests/proof/test_proof_soak.py $(PYTEST_ARGS)

## 10 broker restarts and 50 SIGKILLs of each service, a 5 min broker outage, clock steps, and a 60 s
## cable cut between four hosts (network namespaces; as root, else it is skipped with the reason) (~35 min).
chaos: $(STAMP)
	RENOGY_PROOF=long $(BIN)/python -m pytest -q -s -rs -m slow tests/proof/test_proof_chaos.py \
		tests/proof/test_proof_outage.py tests/proof/test_proof_clock.py \
		tests/proof/test_proof_multihost.py $(PYTEST_ARGS)

## Every fuzzer with the long budget: >= 100,000 API frames, >= 10,000 MQTT payloads (~5 min).
fuzz: $(STAMP)
	RENOGY_PROOF=long $(BIN)/python -m pytest -q -s tests -k fuzz $(PYTEST_ARGS)

## Client-version matrix: the gateway against aioesphomeapi 21.0.3 ... 46.23.0 (one cached venv each), plaintext and Noise; prints the table.
compat: $(STAMP)
	$(BIN)/python -m tests.compat $(PYTEST_ARGS)

## A real Home Assistant 2026.2.3 adds the stack over the native API (~1-2 min; the HA venv is built on
## first use, ~2 min, and cached in $${XDG_CACHE_HOME:-~/.cache}/renogy-bt-proxy).
test-ha: $(STAMP)
	RENOGY_HA_TEST=1 $(BIN)/python -m pytest -q -s -rs tests/ha $(PYTEST_ARGS)

## `docker compose up` for real on the simulator, with our Mosquitto and with an existing one (~5-10 min;
## as root it installs docker.io and starts dockerd, base images are debootstrap stand-ins cached in
## $${XDG_CACHE_HOME:-~/.cache}/renogy-bt-proxy/docker). Prints stage times, image size per layer.
test-docker: $(STAMP)
	RENOGY_DOCKER_TEST=1 $(BIN)/python -m pytest -q -s -rs tests/docker $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis
