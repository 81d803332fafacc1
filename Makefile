# The two commands: `make run` (whole system locally) and `make test` (every check).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint install migrate clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

## Run web + worker + Cobalt sandbox on the embedded SQLite database (Ctrl-C stops all).
run: $(STAMP)
	set -a && . config/dev.env && set +a && $(BIN)/webhook-service migrate
	@echo
	@echo "  webhook_service: http://127.0.0.1:5000   Cobalt sandbox: http://127.0.0.1:5050"
	@echo "  try:  curl -si -X POST http://127.0.0.1:5000/v1/notes -H 'Content-Type: application/json' \\"
	@echo "          -d '{\"appointment_id\": \"728948\", \"note\": \"Patient doing well.\"}'"
	@echo "  then: curl -s http://127.0.0.1:5000/v1/jobs/<id from the answer>"
	@echo
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/honcho --env config/dev.env --procfile Procfile.dev start

## Lint, type-check, check models against migrations, and run the test suite.
test: lint
	$(BIN)/pytest

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	rm -f /tmp/webhook-service-alembic-check.sqlite3
	DATABASE_URL=sqlite:////tmp/webhook-service-alembic-check.sqlite3 $(BIN)/webhook-service migrate >/dev/null
	DATABASE_URL=sqlite:////tmp/webhook-service-alembic-check.sqlite3 $(BIN)/alembic check

migrate: $(STAMP)
	$(BIN)/webhook-service migrate

clean:
	rm -rf $(VENV) instance .pytest_cache .mypy_cache .ruff_cache .hypothesis
