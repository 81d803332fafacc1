# The two commands: `make run` (whole system locally) and `make test` (every check).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint lock install migrate client bench reliability clean

# Two stamps: `make run` installs the service and what runs it (the `run` extra); `make test`
# and the tools install the `dev` extra too, which includes `run`, so it stamps both.
RUN_STAMP := $(VENV)/.installed-run

$(RUN_STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[run]'
	touch $(RUN_STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP) $(RUN_STAMP)

install: $(STAMP)

## Run web + worker + Cobalt sandbox on the embedded SQLite database (Ctrl-C stops all).
# The banner (webhook_service/dev.py) waits for the web process and prints last, so the
# links and curl commands are the screen a person sees. Ctrl-C is the way to stop: trapped,
# so make does not report it as an error.
run: $(RUN_STAMP)
	@set -a && . config/dev.env && set +a && $(BIN)/webhook-service migrate
	@set -a && . config/dev.env && set +a && \
	  trap 'echo; echo "  stopped (make run starts it again)"; exit 0' INT TERM; \
	  $(BIN)/python -m webhook_service.dev & \
	  PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/honcho --env config/dev.env --procfile Procfile.dev start

## Lint, type-check, check models against migrations, and run the test suite.
# In TEST_WORKERS processes side by side (pytest-xdist): most of the suite's time is waiting
# on real processes, so three share two cores well. TEST_WORKERS=0 runs it in one process.
TEST_WORKERS ?= 3
test: lint
	$(BIN)/pytest -n $(TEST_WORKERS)

lint: $(STAMP)
	@# uv.lock (what the platform installs) must match pyproject.toml
	$(BIN)/uv lock --check || { echo "uv.lock is out of step with pyproject.toml: run make lock" >&2; exit 1; }
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	@# models match migrations: migrate a scratch SQLite file (one per run: parallel runs don't collide)
	@check=$$(mktemp -d) && trap 'rm -rf "$$check"' EXIT && \
	  WEBHOOK_SERVICE_ENV=development DATABASE_URL=sqlite:///$$check/check.sqlite3 $(BIN)/webhook-service migrate >/dev/null && \
	  DATABASE_URL=sqlite:///$$check/check.sqlite3 $(BIN)/alembic check

## Regenerate uv.lock from pyproject.toml (after changing a dependency; `make test` checks it).
lock: $(STAMP)
	$(BIN)/uv lock

migrate: $(RUN_STAMP)
	@set -a && . config/dev.env && set +a && $(BIN)/webhook-service migrate

## Create an API client on the local database: make client NAME=alice ROLE=support (token: last line).
client: $(RUN_STAMP)
	@test -n "$(NAME)" || { echo "usage: make client NAME=alice ROLE=support|frontend" >&2; exit 2; }
	@set -a && . config/dev.env && set +a && $(BIN)/webhook-service migrate >/dev/null && \
	  $(BIN)/webhook-service clients create "$(NAME)" --role "$(or $(ROLE),support)"

## Performance bench against bare baselines (needs wrk and PostgreSQL; see bench/README.md).
bench: $(STAMP)
	$(BIN)/python -m bench $(ARGS)

## Fault-injection run of the real processes on PostgreSQL (see reliability/README.md).
reliability: $(STAMP)
	$(BIN)/python -m reliability.run $(ARGS)

clean:
	rm -rf $(VENV) instance .pytest_cache .mypy_cache .ruff_cache .hypothesis
