"""`webhook-service …`: the operational commands (migrate, worker, sandbox)."""

from __future__ import annotations

import click

from webhook_service.settings import Settings


@click.group()
def main() -> None:
    """Operate webhook_service."""


@main.command()
@click.option("--revision", default="head", show_default=True)
def migrate(revision: str) -> None:
    """Migrate the database (DATABASE_URL, or the embedded SQLite file) to REVISION."""
    from webhook_service.migrations import upgrade

    settings = Settings()
    upgrade(settings.effective_database_url, revision)
    click.echo(f"database migrated to {revision}")


@main.command()
def worker() -> None:
    """Run the worker: submit jobs to Cobalt, retry, expire claims, apply parked webhooks."""
    from webhook_service.worker import run_worker

    run_worker(Settings())


def _add_sandbox() -> None:
    from webhook_service.sandbox.cli import sandbox_command

    main.add_command(sandbox_command)


_add_sandbox()
