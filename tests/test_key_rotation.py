"""The documented key rotation, end to end: add the new key first, `keys rotate`, drop the old
key; the worker still sends, with the clinic's own Cobalt access token."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import responses
from click.testing import CliRunner
from cryptography.fernet import Fernet, InvalidToken
from sqlalchemy import select, text

from tests.conftest import COBALT, PHI_KEY, PHI_SEARCH_KEY
from tests.processes import (
    BIN,
    kill_group,
    restart_worker,
    running_system,
    throwaway_postgres_database,
)
from tests.processes import _run as run_command
from tests.test_lifecycle_http import NOTE
from webhook_service import phi
from webhook_service.cli import main
from webhook_service.db import make_engine, transaction
from webhook_service.models import Clinic
from webhook_service.sandbox.data import DEMO_IDS
from webhook_service.services import create_client


@pytest.fixture
def restore_keys():
    yield
    phi.configure(phi.PhiKeys((PHI_KEY,), PHI_SEARCH_KEY))


def test_after_rotating_and_dropping_the_old_key_the_worker_still_sends_for_every_clinic(
    app, worker, cobalt, cli_env, sessions, engine, restore_keys
):
    runner = CliRunner()
    added = runner.invoke(
        main, ["clinics", "add", "north", "--access-token", "at_north"], env=cli_env
    )
    assert added.exit_code == 0, added.output
    with transaction(sessions) as session:
        clinic = session.scalars(select(Clinic).where(Clinic.name == "north")).one()
        _, token = create_client(
            session, name="north-app", role="frontend", clinic_id=clinic.id, now=worker.clock()
        )
    job_id = app.test_client(token=token).post("/v1/notes", json=NOTE).json["id"]

    new_key = Fernet.generate_key().decode()
    both = {**cli_env, "PHI_ENCRYPTION_KEYS": f"{new_key},{PHI_KEY}"}
    rotated = runner.invoke(main, ["keys", "rotate"], env=both)
    assert rotated.exit_code == 0, rotated.output

    # The old key is dropped: every process now holds the new key only.
    phi.configure(phi.PhiKeys((new_key,), PHI_SEARCH_KEY))
    with engine.connect() as conn:
        stored = bytes(conn.execute(text("SELECT access_token_enc FROM clinics")).scalar_one())
    with pytest.raises(InvalidToken):
        Fernet(PHI_KEY.encode()).decrypt(stored)
    listed = runner.invoke(
        main, ["clinics", "list"], env={**cli_env, "PHI_ENCRYPTION_KEYS": new_key}
    )
    assert listed.exit_code == 0, listed.output

    cobalt.add(responses.POST, f"{COBALT}/notes", json={"success": True, "message": "ok"})
    assert worker.run_once()
    sent = [c.request for c in cobalt.calls if c.request.url.endswith("/notes")]
    assert [r.headers["access_token"] for r in sent] == ["at_north"]
    assert NOTE["note"]["plan"] in sent[0].body.decode()  # the note decrypted too
    assert app.test_client(token=token).get(f"/v1/jobs/{job_id}").json["status"] == "processing"


@pytest.mark.e2e
def test_the_documented_rotation_through_the_real_processes(
    postgres_server_url: str, tmp_path: Path
) -> None:
    """Web and worker under the old key; `keys rotate` with both; a worker with only the new
    key sends what was waiting, with the clinic's token, and Cobalt's webhook settles it."""
    old, new = Fernet.generate_key().decode(), Fernet.generate_key().decode()
    keys = {"PHI_ENCRYPTION_KEYS": old, "PHI_SEARCH_KEY": "s" * 64}
    with (
        throwaway_postgres_database(postgres_server_url, "rotate") as database_url,
        running_system(database_url, tmp_path, env=keys) as system,
    ):
        kill_group(system.processes["worker"])  # the job waits for the rotated worker
        note = {"appointment_id": DEMO_IDS["appointment_id"], "note": "Patient doing well."}
        submitted = system.api().post(f"{system.web_url}/v1/notes", json=note, timeout=10)
        assert submitted.status_code == 202, submitted.text

        system.environ["PHI_ENCRYPTION_KEYS"] = f"{new},{old}"
        rotate = [str(BIN / "webhook-service"), "keys", "rotate"]
        assert "re-encrypted" in run_command(rotate, system.environ, tmp_path / "rotate.log")
        system.environ["PHI_ENCRYPTION_KEYS"] = new  # the old key is dropped
        restart_worker(system)

        engine = make_engine(database_url)
        try:
            deadline = time.monotonic() + 30
            status = None
            while time.monotonic() < deadline and status != "completed":
                time.sleep(0.2)
                with engine.connect() as conn:
                    status = conn.execute(text("SELECT status FROM jobs")).scalar_one()
        finally:
            engine.dispose()
        assert status == "completed", system.tails()
        assert len(system.sandbox_submissions()) == 1
