"""What `make run` adds: development clients kept across runs, and the banner."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import delete, func, select

from tests.conftest import FakeClock
from webhook_service.db import SessionFactory, transaction
from webhook_service.dev import banner, kept_token
from webhook_service.models import ApiClient
from webhook_service.services import authenticate
from webhook_service.settings import Settings


def clients_named(sessions: SessionFactory, name: str) -> int:
    with transaction(sessions) as session:
        return (
            session.scalar(
                select(func.count()).select_from(ApiClient).where(ApiClient.name == name)
            )
            or 0
        )


def works(sessions: SessionFactory, token: str) -> bool:
    with transaction(sessions) as session:
        return authenticate(session, token) is not None


def test_each_run_reuses_the_kept_client_and_token(
    sessions: SessionFactory, clock: FakeClock, tmp_path: Path
) -> None:
    path = tmp_path / "instance" / "curl.token"
    first = kept_token(sessions, name="curl", path=path, now=clock())
    second = kept_token(sessions, name="curl", path=path, now=clock())
    assert second == first
    assert path.read_text().strip() == first
    assert path.stat().st_mode & 0o077 == 0  # the token file is the owner's alone
    assert clients_named(sessions, "curl") == 1
    assert works(sessions, first)


def test_a_lost_token_file_reissues_the_same_client(
    sessions: SessionFactory, clock: FakeClock, tmp_path: Path
) -> None:
    path = tmp_path / "curl.token"
    old = kept_token(sessions, name="curl", path=path, now=clock())
    path.unlink()
    new = kept_token(sessions, name="curl", path=path, now=clock())
    assert new != old
    assert clients_named(sessions, "curl") == 1
    assert works(sessions, new)
    assert not works(sessions, old)


def test_a_token_the_database_does_not_know_is_replaced(
    sessions: SessionFactory, clock: FakeClock, tmp_path: Path
) -> None:
    path = tmp_path / "demo-page.token"
    old = kept_token(sessions, name="demo-page", path=path, now=clock())
    with transaction(sessions) as session:  # a fresh database, the file left behind
        session.execute(delete(ApiClient).where(ApiClient.name == "demo-page"))
    new = kept_token(sessions, name="demo-page", path=path, now=clock())
    assert new != old
    assert works(sessions, new)
    assert path.read_text().strip() == new


def test_the_banner_gives_the_links_and_a_pasteable_token(settings: Settings) -> None:
    text = banner(
        settings.model_copy(update={"cobalt_api_url": "http://127.0.0.1:5050/v1"}), "wst_x"
    )
    assert "http://127.0.0.1:5000/\n" in text
    assert "http://127.0.0.1:5000/console" in text
    assert "make client NAME=you ROLE=support" in text
    # The sandbox's own overview, not its root (which answers 404).
    assert "http://127.0.0.1:5050/_sandbox" in text
    assert "export TOKEN=wst_x" in text
