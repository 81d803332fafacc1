"""`webhook-service callbacks …`: register, rotate, show, enable, remove; list and resend."""

from __future__ import annotations

from click.testing import CliRunner
from sqlalchemy import select

from tests.conftest import new_token
from webhook_service.cli import main
from webhook_service.db import SessionFactory
from webhook_service.models import CallbackEndpoint

URL = "https://hooks.example.com/emr"


def run(env: dict[str, str], *args: str) -> str:
    result = CliRunner().invoke(main, ["callbacks", *args], env=env)
    assert result.exit_code == 0, result.output
    return result.output


def test_register_rotate_and_remove_from_the_command_line(
    cli_env: dict[str, str], sessions: SessionFactory
) -> None:
    new_token(sessions, "clinic-app", "frontend")
    env = {**cli_env, "CALLBACK_ALLOW_PRIVATE_NETWORKS": "true"}
    registered = run(env, "register", "clinic-app", URL).splitlines()
    secret = registered[-1]
    assert secret.startswith("whsec_")
    with sessions() as session:
        stored = session.scalars(select(CallbackEndpoint)).one()
        assert stored.secret == secret
        assert stored.url == URL

    shown = run(env, "show", "clinic-app")
    assert f"url: {URL}" in shown
    assert "state: enabled" in shown
    assert secret not in shown

    rotated = run(env, "rotate-secret", "clinic-app").splitlines()[-1]
    assert rotated.startswith("whsec_")
    assert rotated != secret
    with sessions() as session:
        stored = session.scalars(select(CallbackEndpoint)).one()
        assert (stored.secret, stored.previous_secret) == (rotated, secret)
    assert "previous secret signs until: 20" in run(env, "show", "clinic-app")

    assert "enabled" in run(env, "enable", "clinic-app")
    assert "removed" in run(env, "remove", "clinic-app")
    gone = CliRunner().invoke(main, ["callbacks", "show", "clinic-app"], env=env)
    assert gone.exit_code == 1
    assert "No callback is registered" in gone.output


def test_an_unsafe_url_or_unknown_client_is_refused_in_one_line(
    cli_env: dict[str, str], sessions: SessionFactory
) -> None:
    new_token(sessions, "clinic-app", "frontend")
    refused = CliRunner().invoke(
        main, ["callbacks", "register", "clinic-app", "http://10.0.0.5/hook"], env=cli_env
    )
    assert refused.exit_code == 1
    assert "url: must be https" in refused.output
    unknown = CliRunner().invoke(main, ["callbacks", "register", "nobody", URL], env=cli_env)
    assert unknown.exit_code == 1
    assert "No active front-end client named 'nobody'" in unknown.output


def test_support_lists_deliveries_and_an_unknown_one_cannot_be_resent(
    cli_env: dict[str, str], sessions: SessionFactory
) -> None:
    assert run(cli_env, "deliveries") == ""
    missing = CliRunner().invoke(
        main,
        ["callbacks", "resend", "42", "--reason", "receiver fixed", "--as", "sam"],
        env=cli_env,
    )
    assert missing.exit_code == 1
    assert "No callback delivery with id '42'" in missing.output
