"""The Cobalt HTTP client: every call to Cobalt goes through here.

Longer than 400 lines because the calls and the reading of their answers (accepted, refused
and why, maybe sent) are one contract with Cobalt, read and changed together.

Cobalt has no idempotency key, so the one question that matters after a failed call is
"could Cobalt have accepted it?". The error classes answer it: `CobaltTransient` means
certainly not (safe to resend), `CobaltAmbiguous` means maybe (reconcile first), and
`CobaltRejected` means Cobalt said no (with the service's error code for what it refused).
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import requests
from urllib3.exceptions import NewConnectionError

from webhook_service import metrics

if TYPE_CHECKING:
    from webhook_service.settings import Settings

from webhook_service.lifecycle import (
    COBALT_REJECTED,
    ERROR_CODES,
    LOCATION_NOT_FOUND,
    LOGIN_REQUIRED,
    MEDICATION_NOT_FOUND,
    PHARMACY_NOT_FOUND,
    PROVIDER_NOT_FOUND,
    STAFF_NOT_FOUND,
    UNSUPPORTED_EMR,
    USER_NOT_FOUND,
)


class CobaltError(Exception):
    """A call to Cobalt did not succeed."""

    status_code: int | None = None


class CobaltRejected(CobaltError):
    """Cobalt said no (a 4xx other than 429, or a 2xx saying `"success": false`): the
    request is not in the EMR and resending it unchanged will not help."""

    def __init__(self, status_code: int, message: str, rejection: Rejection | None = None) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.message = message
        self.rejection = rejection or Rejection(COBALT_REJECTED)

    @property
    def code(self) -> str:
        return self.rejection.code

    @property
    def login_required(self) -> bool:
        return self.rejection.code == LOGIN_REQUIRED


class CobaltTransient(CobaltError):
    """Cobalt certainly did not take the request: resend later. Only a connection that never
    opened, a 429, or a 5xx carrying Cobalt's own JSON error body say so."""

    def __init__(self, reason: str, status_code: int | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status_code = status_code


class CobaltAmbiguous(CobaltError):
    """The request may have reached Cobalt: timed out or cut off after sending, or answered
    by something other than Cobalt (a gateway's 502/504, a redirect)."""

    def __init__(self, reason: str, status_code: int | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status_code = status_code


class CobaltUnreadable(CobaltError):
    """Cobalt answered 2xx, but not with the list asked for (no list under the resource's
    plural name): a read to try again later, never a reason to empty a copy."""


@dataclass(frozen=True)
class Accepted:
    """Cobalt's 2xx reply to a write: its ids, when it gave any."""

    status_code: int
    job_id: str | None
    telephone_encounter_id: str | None
    message: str | None


class CobaltClient:
    """Calls Cobalt with the company's credentials and one clinic's access token."""

    def __init__(
        self,
        base_url: str,
        client_id: str,
        client_secret: str,
        *,
        connect_timeout: float = 5.0,
        read_timeout: float = 20.0,
        session: requests.Session | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._client_id = client_id
        self._client_secret = client_secret
        self._timeout = (connect_timeout, read_timeout)
        self._http = session or _session_for(self.base_url)

    @classmethod
    def from_settings(cls, settings: Settings) -> CobaltClient:
        """The client the settings describe (URL, credentials, timeouts)."""
        return cls(
            settings.cobalt_api_url,
            settings.cobalt_client_id,
            settings.cobalt_client_secret,
            connect_timeout=settings.cobalt_connect_timeout_seconds,
            read_timeout=settings.cobalt_read_timeout_seconds,
        )

    def create_note(self, access_token: str, body: dict[str, Any]) -> Accepted:
        return self._write("/notes", access_token, body)

    def create_telephone_encounter(self, access_token: str, body: dict[str, Any]) -> Accepted:
        return self._write("/telephone-encounters", access_token, body)

    def get_access_token_reference_id(self, access_token: str) -> str | None:
        """Ask `GET /v1/settings` which clinic reference id webhooks will carry."""
        payload = self._get("/settings", access_token, {})
        return _find_key(payload, "access_token_reference_id")

    def reference_list(self, access_token: str, resource: str) -> list[Any]:
        """`GET /v1/{resource}` (providers, locations or pharmacies): the list Cobalt keeps
        under the resource's plural name. Its items are as Cobalt sent them."""
        payload = self._get(f"/{resource}", access_token, {})
        items = payload.get(resource)
        if not isinstance(items, list) or _is_cobalt_error(payload):
            raise CobaltUnreadable(f"no {resource} list in Cobalt's answer")
        return items

    def list_webhook_events(self, access_token: str, **params: str | int) -> dict[str, Any]:
        return self._get("/webhook-events", access_token, params)

    def webhook_events(
        self, access_token: str, params: dict[str, str | int], *, max_pages: int | None = None
    ) -> EventLog:
        """Every event in Cobalt's log that matches `params`, every page of it.

        The query's own filters (job id, or event type and dates) bound the read, not a
        page count. `max_pages`, and stopping at an empty page or a page that repeats the
        one before, only protect against a Cobalt whose pagination is broken; the reason is
        returned in `stopped` so the caller can log it.
        """
        max_pages = max_pages or MAX_LOG_PAGES
        events: list[dict[str, Any]] = []
        previous: list[object] | None = None
        for page in range(1, max_pages + 1):
            payload = self.list_webhook_events(access_token, **params, page=page)
            items = payload.get("webhook_events")
            items = (
                [item for item in items if isinstance(item, dict)]
                if isinstance(items, list)
                else []
            )
            pagination = payload.get("pagination")
            total = pagination.get("total_pages") if isinstance(pagination, dict) else None
            ids: list[object] = [item.get("event_id") for item in items]
            if not items:  # the end, or (before the last page) a broken pagination
                early = isinstance(total, int) and page < total
                return EventLog(
                    events, page, f"page {page} of {total} was empty" if early else None
                )
            if ids and ids == previous:
                return EventLog(events, page, f"page {page} repeated page {page - 1}")
            events.extend(items)
            if not isinstance(total, int) or page >= total:
                return EventLog(events, page, None)
            previous = ids
        return EventLog(events, max_pages, f"stopped after {max_pages} pages")

    def _headers(self, access_token: str) -> dict[str, str]:
        return {
            "client_id": self._client_id,
            "client_secret": self._client_secret,
            "access_token": access_token,
            "accept": "application/json",
        }

    def _write(self, path: str, access_token: str, body: dict[str, Any]) -> Accepted:
        with _measured(path, "accepted"):
            return self._send_write(path, access_token, body)

    def _get(self, path: str, access_token: str, params: dict[str, Any]) -> dict[str, Any]:
        with _measured(path, "ok"):
            return self._send_get(path, access_token, params)

    def _send_write(self, path: str, access_token: str, body: dict[str, Any]) -> Accepted:
        try:
            response = self._http.post(
                self.base_url + path,
                json=body,
                headers=self._headers(access_token),
                timeout=self._timeout,
                # A redirected POST becomes a GET whose 200 says nothing about the write:
                # the 3xx itself is the answer (see `_raise_for_write`).
                allow_redirects=False,
            )
        except requests.ConnectTimeout as exc:
            raise CobaltTransient("connect timeout") from exc
        except requests.ReadTimeout as exc:
            raise CobaltAmbiguous("read timeout: Cobalt may have accepted the request") from exc
        except requests.ConnectionError as exc:
            if _never_connected(exc):
                raise CobaltTransient("connection refused or unreachable") from exc
            # The connection broke after the request went out: Cobalt may have it.
            raise CobaltAmbiguous("connection lost after sending") from exc
        payload = _json_or_empty(response)
        _raise_for_write(response.status_code, payload)
        return Accepted(
            status_code=response.status_code,
            job_id=_as_id(payload.get("job_id")),
            telephone_encounter_id=_as_id(payload.get("telephone_encounter_id")),
            message=payload.get("message") if isinstance(payload.get("message"), str) else None,
        )

    def _send_get(self, path: str, access_token: str, params: dict[str, Any]) -> dict[str, Any]:
        try:
            response = self._http.get(
                self.base_url + path,
                params=params,
                headers=self._headers(access_token),
                timeout=self._timeout,
                # Followed, the credentials in the headers would go to whatever host it names.
                allow_redirects=False,
            )
        except requests.RequestException as exc:
            # Reads change nothing at Cobalt, so any failure is safe to try again.
            raise CobaltTransient(type(exc).__name__) from exc
        payload = _json_or_empty(response)
        _raise_for_status(response.status_code, payload)
        return payload


@contextmanager
def _measured(path: str, success: str) -> Iterator[None]:
    """Count the call (`metrics.cobalt_call`): the operation is the path (`notes`,
    `telephone_encounters`, `settings`, `webhook_events`), the answer what it proved."""
    started = time.perf_counter()
    answer = "error"  # not an answer from Cobalt: a bug of ours, counted all the same
    try:
        yield
        answer = success
    except CobaltRejected:
        answer = "rejected"
        raise
    except CobaltTransient:
        answer = "transient"
        raise
    except CobaltAmbiguous:
        answer = "ambiguous"
        raise
    finally:
        operation = path.strip("/").replace("-", "_")
        metrics.cobalt_call(operation, answer, time.perf_counter() - started)


def _raise_for_write(status_code: int, payload: dict[str, Any]) -> None:
    """Classify the answer to a write by what it proves about the EMR.

    Only Cobalt's own JSON error (`{"success": false, ...}`) proves Cobalt looked at the
    request and did not queue it. A 5xx without it may come from a gateway in front of
    Cobalt after Cobalt queued the job (Cobalt has no idempotency key): unknown, never
    resent. A 3xx is not followed: something received the POST, and what it did is unknown.
    """
    if 200 <= status_code < 300:
        if _is_cobalt_error(payload):  # Cobalt's "no", whatever the status says
            raise _rejected(status_code, payload)
        return
    if status_code == 429:
        raise CobaltTransient("Cobalt answered 429", status_code)
    if status_code >= 500:
        if _is_cobalt_error(payload):
            raise CobaltTransient(f"Cobalt answered {status_code}", status_code)
        raise CobaltAmbiguous(
            f"answered {status_code} without Cobalt's error body: Cobalt may have the request",
            status_code,
        )
    if status_code < 400:
        raise CobaltAmbiguous(f"answered {status_code}: a redirect, not followed", status_code)
    raise _rejected(status_code, payload)


def _raise_for_status(status_code: int, payload: dict[str, Any]) -> None:
    """Classify the answer to a read: reads change nothing, so any 5xx may be tried again."""
    if status_code < 300:
        return
    if status_code == 429 or status_code >= 500:
        raise CobaltTransient(f"Cobalt answered {status_code}", status_code)
    if status_code < 400:
        # Not followed, and not Cobalt's refusal: looked up again later, as reads may be.
        raise CobaltTransient(f"answered {status_code}: a redirect, not followed", status_code)
    raise _rejected(status_code, payload)


def _is_cobalt_error(payload: dict[str, Any]) -> bool:
    """True for Cobalt's own error body, `{"success": false, ...}`."""
    return payload.get("success") is False


# Cobalt's refusal is kept as the job's error message (encrypted, purged with the rest of
# its PHI, shown to the front end): bounded, so an answer of any size stores a sentence.
MAX_REJECTION_MESSAGE_CHARS = 500


def _rejected(status_code: int, payload: dict[str, Any]) -> CobaltRejected:
    text = _first_text(payload, "message", "error") or f"Cobalt answered {status_code}"
    if len(text) > MAX_REJECTION_MESSAGE_CHARS:
        text = text[: MAX_REJECTION_MESSAGE_CHARS - 1] + "\u2026"
    return CobaltRejected(status_code, text, recognise_rejection(status_code, payload))


# --- What Cobalt refused -----------------------------------------------------------------------


@dataclass(frozen=True)
class Rejection:
    """The service's reading of a synchronous refusal: its error code, the request field it
    names, and for a medication not found, the medications that could have been refilled."""

    code: str
    field: str | None = None
    available_medications: list[Any] | None = None


# Cobalt documents its synchronous errors by title only ("Provider Not Found", "Staff Member
# Not Found", "Unsupported EMR", ...) and its wording varies between docs and versions, so
# each is recognised by a pattern over the answer's `error` and `message` texts (lowercase,
# `_`/`-` read as spaces), first match wins. The request field each code names is the
# registry's (`lifecycle.ERROR_CODES`).
def _absent(subject: str) -> str:
    """`subject`, then within the same clause, words saying it was not found; or "no
    (corresponding) `subject` ... found"."""
    gap = "[^.;]{0,40}?"
    return (
        rf"\b{subject}\b{gap}\b(not (be )?found|does ?n[o']?t exist|is not in)\b"
        rf"|\bno (corresponding |matching )?{subject}\b{gap}\bfound\b"
    )


_REJECTION_PATTERNS: tuple[tuple[re.Pattern[str], str], ...] = tuple(
    (re.compile(pattern), code)
    for pattern, code in (
        (r"\blogin required\b|\bre ?link", LOGIN_REQUIRED),
        (_absent("medications?"), MEDICATION_NOT_FOUND),
        (r"\bno (refillable )?medications? (matche|was found)", MEDICATION_NOT_FOUND),
        (_absent("provider"), PROVIDER_NOT_FOUND),
        (_absent("(staff|assigned to)"), STAFF_NOT_FOUND),
        (_absent("location"), LOCATION_NOT_FOUND),
        (_absent("pharmacy"), PHARMACY_NOT_FOUND),
        (_absent("user"), USER_NOT_FOUND),
        (r"\bunsupported emr\b|\bemr\b[^.;]{0,40}?\bnot (yet )?supported\b", UNSUPPORTED_EMR),
    )
)
REJECTION_CODES = frozenset(code for _, code in _REJECTION_PATTERNS) | {COBALT_REJECTED}


def recognise_rejection(status_code: int, payload: dict[str, Any]) -> Rejection:
    """Which of Cobalt's synchronous errors an answer is, from its status and texts."""
    text = " ".join(
        value for key in ("error", "message") if isinstance(value := payload.get(key), str)
    )
    text = " ".join(re.sub(r"[_\-]+", " ", text).lower().split())
    meds = payload.get("available_medications")
    meds = meds if isinstance(meds, list) else None
    code = next((code for pattern, code in _REJECTION_PATTERNS if pattern.search(text)), None)
    if code is None and meds is not None:
        code = MEDICATION_NOT_FOUND  # a refusal listing medications is about the medication
    if code is None and status_code == 403 and _is_cobalt_error(payload):
        code = LOGIN_REQUIRED  # Cobalt's only documented 403 is an expired EMR link
    code = code or COBALT_REJECTED
    return Rejection(code, ERROR_CODES[code].field, meds if code == MEDICATION_NOT_FOUND else None)


def _session_for(base_url: str) -> requests.Session:
    """A pooled session with the environment's proxy and CA settings read once, here.

    With `trust_env` left on, requests reads every proxy variable (and looks for a .netrc)
    on each call: in the worker's profile that was a tenth of its CPU per submission.
    The environment does not change while the process runs, so the answer is the same.
    """
    session = requests.Session()
    found = session.merge_environment_settings(base_url, {}, None, None, None)
    session.proxies.update(found["proxies"])
    session.verify = found["verify"]
    session.trust_env = False
    return session


def _json_or_empty(response: requests.Response) -> dict[str, Any]:
    try:
        payload = response.json()
    except ValueError:
        return {}
    return payload if isinstance(payload, dict) else {}


def _first_text(payload: dict[str, Any], *keys: str) -> str | None:
    for key in keys:
        value = payload.get(key)
        if isinstance(value, str) and value.strip():
            return value
    return None


def _as_id(value: object) -> str | None:
    """Cobalt's ids are strings in one doc and integers in another: store strings."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, str | int):
        text = str(value).strip()
        return text or None
    return None


def _never_connected(exc: requests.ConnectionError) -> bool:
    """True when the failure happened before any byte of the request could be sent."""
    seen: set[int] = set()
    pending: list[object] = [exc]
    while pending:
        reason = pending.pop()
        if not isinstance(reason, BaseException) or id(reason) in seen:
            continue
        seen.add(id(reason))
        if isinstance(reason, NewConnectionError | ConnectionRefusedError):
            return True
        pending.extend([getattr(reason, "reason", None), reason.__cause__, reason.__context__])
        pending.extend(reason.args)
    return False


def _find_key(payload: object, key: str) -> str | None:
    """Find `key` at the top level or one level down (Cobalt's reply shapes vary)."""
    if not isinstance(payload, dict):
        return None
    if key in payload:
        return _as_id(payload[key])
    for value in payload.values():
        if isinstance(value, dict) and key in value:
            return _as_id(value[key])
    return None


# A lookup reads every page its filters select; past this many (100 events each), Cobalt's
# pagination is taken to be broken rather than the log that long.
MAX_LOG_PAGES = 500


@dataclass(frozen=True)
class EventLog:
    """What a read of Cobalt's webhook-events log found: the events, the pages read, and
    why the read stopped early (None when it reached the last page)."""

    events: list[dict[str, Any]]
    pages: int
    stopped: str | None
