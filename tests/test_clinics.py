"""Several clinics: each front end submits for its clinic, Cobalt is called with that
clinic's token, and note webhooks are matched by appointment within their clinic."""

from __future__ import annotations

import responses
from click.testing import CliRunner

from tests.conftest import COBALT, START, event
from tests.test_lifecycle_http import NOTE
from webhook_service.cli import main
from webhook_service.db import transaction
from webhook_service.services import create_client
from webhook_service.services.clinics import add_clinic


def test_notes_for_the_same_appointment_in_two_clinics_settle_separately(
    app, client, worker, cobalt, post_webhook, sessions
):
    with transaction(sessions) as session:
        north = add_clinic(session, name="north", access_token="at_north", now=START)
        session.flush()
        _, token = create_client(
            session, name="north-app", role="frontend", clinic_id=north.id, now=START
        )
    north_client = app.test_client(token=token)
    cobalt.add(responses.POST, f"{COBALT}/notes", json={"success": True, "message": "ok"})
    cobalt.remove(responses.GET, f"{COBALT}/settings")
    cobalt.add_callback(
        responses.GET,
        f"{COBALT}/settings",
        callback=_reference_by_token,
    )
    default_job = client.post("/v1/notes", json=NOTE).json["id"]
    north_job = north_client.post("/v1/notes", json=NOTE).json["id"]
    assert worker.run_once()
    assert worker.run_once(), "same appointment, different clinics: both go at once"
    tokens = sorted(
        c.request.headers["access_token"] for c in cobalt.calls if c.request.url.endswith("/notes")
    )
    assert tokens == ["at_north", "at_test_clinic"]

    post_webhook(event("note.failed", reference="atr_north", appointment_id="728948"))
    assert north_client.get(f"/v1/jobs/{north_job}").json["status"] == "failed"
    assert client.get(f"/v1/jobs/{default_job}").json["status"] == "processing"
    post_webhook(event("note.created", reference="atr_clinic_1", appointment_id="728948"))
    assert client.get(f"/v1/jobs/{default_job}").json["status"] == "completed"


def _reference_by_token(request):
    token = request.headers["access_token"]
    reference = "atr_north" if token == "at_north" else "atr_clinic_1"
    return (200, {}, f'{{"success": true, "access_token_reference_id": "{reference}"}}')


def test_clinics_cli_adds_lists_and_relinks(cli_env):
    env = cli_env
    runner = CliRunner()
    added = runner.invoke(main, ["clinics", "add", "south", "--access-token", "at_s"], env=env)
    assert added.exit_code == 0, added.output
    assert "with id" in added.output
    listed = runner.invoke(main, ["clinics", "list"], env=env)
    assert "south\t(not learned yet)\tok" in listed.output
    assert "at_s" not in listed.output
    duplicate = runner.invoke(main, ["clinics", "add", "south", "--access-token", "x"], env=env)
    assert duplicate.exit_code != 0
    relinked = runner.invoke(
        main, ["clinics", "relink", "south", "--access-token", "at_s2"], env=env
    )
    assert relinked.exit_code == 0, relinked.output
