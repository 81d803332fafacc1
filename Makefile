# The two commands: `make run` (whole system locally) and `make test` (every check).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint lock install migrate client bench reliability clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

## Run web + worker + Cobalt sandbox on the embedded SQLite database (Ctrl-C stops all).
run: $(STAMP)
	@set -a && . config/dev.env && set +a && $(BIN)/webhook-service migrate
	@set -a && . config/dev.env && set +a && \
	  token=$$($(BIN)/webhook-service clients create "curl-$$(date +%s)" --role frontend | tail -n 1) && \
	  echo && \
	  echo "  Open http://127.0.0.1:5000/ to try it in a browser (Cobalt sandbox: http://127.0.0.1:5050)." && \
	  echo "  Or from a terminal, with a front-end token made for you:" && \
	  echo && \
	  echo "    export TOKEN=$$token" && \
	  echo "    curl -si -X POST http://127.0.0.1:5000/v1/notes -H \"Authorization: Bearer \$$TOKEN\" \\" && \
	  echo "      -H 'Content-Type: application/json' -d '{\"appointment_id\": \"728948\", \"note\": \"Patient doing well.\"}'" && \
	  echo "    curl -s -H \"Authorization: Bearer \$$TOKEN\" http://127.0.0.1:5000/v1/jobs/<id from the answer>" && \
	  echo
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/honcho --env config/dev.env --procfile Procfile.dev start

## Lint, type-check, check models against migrations, and run the test suite.
test: lint
	$(BIN)/pytest

lint: $(STAMP)
	@# uv.lock (what the platform installs) must match pyproject.toml
	$(BIN)/uv lock --check || { echo "uv.lock is out of step with pyproject.toml: run make lock" >&2; exit 1; }
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	rm -f /tmp/webhook-service-alembic-check.sqlite3
	WEBHOOK_SERVICE_ENV=development DATABASE_URL=sqlite:////tmp/webhook-service-alembic-check.sqlite3 $(BIN)/webhook-service migrate >/dev/null
	DATABASE_URL=sqlite:////tmp/webhook-service-alembic-check.sqlite3 $(BIN)/alembic check

## Regenerate uv.lock from pyproject.toml (after changing a dependency; `make test` checks it).
lock: $(STAMP)
	$(BIN)/uv lock

migrate: $(STAMP)
	@set -a && . config/dev.env && set +a && $(BIN)/webhook-service migrate

## Create an API client on the local database: make client NAME=alice ROLE=support (token: last line).
client: $(STAMP)
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
