"""The pretend EMR's provider, location and pharmacy lists, in the shapes of Cobalt's
`GET /v1/providers`, `/v1/locations` and `/v1/pharmacies`, and the knob that breaks them
(`FaultSettings.reference_lists`)."""

from __future__ import annotations

from typing import Any

from webhook_service.sandbox.config import FaultSettings
from webhook_service.sandbox.data import SeedData


def reference_items(seed: SeedData, resource: str) -> list[dict[str, Any]]:
    """The list under its resource's plural name, each item as Cobalt's docs show it."""
    if resource == "providers":
        return [
            {
                "id": f"prov_{p.ehr_id.lower()}",
                **p.to_api(),
                "timezone": "UTC",
                "status": p.status,
                "hide_in_availability": p.status != "active",
                "hours": [],
            }
            for p in seed.providers.values()
        ]
    if resource == "locations":
        return [
            {
                "id": f"loc_{x.ehr_id.lower()}",
                **x.to_api(),
                "status": "active",
                "phone": "555-0100",
                "fax": None,
            }
            for x in seed.locations.values()
        ]
    return [
        {"id": f"phar_{p.ehr_id.lower()}", **p.to_api(), "email": None, "status": "active"}
        for p in seed.pharmacies.values()
    ]


def reference_reply(
    seed: SeedData, resource: str, faults: FaultSettings
) -> tuple[dict[str, Any], int]:
    """The reply to `GET /v1/{resource}`, as the knob says: the list, a 503, or no list."""
    if faults.reference_lists == "unavailable":
        return {"success": False, "message": "Service temporarily unavailable"}, 503
    if faults.reference_lists == "unreadable":
        return {"success": True, "data": {"note": f"{resource} moved"}}, 200
    return {"success": True, resource: reference_items(seed, resource)}, 200
