"""The `webhook-service` command line: help, version, and one-line errors (exit 2)."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from webhook_service.cli import main


def one_error_line(result: Result) -> str:
    """The single line a failed command wrote on stderr (and nothing on stdout)."""
    assert result.exit_code == 2, result.output
    assert isinstance(result.exception, SystemExit)
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    assert "Traceback" not in lines[0]
    return lines[0]


def test_version_and_short_help_work() -> None:
    runner = CliRunner()
    version = runner.invoke(main, ["--version"])
    assert version.exit_code == 0
    assert version.output.startswith("webhook-service, version ")
    for args in (["-h"], ["clients", "-h"], ["clients", "create", "-h"]):
        helped = runner.invoke(main, args, prog_name="webhook-service")
        assert helped.exit_code == 0, helped.output
        assert helped.output.startswith("Usage: webhook-service")


def test_missing_production_settings_are_one_line_and_exit_2(tmp_path: Path) -> None:
    env = {
        "WEBHOOK_SERVICE_ENV": "production",
        "DATABASE_URL": f"sqlite:///{tmp_path / 'db.sqlite3'}",
        "PHI_ENCRYPTION_KEYS": None,
        "PHI_SEARCH_KEY": None,
    }
    result = CliRunner().invoke(main, ["clients", "create", "alice", "--role", "support"], env=env)
    assert "PHI_ENCRYPTION_KEYS and PHI_SEARCH_KEY must be set" in one_error_line(result)


def test_invalid_setting_is_one_line_naming_the_variable() -> None:
    result = CliRunner().invoke(main, ["clients", "list"], env={"WEBHOOK_SERVICE_ENV": "staging"})
    assert one_error_line(result).startswith("Error: invalid settings: WEBHOOK_SERVICE_ENV:")


def test_no_schema_yet_says_to_migrate_first(tmp_path: Path, cli_env: dict[str, str]) -> None:
    env = cli_env | {"DATABASE_URL": f"sqlite:///{tmp_path / 'empty.sqlite3'}"}
    result = CliRunner().invoke(main, ["clients", "create", "alice", "--role", "support"], env=env)
    line = one_error_line(result)
    assert "no schema yet" in line
    assert "webhook-service migrate" in line


def test_database_down_is_one_line(cli_env: dict[str, str]) -> None:
    # Port 1 on loopback: nothing listens, so the connection is refused at once.
    env = cli_env | {"DATABASE_URL": "postgresql://nobody@127.0.0.1:1/none"}
    result = CliRunner().invoke(main, ["clients", "list"], env=env)
    line = one_error_line(result)
    assert line.startswith("Error: cannot use the database:")
    assert "refused" in line


@pytest.mark.parametrize("role", ["frontend", "support"])
def test_a_refusal_by_the_service_still_exits_1(cli_env: dict[str, str], role: str) -> None:
    runner = CliRunner()
    args = ["clients", "create", f"twice-{role}", "--role", role]
    assert runner.invoke(main, args, env=cli_env).exit_code == 0
    again = runner.invoke(main, args, env=cli_env)
    assert again.exit_code == 1
    assert again.stderr.startswith("Error: ")
