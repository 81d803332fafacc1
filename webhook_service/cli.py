"""`webhook-service …`: the operational commands (migrate, worker, sandbox, clients, keys)."""

from __future__ import annotations

from datetime import UTC, datetime

import click

from webhook_service.db import SessionFactory
from webhook_service.settings import Settings


@click.group()
def main() -> None:
    """Operate webhook_service."""


@main.command()
@click.option("--revision", default="head", show_default=True)
def migrate(revision: str) -> None:
    """Migrate the database (DATABASE_URL, or the embedded SQLite file) to REVISION."""
    from webhook_service.migrations import MigrationsMissing, upgrade

    settings = Settings()
    try:
        # The release phase is the last gate before new web and worker processes start:
        # settings they would refuse stop the release (and the old release keeps running).
        settings.require_web_secrets()
        settings.phi_keys()
    except (RuntimeError, ValueError) as exc:
        raise click.ClickException(str(exc)) from None
    try:
        upgrade(settings.effective_database_url, revision)
    except MigrationsMissing as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"database migrated to {revision}")


@main.command()
def worker() -> None:
    """Run the worker: submit jobs to Cobalt, retry, reconcile, purge expired PHI."""
    from webhook_service.worker import run_worker

    run_worker(Settings())


@main.group()
def clients() -> None:
    """Create, list and revoke API clients (front ends and support staff)."""


def _sessions() -> SessionFactory:
    from webhook_service import phi
    from webhook_service.db import make_engine, make_session_factory

    settings = Settings()
    phi.configure(settings.phi_keys())
    return make_session_factory(
        make_engine(settings.effective_database_url, pool_size=1, process_kind="cli")
    )


@clients.command("create")
@click.argument("name")
@click.option("--role", type=click.Choice(["frontend", "support"]), required=True)
@click.option("--clinic", "clinic_id", type=int, default=None, help="Clinic id (frontend).")
def clients_create(name: str, role: str, clinic_id: int | None) -> None:
    """Create a client; its token is printed once, alone on the last line."""
    from webhook_service.db import transaction
    from webhook_service.errors import ServiceError
    from webhook_service.services import create_client

    try:
        with transaction(_sessions()) as session:
            client, token = create_client(
                session, name=name, role=role, clinic_id=clinic_id, now=datetime.now(UTC)
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

    with transaction(_sessions()) as session:
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
        with transaction(_sessions()) as session:
            revoke_client(session, name, datetime.now(UTC))
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
        with transaction(_sessions()) as session:
            clinic = add_clinic(
                session, name=name, access_token=access_token, now=datetime.now(UTC)
            )
            session.flush()
            click.echo(f"added clinic {clinic.name!r} with id {clinic.id}")
    except ServiceError as exc:
        raise click.ClickException(exc.detail) from None


@clinics.command("list")
def clinics_list() -> None:
    """List clinics: id, name, webhook reference id, whether it needs re-linking."""
    from webhook_service.db import transaction
    from webhook_service.services.clinics import list_clinics

    with transaction(_sessions()) as session:
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
        with transaction(_sessions()) as session:
            relink_clinic(session, name=name, access_token=access_token, now=datetime.now(UTC))
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

    with transaction(_sessions()) as session:
        count = reencrypt_phi(session)
    click.echo(f"re-encrypted {count} rows; older keys can now be removed")


def _add_sandbox() -> None:
    from webhook_service.sandbox.cli import sandbox_command

    main.add_command(sandbox_command)


def _add_support() -> None:
    from webhook_service.support_cli import jobs

    main.add_command(jobs)


_add_sandbox()
_add_support()
