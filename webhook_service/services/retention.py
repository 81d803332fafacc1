"""PHI retention and key rotation: erase PHI past the retention period; re-encrypt old rows.

Ids, statuses, error codes and timelines stay forever; request bodies, webhook bodies and
outcome details (messages, medication lists) go once a job has been settled long enough.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select, text, update
from sqlalchemy.orm import Session, defer
from sqlalchemy.orm.attributes import InstrumentedAttribute, flag_modified

from webhook_service import metrics, phi
from webhook_service.models import PURGE_PREDICATE, Clinic, Job, JobChange, WebhookDelivery
from webhook_service.services.changes import erase_purged, purge_old_changes
from webhook_service.services.jobs import add_event
from webhook_service.services.metrics import on_commit

PURGE_BATCH = 500


def purge_expired_phi(session: Session, *, now: datetime, retention: timedelta) -> int:
    """Erase PHI from jobs settled before `now - retention`, and from old deliveries.

    A job that settles after its purge has `purged_at` cleared by settling (`settled_values`),
    so the outcome it then takes is found here again: one rule, and the same partial index.
    """
    cutoff = now - retention
    # PURGE_PREDICATE is the partial index ix_jobs_purge_due's: settled, unpurged jobs are
    # found oldest first without scanning `jobs` (a sequential scan took 250-420 ms at 1M).
    jobs = session.scalars(
        select(Job)
        .where(text(PURGE_PREDICATE), Job.finished_at < cutoff)
        .order_by(Job.finished_at)
        .limit(PURGE_BATCH)
        .with_for_update(skip_locked=True)
        .options(defer(Job.request_body))  # erased unread
    ).all()
    for job in jobs:
        job.request_body = None
        job.outcome = {"event": job.outcome.get("event")} if job.outcome else None
        job.error_message = None
        job.purged_at = now
        job.updated_at = now
        add_event(session, job, "phi_purged", now, retention_days=retention.days)
    # The purge is itself a change (the trigger records it); the job's earlier changes lose
    # their PHI with it, and changes past their own retention go.
    session.flush()
    erase_purged(session.connection(), [job.id for job in jobs])
    purge_old_changes(session.connection(), now)
    session.execute(
        update(WebhookDelivery)
        .where(WebhookDelivery.received_at < cutoff, WebhookDelivery.raw_body.is_not(None))
        .values(raw_body=None)
        .execution_options(synchronize_session=False)
    )
    purged = len(jobs)
    on_commit(session, lambda: metrics.phi_purged(purged))
    return purged


def reencrypt_phi(session: Session, batch: int = 500) -> int:
    """Re-encrypt everything stored encrypted under the newest key; return rows rewritten.

    That is PHI (jobs, their record of changes, webhook bodies) and the clinics' Cobalt
    access tokens.

    Reading decrypts with any configured key and writing encrypts with the newest, so
    loading and flagging each value as changed is the whole rotation.
    """
    count = _reencrypt_table(session, Job.id, ("request_body", "outcome", "error_message"), batch)
    count += _reencrypt_table(session, WebhookDelivery.id, ("raw_body",), batch)
    # The record of job changes holds each change's outcome and error, encrypted as in `jobs`
    # (pushes render them): left behind, a stream could not render them once the old key goes.
    count += _reencrypt_table(session, JobChange.seq, ("outcome", "error_message"), batch)
    # The clinics' Cobalt access tokens are credentials, not PHI, but they are encrypted
    # under the same keys: left behind, no clinic's token decrypts once the old key goes.
    for clinic in session.scalars(select(Clinic).order_by(Clinic.id)):
        _touch(clinic, "access_token")
        count += 1
    session.flush()
    phi.keys()  # fail loudly here, not half-way, if keys were never configured
    return count


def _reencrypt_table(
    session: Session, key: InstrumentedAttribute[Any], attributes: tuple[str, ...], batch: int
) -> int:
    """Flag `attributes` of every row of `key`'s table as changed, `batch` rows at a time in
    key order (keyset pagination), flushing each batch; return the rows touched."""
    count, last = 0, None
    while True:
        query = select(key.class_).order_by(key).limit(batch)
        if last is not None:
            query = query.where(key > last)
        rows = session.scalars(query).all()
        if not rows:
            return count
        for row in rows:
            _touch(row, *attributes)
        count += len(rows)
        last = getattr(rows[-1], key.key)
        session.flush()


def _touch(row: object, *attributes: str) -> None:
    for attribute in attributes:
        if getattr(row, attribute) is not None:
            flag_modified(row, attribute)
