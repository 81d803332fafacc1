"""The pure rules: Cobalt event → status, terminal states, outcome details, backoff."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

import pytest

from webhook_service.lifecycle import (
    MAX_PASSED_THROUGH_BYTES,
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


def test_unknown_keys_of_a_partial_reach_the_outcome_beside_the_known_ones():
    outcome = outcome_from_event(
        "telephone_encounter.created_partial",
        {
            "telephone_encounter_id": "te_1",
            "refill_medication_name": "Lisinopril 10 mg",
            "refill_failure_reason": "Pharmacy does not accept e-prescriptions.",
            "pharmacy_ehr_id": "PHR-4003",
            "refill": {"status": "not_added", "steps": ["search", "add"]},
        },
    )
    assert outcome is not None
    assert outcome.detail == {
        "event": "telephone_encounter.created_partial",
        "telephone_encounter_id": "te_1",
        "refill_medication_name": "Lisinopril 10 mg",
        "refill_failure_reason": "Pharmacy does not accept e-prescriptions.",
        "pharmacy_ehr_id": "PHR-4003",
        "refill": {"status": "not_added", "steps": ["search", "add"]},
    }


def test_cobalts_bookkeeping_in_data_is_not_passed_through():
    bookkeeping = {
        "id": "evt_1",
        "object": "event",
        "type": "note.failed",
        "created": "2026-11-23T12:00:04Z",
        "job_id": "cj_1",
        "access_token_reference_id": "atr_1",
        "event_id": "evt_1",
        "event_type": "note.failed",
        "created_at": "2026-11-23T12:00:04Z",
        "delivery_status": "failed",
        "delivery_attempts": 2,
    }
    outcome = outcome_from_event("note.failed", {**bookkeeping, "ehr_screen": "Chart locked"})
    assert outcome is not None
    assert outcome.detail == {"event": "note.failed", "ehr_screen": "Chart locked"}


def test_a_known_key_is_never_overwritten_by_what_came_under_its_name():
    outcome = outcome_from_event(
        "note.failed",
        {"event": "forged", "reasons": "not a list", "note_id": {"x": 1}, "message": "Locked"},
    )
    assert outcome is not None
    assert outcome.detail == {"event": "note.failed", "message": "Locked"}


def test_passed_through_keys_are_bounded_and_what_is_left_out_is_named():
    deep: list[Any] = []
    for _ in range(300):  # the API's serializer refuses values this deep
        deep = [deep]
    data = {
        "first": "x" * 10_000,
        "second": "y" * 10_000,  # over the budget together with the first
        "deep": deep,
        "small": "kept",
        "available_medications": ["Metformin", deep],
    }
    outcome = outcome_from_event("telephone_encounter.failed", data)
    assert outcome is not None
    detail = outcome.detail
    assert detail["first"] == data["first"]
    assert detail["small"] == "kept"
    assert "second" not in detail
    assert "deep" not in detail
    assert detail["omitted_keys"] == ["second", "deep"]
    assert detail["available_medications"] == ["Metformin"]
    assert len(json.dumps(detail)) < MAX_PASSED_THROUGH_BYTES + 1_000


def test_omitted_names_are_capped():
    data = {f"key_{n}": "z" * 2_000 for n in range(100)}
    outcome = outcome_from_event("note.failed", data)
    assert outcome is not None
    assert len(outcome.detail["omitted_keys"]) == 20
    assert len(json.dumps(outcome.detail)) < MAX_PASSED_THROUGH_BYTES + 1_000
