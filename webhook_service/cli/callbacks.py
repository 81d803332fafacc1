"""`webhook-service callbacks …`: a front end's callback endpoint from a terminal (register,
rotate its secret, re-enable, remove) and support's view of deliveries (list, show, resend).

The same services as the API. A secret is printed once, alone on the last line, as the API
shows it once.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

import click

from webhook_service.cli.base import session_factory
from webhook_service.clock import utcnow

if TYPE_CHECKING:
    from sqlalchemy.orm import Session


@click.group()
def callbacks() -> None:
    """Front ends' callback endpoints and the deliveries sent to them."""


@callbacks.command("register")
@click.argument("client")
@click.argument("url")
def callbacks_register(client: str, url: str) -> None:
    """Register (or change) CLIENT's callback URL; a new endpoint's secret is printed last."""
    from webhook_service.services import callbacks as service
    from webhook_service.settings import Settings

    allow_private = Settings().callback_allow_private_networks
    with _transaction() as session:
        owner = service.frontend_named(session, client)
        endpoint, secret, created = service.register_endpoint(
            session, owner, url, allow_private=allow_private, now=utcnow()
        )
        click.echo(f"{'registered' if created else 'updated'} {endpoint.url} for {client!r}")
    if secret:
        click.echo("its signing secret (shown once):")
        click.echo(secret)


@callbacks.command("show")
@click.argument("client")
def callbacks_show(client: str) -> None:
    """CLIENT's endpoint: URL, state, failing since, secret overlap (never the secret)."""
    from webhook_service.services import callbacks as service

    now = utcnow()
    with _transaction() as session:
        view = service.endpoint_view(
            service.read_endpoint(session, service.frontend_named(session, client)), now
        )
    click.echo(f"url: {view.url}")
    click.echo(f"state: {view.state}")
    click.echo(f"failing since: {_when(view.failing_since)}")
    click.echo(f"previous secret signs until: {_when(view.previous_secret_expires_at)}")


@callbacks.command("rotate-secret")
@click.argument("client")
def callbacks_rotate(client: str) -> None:
    """A new secret for CLIENT (printed last); the old one signs alongside for 24 hours."""
    from webhook_service.services import callbacks as service

    with _transaction() as session:
        _, secret = service.rotate_secret(
            session, service.frontend_named(session, client), utcnow()
        )
    click.echo("the new signing secret (shown once; the old one signs alongside for 24 h):")
    click.echo(secret)


@callbacks.command("enable")
@click.argument("client")
def callbacks_enable(client: str) -> None:
    """Re-enable CLIENT's endpoint after it was disabled; pending deliveries resume."""
    from webhook_service.services import callbacks as service

    with _transaction() as session:
        service.enable_endpoint(session, service.frontend_named(session, client), utcnow())
    click.echo(f"enabled the callback of {client!r}")


@callbacks.command("remove")
@click.argument("client")
def callbacks_remove(client: str) -> None:
    """Stop calling CLIENT back; its pending deliveries are cancelled."""
    from webhook_service.services import callbacks as service

    with _transaction() as session:
        service.remove_endpoint(session, service.frontend_named(session, client), utcnow())
    click.echo(f"removed the callback of {client!r}")


@callbacks.command("deliveries")
@click.option("--client", help="Front-end client name.")
@click.option("--job", "job_id", help="Job id.")
@click.option("--state", type=click.Choice(["pending", "delivered", "failed", "cancelled"]))
@click.option("--limit", type=click.IntRange(1, 200), default=50, show_default=True)
def callbacks_deliveries(
    client: str | None, job_id: str | None, state: str | None, limit: int
) -> None:
    """Deliveries newest first: id, client, job, state, attempts, next attempt."""
    import uuid

    from webhook_service.services import callbacks as service

    try:
        job = uuid.UUID(job_id) if job_id else None
    except ValueError:
        raise click.BadParameter("must be a job id (a UUID)", param_hint="--job") from None
    with _transaction() as session:
        found = service.list_deliveries(
            session, client=client, job_id=job, state=state, limit=limit
        )
    for d in found:
        click.echo(
            f"{d.id}\t{d.client}\t{d.job_id}\t{d.state}\tattempts: {d.attempts}\t"
            f"next: {_when(d.next_attempt_at)}"
        )


@callbacks.command("resend")
@click.argument("delivery_id")
@click.option("--reason", required=True, help="Why (kept in the audit log; no PHI).")
@click.option("--as", "actor", default=None, help="Who is acting (default: $USER).")
def callbacks_resend(delivery_id: str, reason: str, actor: str | None) -> None:
    """Send a delivery again now (same webhook-id and body): the worker sends it."""
    from webhook_service.services import Staff
    from webhook_service.services import callbacks as service

    name = actor or os.environ.get("USER")
    if not name:
        raise click.UsageError("Say who is acting with --as NAME.")
    with _transaction() as session:
        view = service.resend_delivery(
            session, Staff(name=name, via="cli"), delivery_id, reason=reason, now=utcnow()
        )
    click.echo(f"delivery {view.id} is due now ({view.webhook_id})")


def _when(value: object) -> str:
    return "-" if value is None else getattr(value, "isoformat", lambda: str(value))()


@contextmanager
def _transaction() -> Iterator[Session]:
    """The command's one transaction; a service error becomes a message and exit status 1."""
    from webhook_service.db import transaction
    from webhook_service.errors import ServiceError

    try:
        with transaction(session_factory()) as session:
            yield session
    except ServiceError as exc:
        message = exc.detail
        if exc.errors:
            message += " " + "; ".join(f"{e.field}: {e.message}" for e in exc.errors)
        raise click.ClickException(message) from None
