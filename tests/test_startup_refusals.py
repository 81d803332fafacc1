"""Production refuses secrets anyone could guess; the worker refuses to start when it could
never reach Cobalt, or would reach it over plain http in production."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from webhook_service.cli import main
from webhook_service.http import create_app
from webhook_service.settings import DEVELOPMENT_SECRET_KEY, Settings

DEV_ENV = Path(__file__).resolve().parents[1] / "config" / "dev.env"


def production(**overrides: str) -> dict[str, str]:
    values = {
        "WEBHOOK_SERVICE_ENV": "production",
        "SECRET_KEY": "s" * 64,
        "PHI_ENCRYPTION_KEYS": "k" * 64,
        "PHI_SEARCH_KEY": "h" * 64,
        "COBALT_CLIENT_ID": "ci_live",
        "COBALT_CLIENT_SECRET": "cs_live",
    }
    values.update(overrides)
    return values


def test_the_development_secret_key_is_the_one_committed_in_dev_env() -> None:
    assert f"SECRET_KEY={DEVELOPMENT_SECRET_KEY}\n" in DEV_ENV.read_text()


@pytest.mark.parametrize(
    ("secret_key", "says"),
    [
        (DEVELOPMENT_SECRET_KEY, "SECRET_KEY is the development one committed in config/dev.env"),
        ("x" * 31, "SECRET_KEY must be at least 32 bytes in production"),
    ],
)
def test_production_refuses_a_guessable_secret_key_in_the_release_and_the_web(
    cli_env: dict[str, str], secret_key: str, says: str
) -> None:
    result = CliRunner().invoke(
        main, ["migrate"], env={**cli_env, **production(SECRET_KEY=secret_key)}
    )
    assert result.exit_code == 2  # a setting the command will not run with: one line, exit 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1
    assert says in lines[0]
    with pytest.raises(RuntimeError, match=says):
        create_app(Settings(**production(SECRET_KEY=secret_key)))


def test_a_32_byte_secret_key_is_enough() -> None:
    Settings(**production(SECRET_KEY="x" * 32)).require_web_secrets()


def test_development_still_runs_with_the_committed_key() -> None:
    Settings(
        WEBHOOK_SERVICE_ENV="development", SECRET_KEY=DEVELOPMENT_SECRET_KEY
    ).require_web_secrets()


@pytest.mark.parametrize(
    ("overrides", "says"),
    [
        (
            {"COBALT_CLIENT_ID": "", "COBALT_CLIENT_SECRET": ""},
            "COBALT_CLIENT_ID and COBALT_CLIENT_SECRET must be set",
        ),
        ({"COBALT_CLIENT_SECRET": ""}, "COBALT_CLIENT_SECRET must be set"),
        (
            {"COBALT_API_URL": "http://api.usecobalt.com/v1"},
            "COBALT_API_URL must be https in production",
        ),
    ],
)
def test_the_worker_refuses_to_start_in_one_line_with_exit_status_2(
    cli_env: dict[str, str], overrides: dict[str, str], says: str
) -> None:
    result = CliRunner().invoke(main, ["worker"], env={**cli_env, **production(**overrides)})
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1
    assert json.loads(lines[0])["level"] == "ERROR"  # a process's line: JSON, like its logs
    assert says in json.loads(lines[0])["message"]


@pytest.mark.parametrize(
    ("environment", "url"),
    [
        ("development", "http://cobalt.internal/v1"),
        ("production", "https://api.usecobalt.com/v1"),
        ("production", "http://127.0.0.1:5001/v1"),  # a sandbox on this machine (the bench)
    ],
)
def test_the_worker_accepts_https_and_plain_http_only_where_nothing_leaves_the_machine(
    environment: str, url: str
) -> None:
    Settings(
        **production(WEBHOOK_SERVICE_ENV=environment, COBALT_API_URL=url)
    ).require_worker_settings()


@pytest.mark.parametrize("seconds", ["61", "3600", "-1"])
def test_a_revoked_token_cannot_be_trusted_for_more_than_a_minute(
    cli_env: dict[str, str], seconds: str
) -> None:
    says = "AUTH_CACHE_SECONDS must be between 0 and 60"
    result = CliRunner().invoke(
        main, ["migrate"], env={**cli_env, **production(AUTH_CACHE_SECONDS=seconds)}
    )
    assert result.exit_code == 2  # a setting the command will not run with: one line, exit 2
    assert len(result.output.strip().splitlines()) == 1
    assert says in result.output
    with pytest.raises(RuntimeError, match=says):
        create_app(Settings(WEBHOOK_SERVICE_ENV="test", AUTH_CACHE_SECONDS=seconds))


def test_a_minute_is_the_longest_auth_cache_allowed() -> None:
    Settings(**production(AUTH_CACHE_SECONDS="60")).require_web_secrets()
