"""The pure rules: Cobalt event → status, terminal states, outcome details, backoff."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from webhook_service.lifecycle import (
    DOCUMENTED_OUTCOMES,
    MAX_PASSED_THROUGH_BYTES,
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
    assert outcome.error == {
        "code": "medication_not_found",
        "message": "Medication not found",
        "field": "refill_medication_name",  # as when Cobalt refuses it at once
    }
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
