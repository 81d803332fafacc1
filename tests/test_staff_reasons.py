"""Staff reasons stay in the audit log for good: bounded, and the docs ask for no PHI."""

from __future__ import annotations

from flask.testing import FlaskClient


def test_the_api_docs_warn_staff_to_write_no_phi_in_a_reason(client: FlaskClient) -> None:
    schemas = client.get("/openapi.json").json["components"]["schemas"]
    for name in ("RetryRequest", "ChartOutcomeRequest", "StaffAction"):
        reason = schemas[name]["properties"]["reason"]
        assert reason["maxLength"] == 500
        assert "write no PHI" in reason["description"]
