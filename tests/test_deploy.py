"""The service as a platform builds and runs it, not as a checkout does.

Heroku's way: a fresh Python gets exactly what uv.lock says (`uv sync --locked`, as the Python
buildpack runs it), app.json's variables (secrets generated as the platform generates them),
a `postgres://` DATABASE_URL, then the Procfile's release and web lines in a shell, and a note
gets its 202. A wheel built from the project installs into a fresh virtualenv and migrates
from anywhere; an installation that cannot find its migrations says so (one line, 503).
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import time
import tomllib
import venv
import zipfile
from collections.abc import Iterator, Mapping
from contextlib import suppress
from pathlib import Path
from typing import Any

import pytest
import requests
from flask.testing import FlaskClient
from sqlalchemy.engine import make_url

from tests.processes import ROOT, free_port, throwaway_postgres_database
from webhook_service import migrations
from webhook_service.http import health
from webhook_service.sandbox.config import DEFAULT_CLIENT_ID, DEFAULT_CLIENT_SECRET
from webhook_service.settings import Settings

INSTALL_SECONDS = 300
CANARY = "PHI-CANARY-7f3a"


def run(
    argv: list[str | Path], *, cwd: Path, env: Mapping[str, str] | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """Run a command to completion; fail the test with its output if it fails."""
    result = subprocess.run(
        [str(a) for a in argv],
        cwd=cwd,
        env=None if env is None else dict(env),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if result.returncode != 0:
        pytest.fail(
            f"{argv} exited {result.returncode}\n--- stdout\n{result.stdout}\n"
            f"--- stderr\n{result.stderr}"
        )
    return result


def pushed_files() -> list[str]:
    """What `git push` would carry: tracked files, plus new ones not ignored (work in progress)."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout.decode()
    return sorted(name for name in set(listed.split("\0")) if name and (ROOT / name).is_file())


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the project as pushed: no .venv, no build leftovers, no egg-info."""
    target = tmp_path_factory.mktemp("source") / "app"
    for name in pushed_files():
        (target / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, target / name)
    return target


def fresh_venv(path: Path) -> Path:
    """A new virtualenv, as `python -m venv` makes it; its bin directory."""
    venv.EnvBuilder(with_pip=True, clear=True).create(path)
    return path / "bin"


def outside_environment(**settings: str) -> dict[str, str]:
    """This process's environment less this venv and the service's settings, plus `settings`."""
    ours = {str(f.validation_alias) for f in Settings.model_fields.values()}
    ours |= {"PORT", "WEB_CONCURRENCY", "GUNICORN_THREADS", "VIRTUAL_ENV", "PYTHONPATH"}
    ours |= set(BUILDPACK_PROFILE)
    env = {k: v for k, v in os.environ.items() if k not in ours}
    env["PATH"] = os.pathsep.join(
        p for p in env.get("PATH", "").split(os.pathsep) if Path(p) != Path(sys.executable).parent
    )
    env.update(settings)
    return env


def heroku_url(database_url: str) -> str:
    """The `postgres://` form Heroku's add-on sets."""
    url = make_url(database_url).set(drivername="postgres")
    return url.render_as_string(hide_password=False)


# --- app.json --------------------------------------------------------------------------------

# Set by the platform, not by a person: the add-on sets DATABASE_URL, the dyno manager PORT.
PLATFORM_SET = {"DATABASE_URL", "PORT"}
# What the Python buildpack's .profile.d scripts export on every dyno (python.gunicorn.sh).
BUILDPACK_PROFILE = {"FORWARDED_ALLOW_IPS": "*", "GUNICORN_CMD_ARGS": "--access-logfile -"}
# What a person deploying with the button types into the fields app.json requires.
TYPED_BY_A_PERSON = {
    "COBALT_CLIENT_ID": DEFAULT_CLIENT_ID,
    "COBALT_CLIENT_SECRET": DEFAULT_CLIENT_SECRET,
}


def app_json(root: Path = ROOT) -> dict[str, Any]:
    manifest: dict[str, Any] = json.loads((root / "app.json").read_text())
    return manifest


def example_env_names() -> set[str]:
    lines = (ROOT / "config" / "example.env").read_text().splitlines()
    return {line.split("=", 1)[0] for line in lines if line and not line.startswith("#")}


def test_app_json_lists_every_setting_the_platform_does_not_set() -> None:
    env = app_json()["env"]
    assert set(env) == example_env_names() - PLATFORM_SET
    for name, spec in env.items():
        assert spec["description"].strip(), name
        assert set(spec) <= {"description", "value", "required", "generator"}, name
        # Each says how it gets a value: given, generated, or asked for (or optional).
        assert ("value" in spec) + ("generator" in spec) + ("required" in spec) == 1, name
        assert spec.get("generator", "secret") == "secret", name  # the only generator
    for name in ("SECRET_KEY", "PHI_ENCRYPTION_KEYS", "PHI_SEARCH_KEY"):
        assert env[name].get("generator") == "secret", name


def test_app_json_runs_every_procfile_process_on_postgres() -> None:
    manifest = app_json()
    procfile = (ROOT / "Procfile").read_text().splitlines()
    processes = {line.split(":", 1)[0] for line in procfile if ":" in line} - {"release"}
    assert set(manifest["formation"]) == processes == {"web", "worker"}
    for process in manifest["formation"].values():
        assert process["quantity"] == 1
    assert [a["plan"].split(":")[0] for a in manifest["addons"]] == ["heroku-postgresql"]


def button_config(manifest: Mapping[str, Any]) -> dict[str, str]:
    """The config vars a button deploy sets: values, generated secrets, what a person types."""
    config = {}
    for name, spec in manifest["env"].items():
        if spec.get("generator") == "secret":
            config[name] = secrets.token_hex(32)  # Heroku's: 64 hex characters
        elif "value" in spec:
            config[name] = spec["value"]
        elif spec.get("required", True):
            assert name in TYPED_BY_A_PERSON, f"app.json asks a person for {name}: add it here"
            config[name] = TYPED_BY_A_PERSON[name]
    return config


def procfile_line(root: Path, name: str) -> str:
    for line in (root / "Procfile").read_text().splitlines():
        key, sep, command = line.partition(":")
        if sep and key.strip() == name:
            return command.strip()
    raise LookupError(f"no {name!r} line in the Procfile")


def dev_extra_names(root: Path) -> set[str]:
    """What the extras (`dev`, and the `run` it includes) add: none of it is production's."""
    project = tomllib.loads((root / "pyproject.toml").read_text())["project"]
    extras = [spec for specs in project["optional-dependencies"].values() for spec in specs]
    names = {re.split(r"[\[=<>~!; ]", spec, maxsplit=1)[0].lower() for spec in extras}
    return names - {project["name"]}


def installed_names(bin_dir: Path) -> set[str]:
    listing = run(
        [
            bin_dir / "python",
            "-c",
            "import importlib.metadata as m;"
            "print('\\n'.join(d.metadata['Name'] for d in m.distributions()))",
        ],
        cwd=bin_dir,
    )
    return {line.strip().lower().replace("_", "-") for line in listing.stdout.splitlines()}


def stop(popen: subprocess.Popen[bytes]) -> None:
    """SIGTERM to the process group, SIGKILL to whatever is left after 10 s."""
    if popen.poll() is None:
        with suppress(ProcessLookupError):
            os.killpg(popen.pid, signal.SIGTERM)
        with suppress(subprocess.TimeoutExpired):
            popen.wait(10)
    with suppress(ProcessLookupError, PermissionError):
        os.killpg(popen.pid, signal.SIGKILL)
    popen.wait(10)


def wait_ready(url: str, popen: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if popen.poll() is not None:
            pytest.fail(f"web exited {popen.returncode}:\n{log.read_text(errors='replace')}")
        with suppress(requests.RequestException):
            if requests.get(url, timeout=1).status_code == 200:
                return
        time.sleep(0.1)
    pytest.fail(f"web not ready within 60 s:\n{log.read_text(errors='replace')}")


@pytest.mark.e2e
def test_a_heroku_build_from_the_lock_runs_release_and_web_and_takes_a_note(
    source: Path, postgres_server_url: str, tmp_path: Path
) -> None:
    # The build: the platform's fresh Python, filled by `uv sync --locked` exactly as the
    # buildpack runs it: the lock alone decides, and a lock out of step fails here.
    pinned = (source / ".python-version").read_text().strip()
    running = f"{sys.version_info.major}.{sys.version_info.minor}"
    assert pinned == running, f"the platform builds Python {pinned}; this test runs {running}"
    python_home = tmp_path / "python"
    bin_dir = fresh_venv(python_home)
    build_env = outside_environment(
        UV_PROJECT_ENVIRONMENT=str(python_home),
        UV_PYTHON_DOWNLOADS="never",
        UV_NO_MANAGED_PYTHON="1",
    )
    uv = Path(sys.executable).parent / "uv"
    run(
        [uv, "sync", "--locked", "--no-default-groups", "--compile-bytecode", "--no-progress"],
        cwd=source,
        env=build_env,
        timeout=INSTALL_SECONDS,
    )
    installed = installed_names(bin_dir)
    assert {"webhook-service", "gunicorn", "psycopg-binary"} <= installed
    assert installed & dev_extra_names(source) == set()  # production dependencies only

    # The run: app.json's config vars, the add-on's postgres:// URL, the platform's PORT; each
    # Procfile line run by a shell from the app's directory, the build's Python first on PATH.
    port = free_port()
    with throwaway_postgres_database(postgres_server_url, "deploy") as url:
        env = outside_environment(
            **button_config(app_json(source)),
            **BUILDPACK_PROFILE,
            DATABASE_URL=heroku_url(url),
            PORT=str(port),
        )
        env["PATH"] = f"{bin_dir}{os.pathsep}{env['PATH']}"
        released = run(["bash", "-c", procfile_line(source, "release")], cwd=source, env=env)
        assert "database migrated to head" in released.stdout
        log = tmp_path / "web.log"
        with log.open("wb") as output:
            web = subprocess.Popen(
                ["bash", "-c", procfile_line(source, "web")],
                cwd=source,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        try:
            base = f"http://127.0.0.1:{port}"
            wait_ready(f"{base}/readyz", web, log)
            created = run(
                ["bash", "-c", "webhook-service clients create deploy-check --role frontend"],
                cwd=source,
                env=env,
            )
            token = created.stdout.strip().splitlines()[-1]
            response = requests.post(
                f"{base}/v1/notes",
                headers={"Authorization": f"Bearer {token}"},
                json={"appointment_id": "728948", "note": "Patient doing well."},
                timeout=10,
            )
            assert response.status_code == 202, response.text
            assert response.json()["status"] == "processing"
            # A query string may carry PHI (support searches by MRN): no log line may hold one.
            polled = requests.get(
                f"{base}/v1/jobs/{response.json()['id']}?canary={CANARY}",
                headers={"Authorization": f"Bearer {token}"},
                timeout=10,
            )
            assert polled.status_code == 200, polled.text
        finally:
            stop(web)
    assert CANARY not in log.read_text(errors="replace")


# --- The wheel ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def wheel(source: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`pip wheel . --no-deps`, from the pushed files."""
    out = tmp_path_factory.mktemp("wheel")
    run(
        [sys.executable, "-m", "pip", "wheel", ".", "--no-deps", "--quiet", "-w", out],
        cwd=source,
        timeout=INSTALL_SECONDS,
    )
    (built,) = out.glob("webhook_service-*.whl")
    return built


def test_the_wheel_ships_every_file_of_the_package_and_the_migrations(
    wheel: Path, source: Path
) -> None:
    with zipfile.ZipFile(wheel) as archive:
        shipped = set(archive.namelist())
    expected = {name for name in pushed_files() if name.startswith("webhook_service/")} | {
        "webhook_service/_migrations/" + name.removeprefix("migrations/")
        for name in pushed_files()
        if name.startswith("migrations/") and name.endswith((".py", ".mako"))
    }
    assert expected - shipped == set()
    assert "webhook_service/_migrations/env.py" in shipped


@pytest.mark.e2e
def test_an_installed_wheel_migrates_and_is_ready_outside_the_checkout(
    wheel: Path, postgres_server_url: str, tmp_path: Path
) -> None:
    bin_dir = fresh_venv(tmp_path / "venv")
    run([bin_dir / "pip", "install", "--quiet", wheel], cwd=tmp_path, timeout=INSTALL_SECONDS)
    elsewhere = tmp_path / "elsewhere"  # no migrations/ or alembic.ini anywhere near
    elsewhere.mkdir()
    with throwaway_postgres_database(postgres_server_url, "wheel") as url:
        env = outside_environment(
            DATABASE_URL=heroku_url(url),
            WEBHOOK_SERVICE_ENV="test",
            PHI_ENCRYPTION_KEYS="a" * 64,
            PHI_SEARCH_KEY="b" * 64,
        )
        migrated = run([bin_dir / "webhook-service", "migrate"], cwd=elsewhere, env=env)
        assert "database migrated to head" in migrated.stdout
        probe = (
            "import json; from webhook_service.http import create_app;"
            "from webhook_service.settings import Settings;"
            "r = create_app(Settings()).test_client().get('/readyz');"
            "print(json.dumps({'status': r.status_code, 'body': r.json}))"
        )
        answer = run([bin_dir / "python", "-c", probe], cwd=elsewhere, env=env)
    ready = json.loads(answer.stdout.strip().splitlines()[-1])
    assert ready == {
        "status": 200,
        "body": {"status": "ready"},  # the schema only for a support token
    }


# --- Without migrations: one clear line, and not ready ------------------------------------


@pytest.fixture
def no_migrations(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    monkeypatch.setattr(migrations, "INSTALLED", tmp_path / "installed")
    monkeypatch.setattr(migrations, "PROJECT", tmp_path / "project")
    monkeypatch.setattr(health, "_head", None)
    yield
    health._head = None  # read again, from the real scripts, by the next test


def test_readyz_is_503_with_a_problem_when_the_schema_cannot_be_checked(
    no_migrations: None, client: FlaskClient, support: FlaskClient
) -> None:
    response = support.get("/readyz")
    assert response.status_code == 503
    assert response.content_type == "application/problem+json"
    assert "cannot be checked" in response.json["detail"]
    assert str(migrations.PROJECT) not in response.json["detail"]
    anyone = client.get("/readyz")  # the reason is for support only
    assert anyone.status_code == 503
    assert anyone.json["detail"] == "Not ready."


def test_migrate_without_migrations_fails_with_one_line_saying_where_it_looked(
    no_migrations: None, cli_env: dict[str, str]
) -> None:
    from click.testing import CliRunner

    from webhook_service.cli import main

    result = CliRunner().invoke(main, ["migrate"], env=cli_env)
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1
    line = json.loads(lines[0])  # the release's lines are JSON, its refusal too
    assert line["level"] == "ERROR"
    assert line["message"].startswith("no migration scripts beside webhook_service")
    assert str(migrations.PROJECT) in line["message"]


# --- The release refuses settings the web and worker would refuse --------------------------


@pytest.mark.parametrize(
    ("unset", "short", "says"),
    [
        ("SECRET_KEY", None, "SECRET_KEY must be set in production"),
        ("PHI_ENCRYPTION_KEYS", None, "PHI_ENCRYPTION_KEYS and PHI_SEARCH_KEY must be set"),
        (None, "PHI_ENCRYPTION_KEYS", "or a random secret of at least 32 characters"),
    ],
)
def test_the_release_fails_in_one_line_saying_what_to_set(
    cli_env: dict[str, str], unset: str | None, short: str | None, says: str
) -> None:
    from click.testing import CliRunner

    from webhook_service.cli import main

    env: dict[str, str | None] = {
        **cli_env,
        "WEBHOOK_SERVICE_ENV": "production",
        "SECRET_KEY": "s" * 64,
        "PHI_ENCRYPTION_KEYS": "k" * 64,
        "PHI_SEARCH_KEY": "h" * 64,
    }
    if unset:
        env[unset] = None
    if short:
        env[short] = "too-short"
    result = CliRunner().invoke(main, ["migrate"], env=env)
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1
    assert says in lines[0]
