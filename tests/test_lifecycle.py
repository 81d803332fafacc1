"""The pure rules: Cobalt event → status, terminal states, outcome details, backoff."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from webhook_service.lifecycle import (
    DOCUMENTED_OUTCOMES,
    JobKind,
    JobStatus,
    Verdict,
    held_reason,
    judge_outcome,
    learned_ids,
    open_to_outcome,
    outcome_from_event,
    retry_delay,
    settles,
    status_for_event,
)


@pytest.mark.parametrize(
    ("event_type", "status"),
    [
        ("note.created", JobStatus.COMPLETED),
        ("note.uploaded", JobStatus.COMPLETED),
        ("telephone_encounter.created", JobStatus.COMPLETED),
        ("telephone_encounter.created_partial", JobStatus.PARTIAL),
        ("note.failed", JobStatus.FAILED),
        ("telephone_encounter.failed", JobStatus.FAILED),
        ("note.upload_failed", JobStatus.FAILED),
        ("login_required", None),
        ("appointment.created", None),
        ("appointment.failed", None),
        ("task.failed", None),
        ("patient.update_failed", None),
        ("note.processing", None),
        ("", None),
    ],
)
def test_event_type_maps_to_status(event_type, status):
    assert status_for_event(event_type) == status


@pytest.mark.parametrize("incoming", list(JobStatus))
def test_processing_job_takes_any_outcome(incoming):
    assert judge_outcome(JobStatus.PROCESSING, incoming) == Verdict.APPLY


@pytest.mark.parametrize("current", [JobStatus.COMPLETED, JobStatus.PARTIAL, JobStatus.FAILED])
def test_terminal_job_never_changes_outcome(current):
    for incoming in (JobStatus.COMPLETED, JobStatus.PARTIAL, JobStatus.FAILED):
        expected = Verdict.REPEAT if incoming == current else Verdict.CONFLICT
        assert judge_outcome(current, incoming) == expected


@pytest.mark.parametrize(
    ("kind", "event_type", "expected"),
    [
        ("note", "note.created", True),
        ("note", "note.failed", True),
        ("note", "note.upload_failed", True),
        ("note", "telephone_encounter.failed", False),
        ("note", "appointment.failed", False),
        ("note", "task.failed", False),
        ("note", "login_required", False),
        ("note", "note.processing", False),
        ("telephone_encounter", "telephone_encounter.created_partial", True),
        ("telephone_encounter", "note.created", False),
        ("telephone_encounter", "patient.failed", False),
    ],
)
def test_only_events_of_the_jobs_own_resource_settle_it(kind, event_type, expected):
    assert settles(kind, event_type) is expected


def test_every_documented_outcome_type_settles_its_kind_and_no_other():
    for kind, types in DOCUMENTED_OUTCOMES.items():
        for event_type in types:
            assert settles(kind, event_type)
            assert not any(settles(other, event_type) for other in JobKind if other != kind)


@pytest.mark.parametrize("status", list(JobStatus))
def test_only_a_processing_job_is_open_to_an_outcome(status):
    assert open_to_outcome(status) is (status == JobStatus.PROCESSING)


def test_a_job_keeps_the_cobalt_ids_it_learned_first():
    assert learned_ids((None, None), ("cj_1", "te_1")) == ("cj_1", "te_1")
    assert learned_ids(("cj_1", None), ("cj_other", "te_1")) == ("cj_1", "te_1")
    assert learned_ids(("cj_1", "te_1"), (None, None)) == ("cj_1", "te_1")


NOON = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("created", "received", "job_created", "held"),
    [
        (NOON, NOON + timedelta(seconds=5), NOON - timedelta(minutes=1), None),
        (NOON, NOON + timedelta(hours=23), None, None),
        (NOON, NOON + timedelta(days=1, seconds=1), None, "more than a day"),
        (NOON, NOON + timedelta(seconds=5), NOON + timedelta(seconds=1), "before the job"),
        # Found in Cobalt's log (no receipt time): only "older than the job" applies.
        (NOON, None, NOON - timedelta(days=3), None),
        (NOON, None, NOON + timedelta(seconds=1), "before the job"),
        # No signed `created` (older payloads): taken as current.
        (None, NOON + timedelta(days=9), NOON + timedelta(days=8), None),
    ],
)
def test_an_event_too_old_or_older_than_its_job_is_held(created, received, job_created, held):
    reason = held_reason(created, received_at=received, job_created_at=job_created)
    if held is None:
        assert reason is None
    else:
        assert reason is not None
        assert held in reason


def test_failure_outcome_keeps_reasons_and_medications():
    outcome = outcome_from_event(
        "telephone_encounter.failed",
        {
            "failure_reason": "Medication not found",
            "available_medications": ["Metformin 500 mg"],
            "telephone_encounter_id": 77,
        },
    )
    assert outcome is not None
    assert outcome.status == JobStatus.FAILED
    assert outcome.error == {"code": "medication_not_found", "message": "Medication not found"}
    assert outcome.detail["available_medications"] == ["Metformin 500 mg"]
    assert outcome.detail["telephone_encounter_id"] == "77"


def test_reason_code_from_cobalt_wins():
    outcome = outcome_from_event(
        "note.failed",
        {"reasons": [{"code": "appointment_locked", "description": "Locked"}, "junk"]},
    )
    assert outcome is not None
    assert outcome.error is not None
    assert outcome.error["code"] == "appointment_locked"
    assert outcome.detail["reasons"] == [{"code": "appointment_locked", "description": "Locked"}]


def test_partial_without_message_still_explains_itself():
    outcome = outcome_from_event("telephone_encounter.created_partial", {})
    assert outcome is not None
    assert outcome.error is not None
    assert outcome.error["code"] == "refill_not_added"
    assert "refill" in outcome.error["message"]


def test_completed_outcome_has_no_error():
    outcome = outcome_from_event("note.created", {"appointment_id": "1"})
    assert outcome is not None
    assert outcome.error is None


def test_backoff_doubles_is_capped_and_never_zero():
    delays = [retry_delay(n, base=2, cap=60, jitter=0.0) for n in range(1, 10)]
    assert delays[:4] == [timedelta(seconds=s) for s in (1, 2, 4, 8)]
    assert max(delays) == timedelta(seconds=30)
    full = retry_delay(20, base=2, cap=60, jitter=0.999)
    assert timedelta(seconds=59) < full <= timedelta(seconds=60)
