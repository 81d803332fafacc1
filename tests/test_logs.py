"""Every process logs one JSON shape: an object per line with the same keys and a UTC
millisecond timestamp, gunicorn's own lines and boot failures included."""

from __future__ import annotations

import json
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.processes import (
    ROOT,
    Process,
    base_environment,
    free_port,
    procfile_command,
    running_system,
    throwaway_postgres_database,
)
from webhook_service.logs import REQUIRED_KEYS
from webhook_service.sandbox.data import DEMO_IDS

pytestmark = pytest.mark.e2e

TIMESTAMP = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")
NOTE_TEXT = "Canary note text: patient reports chest pain"


@pytest.fixture
def throwaway_postgres(postgres_server_url: str) -> Iterator[str]:
    with throwaway_postgres_database(postgres_server_url) as url:
        yield url


def json_lines(path: Path) -> list[dict[str, Any]]:
    """Every line of a process's output as a log object; fails on the first that is not one."""
    lines = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        parsed = json.loads(line)  # a plain-text line fails here
        assert isinstance(parsed, dict), f"{path.name}:{number}: {line}"
        assert list(parsed)[: len(REQUIRED_KEYS)] == list(REQUIRED_KEYS), f"{path.name}:{number}"
        assert TIMESTAMP.fullmatch(parsed["time"]), f"{path.name}:{number}: {parsed['time']}"
        lines.append(parsed)
    assert lines, f"{path.name} is empty"
    return lines


def messages(lines: list[dict[str, Any]]) -> str:
    return "\n".join(str(line["message"]) for line in lines)


def test_every_process_logs_json_lines_from_boot_to_exit(
    throwaway_postgres: str, tmp_path: Path
) -> None:
    with running_system(throwaway_postgres, tmp_path) as system:
        body = {"appointment_id": DEMO_IDS["appointment_id"], "note": NOTE_TEXT}
        job = system.api().post(f"{system.web_url}/v1/notes?mrn=MRN-CANARY", json=body, timeout=5)
        assert job.status_code == 202, job.text
        job_url = f"{system.web_url}/v1/jobs/{job.json()['id']}"
        for _ in range(150):
            status = system.api().get(job_url, timeout=5).json()["status"]
            if status == "completed":
                break
            time.sleep(0.2)
        assert status == "completed"
        processes: dict[str, Process] = dict(system.processes)
    # Stopped now (SIGTERM): the lines of a whole life, exit included.
    web = json_lines(processes["web"].log_path)
    assert "Booting worker" in messages(web)  # gunicorn's own lines
    assert "Worker exiting" in messages(web)
    assert any(line.get("path") == "/v1/notes" for line in web)  # the app's
    worker = json_lines(processes["worker"].log_path)
    assert "submission accepted" in messages(worker)
    assert "worker stopped" in messages(worker)
    sandbox = json_lines(processes["sandbox"].log_path)
    assert "sandbox_stopped" in messages(sandbox)
    release = json_lines(tmp_path / "release.log")
    assert "Running upgrade" in messages(release)  # alembic's
    assert "database migrated to head" in messages(release)
    for name, lines in [("web", web), ("worker", worker), ("sandbox", sandbox)]:
        text = json.dumps(lines)
        for phi in (NOTE_TEXT, DEMO_IDS["patient_mrn"], "MRN-CANARY"):
            assert phi not in text, (name, phi)


@pytest.mark.parametrize(
    ("app", "overrides", "says"),
    [
        (
            "webhook_service.wsgi:app",
            {"WEBHOOK_SERVICE_ENV": "production", "SECRET_KEY": "short"},
            "SECRET_KEY must be at least 32 bytes in production",
        ),
        ("webhook_service.no_such_module:app", {}, "No module named"),
    ],
)
def test_a_web_process_that_cannot_boot_says_why_in_json_lines(
    tmp_path: Path, app: str, overrides: dict[str, str], says: str
) -> None:
    port = free_port()
    argv = [*procfile_command("web"), "--bind", f"127.0.0.1:{port}"]
    argv = [app if part == "webhook_service.wsgi:app" else part for part in argv]
    env = base_environment(f"sqlite:///{tmp_path / 'db.sqlite3'}", tmp_path, overrides)
    log_path = tmp_path / "web.log"
    with log_path.open("wb") as output:
        result = subprocess.run(
            argv,
            cwd=ROOT,
            env=env,
            stdout=output,
            stderr=subprocess.STDOUT,
            timeout=60,
            check=False,
        )
    assert result.returncode != 0
    lines = json_lines(log_path)
    # The master's word on it ("Worker failed to boot", or, when both workers fail at once,
    # gunicorn's own uncaught HaltServer) is a JSON line like the rest: `json_lines` says so.
    assert "exited with code 3" in messages(lines)
    assert says in messages(lines)
    failure = next(line for line in lines if line["message"] == "Exception in worker process")
    assert failure["level"] == "ERROR"
    assert failure["error_type"] in {"RuntimeError", "ModuleNotFoundError"}


@pytest.mark.parametrize(
    ("command", "overrides", "says"),
    [
        (
            "release",
            {"WEBHOOK_SERVICE_ENV": "production", "SECRET_KEY": "short"},
            "SECRET_KEY must be at least 32 bytes in production",
        ),
        ("worker", {"COBALT_CLIENT_SECRET": ""}, "COBALT_CLIENT_SECRET must be set"),
    ],
)
def test_a_release_or_worker_that_refuses_to_start_says_why_in_a_json_line(
    tmp_path: Path, command: str, overrides: dict[str, str], says: str
) -> None:
    env = base_environment(f"sqlite:///{tmp_path / 'db.sqlite3'}", tmp_path, overrides)
    log_path = tmp_path / f"{command}.log"
    with log_path.open("wb") as output:
        result = subprocess.run(
            procfile_command(command),
            cwd=ROOT,
            env=env,
            stdout=output,
            stderr=subprocess.STDOUT,
            timeout=60,
            check=False,
        )
    assert result.returncode == 2
    [line] = json_lines(log_path)
    assert line["level"] == "ERROR"
    assert says in line["message"]
