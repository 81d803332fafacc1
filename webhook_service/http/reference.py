"""The clinic's EMR lists for front ends (`GET /v1/reference/...`), and the pre-flight hook
the submission route calls (see `services/reference.py` for the rule)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

from flask import Blueprint, Response, current_app, request
from pydantic import BaseModel, Field
from sqlalchemy import Connection

from webhook_service import services
from webhook_service.cobalt import CobaltClient
from webhook_service.http.auth import current_client, require
from webhook_service.http.context import request_transaction, sessions, settings, utcnow
from webhook_service.schemas import NoteRequest, TelephoneEncounterRequest
from webhook_service.services import reference
from webhook_service.services.reference import KINDS, StaleMiss

bp = Blueprint("reference", __name__)

# The refresh a miss triggers runs while a front end waits for its answer: bounded well
# under the worker's timeouts (a read changes nothing at Cobalt, so giving up is safe).
PREFLIGHT_CONNECT_TIMEOUT = 2.0
PREFLIGHT_READ_TIMEOUT = 5.0


class ReferenceItemOut(BaseModel):
    ehr_id: str = Field(description="The id the EMR knows it by: send it as the request field.")
    name: str
    status: str | None = Field(
        description="Cobalt's `active` or `inactive`, when it says. Inactive entries are listed "
        "and not refused by the pre-flight check: Cobalt refuses only ids it does not have."
    )


class ReferenceListOut(BaseModel):
    """A clinic's copy of one of Cobalt's lists (no PHI)."""

    items: list[ReferenceItemOut]
    fetched_at: datetime | None = Field(
        description="When the copy was fetched from Cobalt; null until it first is."
    )


@require("frontend")
def reference_list(kind: str) -> Response:
    """The calling client's clinic's copy of a list; 304 when the caller's ETag is current."""
    client = current_client()
    with request_transaction() as session:
        clinic = services.clinic_for(session, client, settings(), utcnow())
        copy = reference.read_copy(session.connection(), clinic.id, kind)
    etag = copy.etag()
    response = Response(status=304)
    if not request.if_none_match.contains_weak(etag):
        body = ReferenceListOut.model_validate(copy.body()).model_dump_json()
        response = Response(body, status=200, mimetype="application/json")
    response.set_etag(etag)
    # Not PHI, but the clinic's own: kept by the caller's browser only, checked every time.
    response.headers["Cache-Control"] = "private, no-cache"
    return response


# One route per list (as the OpenAPI document has one path each); any other name is a 404.
for _kind in KINDS:
    bp.add_url_rule(
        f"/v1/reference/{_kind}", f"list_{_kind}", reference_list, defaults={"kind": _kind}
    )


# --- The hook the submission route calls -----------------------------------------------------


def check_submission(
    connection: Connection,
    clinic_id: int,
    validated: NoteRequest | TelephoneEncounterRequest,
    now: datetime,
    *,
    may_refresh: bool,
) -> None:
    """Pre-flight a telephone encounter in its submission's transaction (PREFLIGHT_CHECKS).

    Raises NotInEmrList (422) or StaleMiss (refresh, then submit again): either way the
    transaction rolls back and nothing is stored.
    """
    if isinstance(validated, TelephoneEncounterRequest) and settings().preflight_checks:
        extension = current_app.extensions["webhook_service"]
        known = extension.get("known_ids")
        if known is None:
            known = extension["known_ids"] = reference.KnownIds()
        reference.preflight(
            connection, clinic_id, validated, now, may_refresh=may_refresh, known=known
        )


def with_preflight(store: Callable[[bool], Response]) -> Response:
    """Run `store(may_refresh)`; on a miss against a copy that is not fresh, refresh the lists
    that missed (bounded, no transaction open) and run it once more, refresh not allowed."""
    try:
        return store(True)
    except StaleMiss as miss:
        reference.refresh_lists(sessions(), _preflight_cobalt(), miss.clinic_id, miss.kinds, utcnow)
    return store(False)


def _preflight_cobalt() -> CobaltClient:
    extension = current_app.extensions["webhook_service"]
    client: CobaltClient | None = extension.get("preflight_cobalt")
    if client is None:
        config = settings()
        client = CobaltClient(
            config.cobalt_api_url,
            config.cobalt_client_id,
            config.cobalt_client_secret,
            connect_timeout=min(config.cobalt_connect_timeout_seconds, PREFLIGHT_CONNECT_TIMEOUT),
            read_timeout=min(config.cobalt_read_timeout_seconds, PREFLIGHT_READ_TIMEOUT),
        )
        extension["preflight_cobalt"] = client
    return client


# --- The OpenAPI description of the above (openapi.py merges it) ------------------------------


def openapi_paths(
    problem: Callable[[str], dict[str, Any]],
    json_of: Callable[[type[BaseModel]], dict[str, Any]],
    header: Callable[[str], dict[str, str]],
) -> dict[str, Any]:
    """The three list routes, one path each (so generated clients get one method each)."""
    paths: dict[str, Any] = {}
    for kind, code in KINDS.items():
        field = reference.field_of(kind)
        paths[f"/v1/reference/{kind}"] = {
            "get": {
                "operationId": f"list_reference_{kind}",
                "tags": ["reference"],
                "summary": f"The clinic's {kind}, for `{field}` pickers",
                "description": f"The calling client's clinic's copy of Cobalt's `GET /v1/{kind}`, "
                "refreshed in the background every REFERENCE_TTL_SECONDS. An id not in it is "
                f"refused before it is stored (422, `errors[].code` `{code}`) once a refresh "
                "confirms it absent.",
                "parameters": [
                    {"name": "If-None-Match", "in": "header", "schema": {"type": "string"}}
                ],
                "responses": {
                    "200": {
                        "description": "The list (empty with `fetched_at` null until fetched).",
                        "headers": {"ETag": header("ReferenceETag")},
                        "content": json_of(ReferenceListOut),
                    },
                    "304": {
                        "description": "Unchanged since the ETag given.",
                        "headers": {"ETag": header("ReferenceETag")},
                    },
                },
            }
        }
    return paths


OPENAPI_HEADERS: dict[str, dict[str, Any]] = {
    "ReferenceETag": {
        "description": "The list's version; send it back as If-None-Match for a 304.",
        "schema": {"type": "string"},
    },
}
OPENAPI_MODELS: list[type[BaseModel]] = [ReferenceListOut]
