"""Redocly lints the app's /openapi.json with the repository's redocly.yaml: no error, no warning.

Redocly CLI is installed once with npm into `.venv/` (ignored, removed by `make clean`). Without
npm the test skips, except under CI, where it fails: the check must run there.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from flask.testing import FlaskClient

ROOT = Path(__file__).resolve().parent.parent
REDOCLY_VERSION = "2.77.0"
REDOCLY_DIR = ROOT / ".venv" / f"redocly-{REDOCLY_VERSION}"
REDOCLY = REDOCLY_DIR / "node_modules" / ".bin" / "redocly"


def redocly() -> Path:
    """Return the pinned Redocly CLI, installing it with npm on first use."""
    if REDOCLY.exists():
        return REDOCLY
    npm = shutil.which("npm")
    if npm is None:
        reason = "npm is not installed: Redocly CLI cannot lint /openapi.json"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    subprocess.run(
        [
            npm,
            "install",
            "--prefix",
            str(REDOCLY_DIR),
            "--no-save",
            "--no-audit",
            "--no-fund",
            f"@redocly/cli@{REDOCLY_VERSION}",
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    return REDOCLY


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_openapi_document_passes_redocly_recommended_lint(
    client: FlaskClient, tmp_path: Path
) -> None:
    document = tmp_path / "openapi.json"
    document.write_text(json.dumps(client.get("/openapi.json").json))
    result = subprocess.run(
        [
            str(redocly()),
            "lint",
            "--config",
            str(ROOT / "redocly.yaml"),
            "--format",
            "summary",
            str(document),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "REDOCLY_TELEMETRY": "off", "REDOCLY_SUPPRESS_UPDATE_NOTICE": "true"},
    )
    report = result.stdout + result.stderr
    problems = [line for line in report.splitlines() if line.startswith(("error", "warning"))]
    assert result.returncode == 0, report
    assert not problems, report


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_openapi_declares_the_headers_and_answers_every_route_can_give(
    client: FlaskClient,
) -> None:
    spec = client.get("/openapi.json").json
    for path, item in spec["paths"].items():
        for method, operation in item.items():
            if method == "parameters":
                continue
            responses = operation["responses"]
            assert "500" in responses, (path, method)
            if path != "/healthz":
                assert "Retry-After" in responses["503"]["headers"], (path, method)
            for status, response in responses.items():
                assert "X-Request-ID" in response["headers"], (path, method, status)
    submitted = spec["paths"]["/v1/notes"]["post"]["responses"]
    assert {"Location", "Idempotent-Replayed"} <= set(submitted["202"]["headers"])
    assert "Retry-After" in submitted["429"]["headers"]
    polled = spec["paths"]["/v1/jobs/{job_id}"]["get"]["responses"]
    assert {"ETag", "Retry-After"} <= set(polled["200"]["headers"])


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_openapi_names_the_outcome_and_types_its_known_keys(client: FlaskClient) -> None:
    schemas = client.get("/openapi.json").json["components"]["schemas"]
    outcome = schemas["JobOut"]["properties"]["outcome"]["anyOf"]
    assert {"$ref": "#/components/schemas/JobOutcome"} in outcome
    known = schemas["JobOutcome"]
    assert known["properties"]["reasons"]["type"] == "array"
    assert known["additionalProperties"] is True  # what Cobalt adds is passed through
