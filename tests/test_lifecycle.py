"""The pure rules: Cobalt event → status, terminal states, outcome details, backoff."""

from __future__ import annotations

from datetime import timedelta

import pytest

from webhook_service.lifecycle import (
    NO_OUTCOME,
    JobStatus,
    Verdict,
    judge_outcome,
    outcome_from_event,
    retry_delay,
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
        ("login_required", JobStatus.FAILED),
        ("appointment.created", None),
        ("note.processing", None),
        ("", None),
    ],
)
def test_event_type_maps_to_status(event_type, status):
    assert status_for_event(event_type) == status


@pytest.mark.parametrize("incoming", list(JobStatus))
def test_processing_job_takes_any_outcome(incoming):
    assert judge_outcome(JobStatus.PROCESSING, None, incoming) == Verdict.APPLY


@pytest.mark.parametrize("current", [JobStatus.COMPLETED, JobStatus.PARTIAL, JobStatus.FAILED])
def test_terminal_job_never_changes_outcome(current):
    for incoming in (JobStatus.COMPLETED, JobStatus.PARTIAL, JobStatus.FAILED):
        expected = Verdict.REPEAT if incoming == current else Verdict.CONFLICT
        assert judge_outcome(current, "cobalt_failed", incoming) == expected


def test_job_failed_for_lack_of_news_takes_a_late_real_outcome():
    assert judge_outcome(JobStatus.FAILED, NO_OUTCOME, JobStatus.COMPLETED) == Verdict.APPLY
    assert judge_outcome(JobStatus.FAILED, NO_OUTCOME, JobStatus.FAILED) == Verdict.APPLY


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
