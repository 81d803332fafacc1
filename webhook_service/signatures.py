"""Cobalt webhook signature checks: pure functions of bytes and secrets.

Cobalt signs `JSON.stringify(payload)` with HMAC-SHA256 and sends the lowercase hex digest in
`cobalt-verification`. Nothing else is signed, so the body is all we can check.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

SignatureForm = Literal["raw", "compact"]
_HEX_DIGITS = frozenset("0123456789abcdef")


@dataclass(frozen=True)
class SignatureMatch:
    """Which form of the body matched, and which configured secret (0 = newest)."""

    form: SignatureForm
    secret_index: int

    def describe(self) -> str:
        return f"{self.form}:secret[{self.secret_index}]"


def compact_json(payload: Any) -> bytes:
    """Serialise like JavaScript's `JSON.stringify`: no spaces, non-ASCII left as UTF-8."""
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def compute_signature(secret: str, body: bytes) -> str:
    """Return the lowercase hex HMAC-SHA256 of `body` keyed with `secret`."""
    return hmac.new(secret.encode("utf-8"), body, hashlib.sha256).hexdigest()


def verify_signature(
    raw_body: bytes, header: str | None, secrets: Sequence[str]
) -> SignatureMatch | None:
    """Check `header` against every secret, over the raw bytes first, then the compact form.

    The compact re-serialisation is tried because a proxy may re-encode the JSON (adding
    spaces, escaping non-ASCII); Cobalt signed `JSON.stringify`'s output, not our bytes.
    Returns None when nothing matches, including a missing or non-hex header.
    """
    if not header or not secrets:
        return None
    candidate = header.strip().lower()
    if len(candidate) != 64 or not _HEX_DIGITS.issuperset(candidate):
        return None
    for index, secret in enumerate(secrets):
        if hmac.compare_digest(compute_signature(secret, raw_body), candidate):
            return SignatureMatch("raw", index)
    compact = _compact_form(raw_body)
    if compact is None or compact == raw_body:
        return None
    for index, secret in enumerate(secrets):
        if hmac.compare_digest(compute_signature(secret, compact), candidate):
            return SignatureMatch("compact", index)
    return None


def _compact_form(raw_body: bytes) -> bytes | None:
    try:
        return compact_json(json.loads(raw_body))
    except (ValueError, RecursionError):
        return None
