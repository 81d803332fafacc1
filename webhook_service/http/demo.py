"""The try-it page at `/`: a front end in miniature, registered in development only.

It submits notes and telephone encounters to this service's own API and polls each job the
way a real front end should (`static/demo.js`). The forms are pre-filled with the sandbox's
`DEMO_IDS`, each scenario chosen to end in a known outcome. Every name and id is invented.

`/v1/*` needs a bearer token, so the page is handed the token of the `frontend` client
`demo-page`, created the first time it is served and kept in `instance/demo-page.token` for
every web process and later runs (`dev.kept_token`). That is acceptable only because this
blueprint exists only when `WEBHOOK_SERVICE_ENV=development`.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Final

from flask import Blueprint, Response, render_template

from webhook_service.dev import INSTANCE, kept_token
from webhook_service.http.context import sessions, utcnow
from webhook_service.sandbox.data import DEMO_IDS

bp = Blueprint(
    "demo",
    __name__,
    template_folder="templates",
    static_folder="static",
    static_url_path="/demo/static",
)

# Only this page's own files: no inline script, no third-party origin.
CONTENT_SECURITY_POLICY: Final = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; form-action 'none'; base-uri 'none'; frame-ancestors 'none'"
)


@dataclass(frozen=True)
class Scenario:
    """A preset for one form: the fields it sets and the outcome they lead to."""

    key: str
    label: str
    fields: dict[str, str]


NOTE_SCENARIOS: Final = (
    Scenario(
        "completed",
        f"Completed: appointment {DEMO_IDS['appointment_id']} exists",
        {"appointment_id": DEMO_IDS["appointment_id"]},
    ),
    Scenario(
        "failed",
        f"Failed: appointment {DEMO_IDS['unknown_appointment_id']} does not exist",
        {"appointment_id": DEMO_IDS["unknown_appointment_id"]},
    ),
    Scenario(
        "attention",
        "Needs attention: a gateway answers 504, Cobalt never got it (after the deadline)",
        {"appointment_id": DEMO_IDS["gateway_timeout_appointment_id"]},
    ),
)

_REFILL: Final = {
    "patient_mrn": DEMO_IDS["patient_mrn"],
    "provider_id": DEMO_IDS["provider_id"],
    "refill_medication_name": DEMO_IDS["refill_medication_name"],
    "pharmacy_ehr_id": DEMO_IDS["pharmacy_ehr_id"],
}
ENCOUNTER_SCENARIOS: Final = (
    Scenario("completed", "Completed: refill sent to a working pharmacy", _REFILL),
    Scenario(
        "partial",
        "Partial: the pharmacy step fails",
        _REFILL | {"pharmacy_ehr_id": DEMO_IDS["failing_pharmacy_ehr_id"]},
    ),
    Scenario(
        "medication",
        "Failed: unknown medication (lists the available ones)",
        _REFILL | {"refill_medication_name": DEMO_IDS["unknown_medication_name"]},
    ),
    Scenario(
        "chart",
        "Failed: the patient's chart is locked",
        _REFILL | {"patient_mrn": DEMO_IDS["locked_chart_patient_mrn"]},
    ),
    # The pre-flight check: 422 at once, nothing stored (once the worker has fetched the
    # clinic's lists, seconds after start; before that Cobalt refuses it: failed).
    Scenario(
        "unknown_provider",
        "Refused at once (422): a provider the EMR does not have",
        _REFILL | {"provider_id": DEMO_IDS["unknown_provider_id"]},
    ),
)
# The form's id fields offer the clinic's lists (GET /v1/reference/...) as choices; typing
# another id is still allowed, which is how the 422 scenario above is reached.
PICKERS: Final = {
    "provider_id": "providers",
    "location_id": "locations",
    "pharmacy_ehr_id": "pharmacies",
}

# The fields every encounter scenario shares; the scenario's own fields go on top.
ENCOUNTER_DEFAULTS: Final = {
    "provider_id": DEMO_IDS["provider_id"],
    "location_id": DEMO_IDS["location_id"],
    "assigned_to_id": DEMO_IDS["assigned_to_id"],
    "reason": "Refill request",
    "caller": "Alice Moreno (patient)",
    "message": "Asks for a refill before travelling next week.",
    "is_high_priority": "false",
    "template_name": "",
}


_token_lock = threading.Lock()
_token: str | None = None


def demo_token() -> str:
    """The page's token, read (or made) once per process."""
    global _token
    with _token_lock:
        if _token is None:
            _token = kept_token(
                sessions(), name="demo-page", path=INSTANCE / "demo-page.token", now=utcnow()
            )
        return _token


@bp.get("/")
def page() -> Response:
    """Serve the demo page."""
    html = render_template(
        "demo.html",
        token=demo_token(),
        note_scenarios=NOTE_SCENARIOS,
        note=NOTE_SCENARIOS[0].fields,
        encounter_scenarios=ENCOUNTER_SCENARIOS,
        encounter=ENCOUNTER_DEFAULTS | ENCOUNTER_SCENARIOS[0].fields,
        pickers=PICKERS,
    )
    response = Response(html, mimetype="text/html")
    response.headers["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
    response.headers["Cache-Control"] = "no-store"
    response.headers["X-Content-Type-Options"] = "nosniff"
    return response
