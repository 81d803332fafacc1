"""Console page for clinics: each clinic's copy of Cobalt's provider, location and pharmacy
lists (what the pre-flight check reads), when it was fetched, and a "refresh now" action."""

from __future__ import annotations

from flask import flash, redirect, url_for
from werkzeug.wrappers import Response

from webhook_service import services
from webhook_service.cobalt import CobaltClient
from webhook_service.errors import NotFound
from webhook_service.http.console import bp
from webhook_service.http.console.pages import page, staff
from webhook_service.http.context import request_transaction, sessions, settings, utcnow
from webhook_service.models import Clinic
from webhook_service.services import reference
from webhook_service.services.clinics import list_clinics


@bp.get("/clinics")
def clinics() -> Response:
    """Every clinic with its three lists (no PHI: providers, locations, pharmacies)."""
    with request_transaction() as db:
        found = [
            (
                clinic,
                [reference.read_copy(db.connection(), clinic.id, kind) for kind in reference.KINDS],
            )
            for clinic in list_clinics(db)
        ]
        for clinic, _ in found:
            db.expunge(clinic)
    return page(
        "clinics.html",
        clinics=found,
        fields={kind: reference.field_of(kind) for kind in reference.KINDS},
        ttl=settings().reference_ttl_seconds,
        checks=settings().preflight_checks,
    )


@bp.post("/clinics/<int:clinic_id>/refresh")
def refresh_clinic_lists(clinic_id: int) -> Response:
    """Fetch the clinic's three lists from Cobalt now (an audited staff action)."""
    with request_transaction() as db:
        if db.get(Clinic, clinic_id) is None:
            raise NotFound(f"No clinic {clinic_id}.")
    results = reference.refresh_lists(
        sessions(), CobaltClient.from_settings(settings()), clinic_id, reference.KINDS, utcnow
    )
    failed = {kind: error for kind, error in results.items() if error is not None}
    with request_transaction() as db:
        services.audit_staff(
            db,
            staff(),
            "reference.refresh",
            utcnow(),
            clinic_id=clinic_id,
            fetched=sorted(kind for kind in results if kind not in failed),
            failed=sorted(failed),
        )
    if failed:
        flash(
            "Not refreshed: "
            + "; ".join(f"{kind}: {error}" for kind, error in failed.items())
            + ". The copy already held is kept."
        )
    else:
        flash(f"Refreshed the lists of clinic {clinic_id} from Cobalt.")
    return redirect(url_for("console.clinics") + f"#clinic-{clinic_id}", 303)
