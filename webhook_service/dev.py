"""What `make run` adds to the processes: development clients kept across runs, and a banner.

The curl examples and the demo page each use one `frontend` client with a stable name whose
token is kept in a file under `instance/`, so a run reuses it instead of adding a client.
Development only: a token in a file is no way to hold a production secret.
"""

from __future__ import annotations

import fcntl
import os
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Final

import requests

from webhook_service import phi, services
from webhook_service.db import SessionFactory, make_engine, make_session_factory, transaction
from webhook_service.services.clients import ClientExists
from webhook_service.settings import Settings

INSTANCE: Final = Path("instance")
WEB_URL: Final = "http://127.0.0.1:5000"  # as Procfile.dev binds it


def kept_token(sessions: SessionFactory, *, name: str, path: Path, now: datetime) -> str:
    """The token of `frontend` client NAME, kept in PATH: created once, reused after.

    A kept token that no longer works (a new database, say) is replaced: the client is created,
    or given a new token if it exists. A lock file serialises the web processes that ask at once.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.with_name(path.name + ".lock").open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        with transaction(sessions) as session:
            if path.exists():
                token = path.read_text().strip()
                client = services.authenticate(session, token)
                if client is not None and client.name == name:
                    return token
            try:
                _, token = services.create_client(
                    session, name=name, role="frontend", clinic_id=None, now=now
                )
            except ClientExists:  # the client exists, its token was lost: issue a new one
                token = services.reissue_token(session, name)
        path.write_text(token + "\n")
        path.chmod(0o600)
        return token


def banner(settings: Settings, token: str) -> str:
    """What a person needs once everything is up: where to look, what to paste."""
    sandbox = settings.cobalt_api_url.removesuffix("/v1")
    return f"""
  ┌─ webhook_service is up (Ctrl-C stops everything) ─────────────────────────────
  │ Demo page        {WEB_URL}/
  │ Support console  {WEB_URL}/console   sign in with a token from
  │                  `make client NAME=you ROLE=support` (in another terminal)
  │ Cobalt sandbox   {sandbox}/_sandbox   (its demo ids and faults)
  │
  │ From a terminal, with a front-end token kept for you in instance/curl.token:
  │   export TOKEN={token}
  │   curl -si -X POST {WEB_URL}/v1/notes -H "Authorization: Bearer $TOKEN" \\
  │     -H 'Content-Type: application/json' \\
  │     -d '{{"appointment_id": "728948", "note": "Patient doing well."}}'
  │   curl -s -H "Authorization: Bearer $TOKEN" {WEB_URL}/v1/jobs/<id from the answer>
  └───────────────────────────────────────────────────────────────────────────────
"""


def web_answers(url: str, within: float) -> bool:
    """Whether `url` answers 200 within `within` seconds."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            if requests.get(url, timeout=1).status_code == 200:
                return True
        except requests.RequestException:
            pass
        time.sleep(0.3)
    return False


def main() -> int:
    """`python -m webhook_service.dev`: print the banner once the web process is ready."""
    settings = Settings()
    phi.configure(settings.phi_keys())
    engine = make_engine(settings.effective_database_url)
    try:
        token = kept_token(
            make_session_factory(engine),
            name="curl",
            path=INSTANCE / "curl.token",
            now=datetime.now(UTC),
        )
    finally:
        engine.dispose()
    parent = os.getppid()
    # Printed last, after the processes' start-up lines, so it is the screen a person sees.
    if web_answers(f"{WEB_URL}/readyz", within=60) and os.getppid() == parent:
        sys.stdout.write(banner(settings, token))
        sys.stdout.flush()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
