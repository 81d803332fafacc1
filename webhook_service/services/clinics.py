"""Clinics: linked EMR logins, each with its own Cobalt access token.

A single-clinic deployment needs none of this (`COBALT_ACCESS_TOKEN` makes the default
clinic); a multi-clinic one adds a clinic per linked login and binds front ends to it.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from webhook_service.errors import ServiceError
from webhook_service.models import Clinic


class ClinicExists(ServiceError):
    status, slug, title = 409, "clinic-exists", "Clinic exists"


class UnknownClinic(ServiceError):
    status, slug, title = 404, "unknown-clinic", "Unknown clinic"


def add_clinic(session: Session, *, name: str, access_token: str, now: datetime) -> Clinic:
    """Add a clinic; its webhook reference id is learned from Cobalt on first use."""
    if not access_token.strip():
        raise ServiceError("An access token is required.")
    clinic = Clinic(
        name=name,
        access_token=access_token.strip(),
        needs_relink=False,
        linked_at=now,
        created_at=now,
        updated_at=now,
    )
    try:
        with session.begin_nested():
            session.add(clinic)
    except IntegrityError:
        raise ClinicExists(f"A clinic named {name!r} already exists.") from None
    return clinic


def list_clinics(session: Session) -> list[Clinic]:
    return list(session.scalars(select(Clinic).order_by(Clinic.id)))


def relink_clinic(session: Session, *, name: str, access_token: str, now: datetime) -> Clinic:
    """Store a clinic's new access token after it was re-linked in Cobalt."""
    clinic = session.scalar(select(Clinic).where(Clinic.name == name))
    if clinic is None:
        raise UnknownClinic(f"No clinic named {name!r}.")
    clinic.access_token = access_token.strip()
    clinic.needs_relink = False
    clinic.access_token_reference_id = None  # may be a different login: learn it again
    clinic.linked_at = now
    clinic.updated_at = now
    return clinic
