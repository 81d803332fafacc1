"""Which job a delivery is about: the one lookup every path of applying matches through."""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import Row, bindparam, select
from sqlalchemy.orm import Session, defer

from webhook_service.lifecycle import (
    OPEN_TO_OUTCOME,
    JobKind,
    kind_for_event,
    matches_by_appointment,
)
from webhook_service.models import Clinic, Job
from webhook_service.services.deliveries import Delivery
from webhook_service.services.jobs import JOBS


def find_job(session: Session, delivery: Delivery, kind: str) -> Row[*tuple[Any, ...]] | None:
    """The one lookup of which job a delivery of `kind`'s events is about: its plain columns,
    locked, found by Cobalt job id, then encounter id, then (notes only) the appointment.

    Only jobs of the event's kind are looked at (`lifecycle.settles`): an event of another
    resource sharing a job's ids is not its outcome. Every path matches through here; the
    ORM path then loads the row found (`_load_locked`).
    """
    connection = session.connection()
    if delivery.cobalt_job_id:
        row = connection.execute(
            _ROW_BY_JOB_ID, {"value": delivery.cobalt_job_id, "kind": kind}
        ).first()
        if row is not None:
            return row
    if delivery.telephone_encounter_id:
        row = connection.execute(
            _ROW_BY_ENCOUNTER_ID, {"value": delivery.telephone_encounter_id, "kind": kind}
        ).first()
        if row is not None:
            return row
    if delivery.appointment_hash and matches_by_appointment(kind):
        return _note_for_appointment(session, delivery)
    return None


# The plain columns deciding and settling read, locked as the ORM path locks the job.
_ROW = select(
    JOBS.c.id,
    JOBS.c.status,
    JOBS.c.submission_state,
    JOBS.c.inflight_key,
    JOBS.c.clinic_id,
    JOBS.c.appointment_hash,
    JOBS.c.cobalt_job_id,
    JOBS.c.cobalt_telephone_encounter_id,
    JOBS.c.created_at,
).with_for_update()
_OF_KIND = JOBS.c.kind == bindparam("kind")
_ROW_BY_JOB_ID = _ROW.where(JOBS.c.cobalt_job_id == bindparam("value"), _OF_KIND)
_ROW_BY_ENCOUNTER_ID = _ROW.where(
    JOBS.c.cobalt_telephone_encounter_id == bindparam("value"), _OF_KIND
)
# The note in flight for an appointment: it holds the (clinic, appointment) slot and is open
# to an outcome (`lifecycle.OPEN_TO_OUTCOME`, the set `open_to_outcome` reads).
_NOTE_FOR_APPOINTMENT = (
    _ROW.where(
        JOBS.c.kind == JobKind.NOTE,
        JOBS.c.appointment_hash == bindparam("value"),
        JOBS.c.cobalt_job_id.is_(None),
        JOBS.c.inflight_key.is_not(None),
        JOBS.c.status.in_(sorted(OPEN_TO_OUTCOME)),
    )
    .order_by(JOBS.c.created_at.desc())
    .limit(1)
)
_NOTE_IN_CLINICS = _NOTE_FOR_APPOINTMENT.where(
    JOBS.c.clinic_id.in_(bindparam("clinics", expanding=True))
)


def _note_for_appointment(session: Session, delivery: Delivery) -> Row[*tuple[Any, ...]] | None:
    """The note in flight for this appointment in the delivery's clinic.

    Only one note per (clinic, appointment) is ever at Cobalt at once, so this is not a
    guess; a note that already learned its Cobalt job id is matched by that id instead.
    """
    connection = session.connection()
    clinic_ids = _clinics_for(session, delivery.access_token_reference_id)
    if clinic_ids is None:
        return connection.execute(
            _NOTE_FOR_APPOINTMENT, {"value": delivery.appointment_hash}
        ).first()
    return connection.execute(
        _NOTE_IN_CLINICS, {"value": delivery.appointment_hash, "clinics": clinic_ids}
    ).first()


_LOCKED: dict[str, Any] = {"populate_existing": True}
# Matching reads what deciding and settling need: the note's body, and the outcome and error
# a settled job already has, stay encrypted and unread (a later read loads them if needed).
_UNREAD = (defer(Job.request_body), defer(Job.outcome), defer(Job.error_message))


def _load_locked(session: Session, job_id: uuid.UUID) -> Job:
    """The job `find_job` found and locked, read afresh: one already in this session may be
    stale if another transaction settled it while this one waited for the lock."""
    job = session.scalar(
        select(Job)
        .where(Job.id == job_id)
        .with_for_update()
        .options(*_UNREAD)
        .execution_options(**_LOCKED)
    )
    assert job is not None  # locked by `find_job` in this transaction
    return job


def match_job(session: Session, delivery: Delivery) -> Job | None:
    """The job a delivery's event would settle, loaded and locked (support's replay preview)."""
    kind = kind_for_event(delivery.event_type or "")
    if kind is None:
        return None
    row = find_job(session, delivery, kind)
    return _load_locked(session, row.id) if row is not None else None


def _clinics_for(session: Session, reference_id: str | None) -> list[int] | None:
    """Clinics a delivery may belong to; None when it does not say (older payloads)."""
    if reference_id is None:
        return None
    known = session.scalar(
        select(Clinic.id).where(Clinic.access_token_reference_id == reference_id)
    )
    if known is not None:
        return [known]
    # Clinics whose reference id we have not learned yet might be this one.
    return list(
        session.scalars(select(Clinic.id).where(Clinic.access_token_reference_id.is_(None)))
    )
