"""Headers every answer carries: no content sniffing, and in production https only."""

from __future__ import annotations

import pytest
from flask.testing import FlaskClient

from tests.conftest import make_settings
from tests.test_lifecycle_http import NOTE
from webhook_service.http import create_app


def test_api_answers_and_problems_are_never_sniffed(client: FlaskClient, app) -> None:
    submitted = client.post("/v1/notes", json=NOTE)
    answers = [
        submitted,
        client.get(submitted.headers["Location"]),
        client.get("/v1/jobs/not-a-job"),
        app.test_client(token="wrong").get("/v1/jobs"),
        client.get("/healthz"),
    ]
    assert [a.headers.get("X-Content-Type-Options") for a in answers] == ["nosniff"] * 5
    assert all("Strict-Transport-Security" not in a.headers for a in answers)  # not production


@pytest.mark.parametrize("environment", ["production", "development"])
def test_only_production_tells_browsers_to_use_https_only(
    database_url: str, environment: str
) -> None:
    settings = make_settings(database_url, WEBHOOK_SERVICE_ENV=environment, SECRET_KEY="s" * 64)
    app = create_app(settings)
    try:
        response = app.test_client().get("/healthz")
    finally:
        app.extensions["webhook_service"]["engine"].dispose()
    hsts = response.headers.get("Strict-Transport-Security")
    assert hsts == ("max-age=31536000" if environment == "production" else None)


def test_the_root_icon_is_served_not_a_404(client: FlaskClient) -> None:
    """Browsers and tools ask for /favicon.ico whatever a page links."""
    answer = client.get("/favicon.ico")
    assert answer.status_code == 200
    assert answer.mimetype == "image/svg+xml"
    assert answer.data.startswith(b"<svg")
