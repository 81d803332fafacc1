"""`webhook-service …`: the operational commands (migrate, worker, sandbox, clients, keys).

A command that cannot run (settings missing or invalid, no schema yet, database down) says
why in one line on stderr and exits 2; one the service refuses (a duplicate name) exits 1.
"""

from __future__ import annotations

import logging
from importlib.metadata import PackageNotFoundError, version
from typing import IO, Any

import click
from pydantic import ValidationError
from sqlalchemy.exc import DBAPIError

from webhook_service.cli.base import session_factory
from webhook_service.cli.callbacks import callbacks
from webhook_service.cli.support import jobs as support_jobs
from webhook_service.clock import utcnow
from webhook_service.error_tracking import init_error_tracking
from webhook_service.migrations import MigrationsMissing
from webhook_service.settings import Settings

# The commands the platform runs as processes (Procfile's release and worker): all they
# print is log lines (webhook_service/logs.py), a refusal to start included.
PROCESS_COMMANDS = frozenset({"migrate", "worker"})


class CannotRun(click.ClickException):
    """The command could not run here: settings (including ones a process will not start
    with), schema or database. One line on stderr (a process's: a log line on stdout), exit 2."""

    exit_code = 2
    as_log_line = False

    def show(self, file: IO[Any] | None = None) -> None:
        if not self.as_log_line:
            return super().show(file)
        from webhook_service.logs import log_line

        click.echo(log_line(logging.ERROR, "webhook_service.cli", self.message))
        return None


def _cannot_run(exc: Exception) -> CannotRun:
    """One line for an error that would otherwise be a traceback; never SQL or parameters."""
    if isinstance(exc, ValidationError):
        problems = "; ".join(
            f"{'.'.join(str(part) for part in error['loc']) or 'settings'}: {error['msg']}"
            for error in exc.errors()
        )
        return CannotRun(f"invalid settings: {problems}")
    if isinstance(exc, DBAPIError):
        # The driver's first line names the problem (a missing table, a refused
        # connection) and carries no row data; the statement and its parameters stay out.
        reason = (str(exc.orig).strip().splitlines() or [type(exc.orig).__name__])[0]
        if "no such table" in reason or ("relation" in reason and "does not exist" in reason):
            return CannotRun(
                f"the database has no schema yet ({reason}): run `webhook-service migrate` "
                "first (locally: `make migrate`)"
            )
        return CannotRun(f"cannot use the database: {reason}")
    return CannotRun(str(exc))


class _Main(click.Group):
    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except click.exceptions.Exit:  # `-h` of a subcommand: a RuntimeError, not a failure
            raise
        except (RuntimeError, ValueError, DBAPIError, MigrationsMissing) as exc:
            # RuntimeError and ValueError: Settings refusing what it was given (ValidationError
            # is a ValueError). A bug raising one of these still says its message, in a line.
            failure = _cannot_run(exc)
            failure.as_log_line = ctx.invoked_subcommand in PROCESS_COMMANDS
            raise failure from None


def _version() -> str:
    try:
        return version("webhook-service")
    except PackageNotFoundError:  # run from a checkout that was never installed
        return "unknown"


@click.group(cls=_Main, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(_version(), "-V", "--version", prog_name="webhook-service")
def main() -> None:
    """Operate webhook_service."""
    # The worker starts its own (named "worker"); the sandbox is not the service.
    if click.get_current_context().invoked_subcommand not in ("worker", "sandbox"):
        init_error_tracking(Settings(), "cli")


@main.command()
@click.option("--revision", default="head", show_default=True)
def migrate(revision: str) -> None:
    """Migrate the database (DATABASE_URL, or the embedded SQLite file) to REVISION."""
    from webhook_service.logs import capture_stray_output, configure_logging
    from webhook_service.migrations import upgrade

    settings = Settings()
    configure_logging(settings.log_level)  # alembic's lines too: JSON, like every process
    capture_stray_output()
    # The release phase is the last gate before new web and worker processes start:
    # settings they would refuse stop the release (and the old release keeps running).
    settings.require_web_secrets()
    settings.phi_keys()
    upgrade(settings.effective_database_url, revision)
    logging.getLogger("webhook_service.cli").info(
        "database migrated to %s", revision, extra={"revision": revision}
    )


@main.command()
def worker() -> None:
    """Run the worker: submit jobs to Cobalt, retry, reconcile, purge expired PHI."""
    from webhook_service.worker_process import run_worker

    settings = Settings()
    # Without these the worker would start and log CobaltTransient forever; a refusal is
    # one line and exit 2 (`_Main`).
    settings.require_worker_settings()
    settings.phi_keys()
    run_worker(settings)


@main.group()
def clients() -> None:
    """Create, list and revoke API clients (front ends, support staff, metrics scrapers)."""


@clients.command("create")
@click.argument("name")
# services.clients.ROLES, spelled here so `--help` needs no database modules.
@click.option("--role", type=click.Choice(["frontend", "support", "metrics"]), required=True)
@click.option("--clinic", "clinic_id", type=int, default=None, help="Clinic id (frontend).")
def clients_create(name: str, role: str, clinic_id: int | None) -> None:
    """Create a client; its token is printed once, alone on the last line."""
    from webhook_service.db import transaction
    from webhook_service.errors import ServiceError
    from webhook_service.services import create_client

    try:
        with transaction(session_factory()) as session:
            client, token = create_client(
                session, name=name, role=role, clinic_id=clinic_id, now=utcnow()
            )
            click.echo(f"created client {client.name!r} (role {client.role}); its token:")
    except ServiceError as exc:
        raise click.ClickException(exc.detail) from None
    click.echo(token)


@clients.command("list")
def clients_list() -> None:
    """List clients: name, role, clinic, token prefix, created, revoked."""
    from webhook_service.db import transaction
    from webhook_service.services import list_clients

    with transaction(session_factory()) as session:
        for client in list_clients(session):
            revoked = client.revoked_at.isoformat() if client.revoked_at else "-"
            click.echo(
                f"{client.name}\t{client.role}\t{client.clinic_id or '-'}\t"
                f"{client.token_prefix}…\t{client.created_at.isoformat()}\trevoked: {revoked}"
            )


@clients.command("revoke")
@click.argument("name")
def clients_revoke(name: str) -> None:
    """Revoke a client's token at once."""
    from webhook_service.db import transaction
    from webhook_service.errors import ServiceError
    from webhook_service.services import revoke_client

    try:
        with transaction(session_factory()) as session:
            revoke_client(session, name, utcnow())
    except ServiceError as exc:
        raise click.ClickException(exc.detail) from None
    click.echo(f"revoked {name!r}")


@main.group()
def clinics() -> None:
    """Add, list and re-link clinics (linked EMR logins)."""


@clinics.command("add")
@click.argument("name")
@click.option("--access-token", envvar="CLINIC_ACCESS_TOKEN", required=True)
def clinics_add(name: str, access_token: str) -> None:
    """Add a clinic with its Cobalt access token; prints its id."""
    from webhook_service.db import transaction
    from webhook_service.errors import ServiceError
    from webhook_service.services.clinics import add_clinic

    try:
        with transaction(session_factory()) as session:
            clinic = add_clinic(session, name=name, access_token=access_token, now=utcnow())
            session.flush()
            click.echo(f"added clinic {clinic.name!r} with id {clinic.id}")
    except ServiceError as exc:
        raise click.ClickException(exc.detail) from None


@clinics.command("list")
def clinics_list() -> None:
    """List clinics: id, name, webhook reference id, whether it needs re-linking."""
    from webhook_service.db import transaction
    from webhook_service.services.clinics import list_clinics

    with transaction(session_factory()) as session:
        for clinic in list_clinics(session):
            relink = "NEEDS RE-LINK" if clinic.needs_relink else "ok"
            reference = clinic.access_token_reference_id or "(not learned yet)"
            click.echo(f"{clinic.id}\t{clinic.name}\t{reference}\t{relink}")


@clinics.command("relink")
@click.argument("name")
@click.option("--access-token", envvar="CLINIC_ACCESS_TOKEN", required=True)
def clinics_relink(name: str, access_token: str) -> None:
    """Store a clinic's new access token after re-linking it in Cobalt."""
    from webhook_service.db import transaction
    from webhook_service.errors import ServiceError
    from webhook_service.services.clinics import relink_clinic

    try:
        with transaction(session_factory()) as session:
            relink_clinic(session, name=name, access_token=access_token, now=utcnow())
    except ServiceError as exc:
        raise click.ClickException(exc.detail) from None
    click.echo(f"re-linked {name!r}")


@main.group()
def keys() -> None:
    """PHI encryption keys."""


@keys.command("generate")
def keys_generate() -> None:
    """Print a new key (for PHI_ENCRYPTION_KEYS or PHI_SEARCH_KEY)."""
    from webhook_service.phi import generate_key

    click.echo(generate_key())


@keys.command("rotate")
def keys_rotate() -> None:
    """Re-encrypt all stored PHI under the newest PHI_ENCRYPTION_KEYS key."""
    from webhook_service.db import transaction
    from webhook_service.services import reencrypt_phi

    with transaction(session_factory()) as session:
        count = reencrypt_phi(session)
    click.echo(f"re-encrypted {count} rows; older keys can now be removed")


def _add_sandbox() -> None:
    from webhook_service.sandbox.cli import sandbox_command

    main.add_command(sandbox_command)


_add_sandbox()
main.add_command(support_jobs)
main.add_command(callbacks)
