"""The service as a platform builds and runs it, not as a checkout does.

A wheel built from the project installs into a fresh virtualenv and migrates from anywhere;
an installation that cannot find its migrations says so (one line, 503), never a 500.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import venv
import zipfile
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest
from flask.testing import FlaskClient
from sqlalchemy.engine import make_url

from tests.processes import ROOT, throwaway_postgres_database
from webhook_service import health, migrations

INSTALL_SECONDS = 300


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
    """This process's environment less the service's settings and this venv, plus `settings`."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in {"VIRTUAL_ENV", "PYTHONPATH", "DATABASE_URL", "PORT"}
        and not k.startswith(("PHI_", "COBALT_", "WEBHOOK_SERVICE_"))
    }
    env["PATH"] = os.pathsep.join(
        p for p in env.get("PATH", "").split(os.pathsep) if Path(p) != Path(sys.executable).parent
    )
    env.update(settings)
    return env


def heroku_url(database_url: str) -> str:
    """The `postgres://` form Heroku's add-on sets."""
    url = make_url(database_url).set(drivername="postgres")
    return url.render_as_string(hide_password=False)


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
            "import json; from webhook_service import create_app;"
            "from webhook_service.settings import Settings;"
            "r = create_app(Settings()).test_client().get('/readyz');"
            "print(json.dumps({'status': r.status_code, 'body': r.json}))"
        )
        answer = run([bin_dir / "python", "-c", probe], cwd=elsewhere, env=env)
    ready = json.loads(answer.stdout.strip().splitlines()[-1])
    assert ready == {
        "status": 200,
        "body": {"status": "ready", "schema": migrations.schema_head()},
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
    no_migrations: None, client: FlaskClient
) -> None:
    response = client.get("/readyz")
    assert response.status_code == 503
    assert response.content_type == "application/problem+json"
    assert "cannot be checked" in response.json["detail"]
    assert str(migrations.PROJECT) not in response.json["detail"]


def test_migrate_without_migrations_fails_with_one_line_saying_where_it_looked(
    no_migrations: None, cli_env: dict[str, str]
) -> None:
    from click.testing import CliRunner

    from webhook_service.cli import main

    result = CliRunner().invoke(main, ["migrate"], env=cli_env)
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("Error: no migration scripts beside webhook_service")
    assert str(migrations.PROJECT) in lines[0]


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
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1
    assert says in lines[0]
