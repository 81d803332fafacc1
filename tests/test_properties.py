"""Property: any interleaving of submit replies and duplicated, reordered, contradicting or
early webhooks leaves every job in the state its first delivered outcome says, with every
delivery on record."""

from __future__ import annotations

import json
import uuid

import responses
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import func, select

from tests.conftest import COBALT
from webhook_service.models import WebhookDelivery

OUTCOMES = {
    "telephone_encounter.created": "completed",
    "telephone_encounter.created_partial": "partial",
    "telephone_encounter.failed": "failed",
}


@st.composite
def scenarios(draw):
    """Jobs, each with one or more outcome events; a schedule of steps over them."""
    jobs = draw(st.integers(min_value=1, max_value=3))
    deliveries = []
    for job in range(jobs):
        for _ in range(draw(st.integers(min_value=0, max_value=3))):
            event_type = draw(st.sampled_from(sorted(OUTCOMES)))
            deliveries.append((job, event_type))
    # Each delivery may be sent again (Cobalt's retry, or a duplicate) with the same id.
    sends = []
    for index, _ in enumerate(deliveries):
        sends.extend([index] * draw(st.integers(min_value=1, max_value=2)))
    steps = [("submit", None)] * jobs + [("deliver", index) for index in sends]
    return jobs, deliveries, draw(st.permutations(steps))


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(scenario=scenarios())
def test_first_delivered_outcome_wins_whatever_the_order(
    scenario, client, worker, post_webhook, sessions
):
    jobs, deliveries, steps = scenario
    run = uuid.uuid4().hex[:8]
    mrns = [f"MRN-{run}-{n}" for n in range(jobs)]
    cobalt_ids = [f"{run}-{n}" for n in range(jobs)]
    webhook_ids = [f"msg_{run}_{i}" for i in range(len(deliveries))]

    job_ids = []
    for mrn in mrns:
        response = client.post(
            "/v1/telephone-encounters",
            json={
                "patient_mrn": mrn,
                "provider_id": "p",
                "location_id": "l",
                "assigned_to_id": "s",
            },
        )
        job_ids.append(response.json["id"])

    def accept(request):
        mrn = json.loads(request.body)["patient_mrn"]
        cobalt_id = cobalt_ids[mrns.index(mrn)]
        return 200, {}, json.dumps({"success": True, "job_id": cobalt_id})

    first_delivered: dict[int, str] = {}
    with responses.RequestsMock(assert_all_requests_are_fired=False) as cobalt:
        cobalt.add_callback(responses.POST, f"{COBALT}/telephone-encounters", callback=accept)
        cobalt.add(responses.GET, f"{COBALT}/settings", json={"access_token_reference_id": "r"})
        for kind, index in steps:
            if kind == "submit":
                assert worker.run_once()
                continue
            job, event_type = deliveries[index]
            payload = {
                "id": f"evt_{run}_{index}",
                "object": "event",
                "type": event_type,
                "job_id": cobalt_ids[job],
                "data": {"failure_reason": "x"} if event_type.endswith("failed") else {},
            }
            assert post_webhook(payload, webhook_id=webhook_ids[index]).status_code == 200
            first_delivered.setdefault(job, OUTCOMES[event_type])

    for job, job_id in enumerate(job_ids):
        expected = first_delivered.get(job, "processing")
        assert client.get(f"/v1/jobs/{job_id}").json["status"] == expected
    with sessions() as session:
        stored = session.scalar(
            select(func.count())
            .select_from(WebhookDelivery)
            .where(WebhookDelivery.webhook_id.in_(webhook_ids))
        )
    assert stored == len(deliveries)
