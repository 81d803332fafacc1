"""API clients (front ends and support tools) and the audit log of staff actions.

Tokens are random, shown once, and stored as SHA-256 hashes: they carry 256 bits of entropy,
so a fast hash is enough, and a database leak reveals no usable token.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import uuid
from datetime import datetime
from typing import Any, cast

from sqlalchemy import Table, insert, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from webhook_service.errors import ServiceError
from webhook_service.models import ApiClient, AuditEvent, Clinic

# `metrics` reads GET /metrics and nothing else (no job, no PHI): for a Prometheus scraper.
ROLES = ("frontend", "support", "metrics")
TOKEN_PREFIX = "wst_"  # noqa: S105 - a marker that makes leaked tokens greppable, not a secret


class ClientExists(ServiceError):
    status, slug, title = 409, "client-exists", "Client exists"


class UnknownClient(ServiceError):
    status, slug, title = 404, "unknown-client", "Unknown client"


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def create_client(
    session: Session, *, name: str, role: str, clinic_id: int | None, now: datetime
) -> tuple[ApiClient, str]:
    """Create a client and return it with its token (the only time the token exists)."""
    if role not in ROLES:
        raise ServiceError(f"role must be one of {', '.join(ROLES)}")
    if clinic_id is not None and session.get(Clinic, clinic_id) is None:
        raise UnknownClient(f"No clinic with id {clinic_id}.")
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    client = ApiClient(
        name=name,
        role=role,
        clinic_id=clinic_id,
        token_hash=hash_token(token),
        token_prefix=token[:12],
        created_at=now,
    )
    try:
        with session.begin_nested():
            session.add(client)
    except IntegrityError:
        raise ClientExists(f"A client named {name!r} already exists.") from None
    return client, token


def authenticate(session: Session, token: str) -> ApiClient | None:
    """The active client holding this token, or None."""
    digest = hash_token(token)
    client = session.scalar(select(ApiClient).where(ApiClient.token_hash == digest))
    if client is None or client.revoked_at is not None:
        return None
    # The lookup is by hash; compare again in constant time so no branch depends on bytes.
    if not hmac.compare_digest(client.token_hash, digest):
        return None
    return client


def reissue_token(session: Session, name: str) -> str:
    """Give client NAME a new token; the old one stops working at once."""
    client = session.scalar(select(ApiClient).where(ApiClient.name == name))
    if client is None:
        raise UnknownClient(f"No client named {name!r}.")
    if client.revoked_at is not None:
        raise ServiceError(f"Client {name!r} is revoked.")
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    client.token_hash, client.token_prefix = hash_token(token), token[:12]
    return token


def list_clients(session: Session) -> list[ApiClient]:
    return list(session.scalars(select(ApiClient).order_by(ApiClient.id)))


def revoke_client(session: Session, name: str, now: datetime) -> ApiClient:
    client = session.scalar(select(ApiClient).where(ApiClient.name == name))
    if client is None:
        raise UnknownClient(f"No client named {name!r}.")
    if client.revoked_at is None:
        client.revoked_at = now
    return client


def audit(
    session: Session,
    *,
    client: ApiClient | None,
    action: str,
    now: datetime,
    job_id: uuid.UUID | None = None,
    actor: str | None = None,
    **detail: Any,
) -> None:
    """Append one audit entry (who, what, when, which job). Nothing edits or deletes these.

    Written at once with one Core INSERT on the session's transaction (an entry is never
    read back in the request that writes it, so it needs no place in the unit of work).
    """
    session.execute(
        _INSERT_AUDIT,
        {
            "at": now,
            "client_id": client.id if client is not None else None,
            "actor": actor or (client.name if client is not None else "system"),
            "action": action,
            "job_id": job_id,
            "detail": detail,
        },
    )


# `inline()`: no `RETURNING audit_events.id`, which nothing reads.
_INSERT_AUDIT = insert(cast(Table, AuditEvent.__table__)).inline()
