"""Run the Alembic migrations from code (release phase, CLI, tests).

The scripts live in the project's top-level `migrations/`; a built wheel carries the same
files as `webhook_service/_migrations` (pyproject.toml maps one onto the other), so a service
installed from a wheel migrates exactly as one run from a checkout.
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory

PACKAGE = Path(__file__).resolve().parent
INSTALLED = PACKAGE / "_migrations"  # only in a wheel's install
PROJECT = PACKAGE.parent / "migrations"  # a checkout, or an editable install of one


class MigrationsMissing(RuntimeError):
    """This installation of the package has no migration scripts."""


def script_location() -> Path:
    """The directory of the migration scripts this code was shipped with."""
    for candidate in (INSTALLED, PROJECT):
        if (candidate / "env.py").is_file():
            return candidate
    raise MigrationsMissing(
        f"no migration scripts beside webhook_service (looked in {INSTALLED} and {PROJECT}): "
        "install the package from a wheel built by this project, or run it from a checkout"
    )


def alembic_config(database_url: str) -> Config:
    # The project's alembic.ini serves Alembic's own command line (`alembic check`); from
    # code, everything it would say is set here, so an installed package needs no ini file.
    config = Config()
    config.set_main_option("script_location", str(script_location()))
    config.set_main_option("path_separator", "os")
    config.attributes["database_url"] = database_url
    return config


def schema_head() -> str | None:
    """The newest migration this code was shipped with."""
    config = Config()
    config.set_main_option("script_location", str(script_location()))
    config.set_main_option("path_separator", "os")
    return ScriptDirectory.from_config(config).get_current_head()


def upgrade(database_url: str, revision: str = "head") -> None:
    command.upgrade(alembic_config(database_url), revision)


def downgrade(database_url: str, revision: str = "base") -> None:
    command.downgrade(alembic_config(database_url), revision)
