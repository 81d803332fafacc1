"""Callbacks on the wire: Standard Webhooks signing, the check that a URL is safe to call, and
one bounded POST to a front end's endpoint that refuses to reach a private address.

The address rule is checked when a URL is registered and again at every send: DNS can change
between the two, so the send resolves the name, refuses a private answer, and then checks the
address the socket actually connected to (a second lookup inside the HTTP library could get
another answer).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import secrets
import socket
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import requests
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

SECRET_PREFIX = "whsec_"  # noqa: S105 - the secrets' prefix, not a secret
SECRET_BYTES = 24  # 192 bits, as the Standard Webhooks reference libraries generate
# The start of a receiver's answer kept with each attempt: enough to read an error message.
EXCERPT_CHARS = 500
USER_AGENT = "webhook-service-callbacks/1"

Resolver = Callable[[str, int], list[str]]


def new_secret() -> str:
    """A fresh signing secret: `whsec_` and the base64 of 24 random bytes."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(SECRET_BYTES)).decode()


def signature(secret: str, webhook_id: str, timestamp: int, body: bytes) -> str:
    """`v1,<base64 HMAC-SHA256 of id.timestamp.body>` under one `whsec_` secret."""
    key = base64.b64decode(secret.removeprefix(SECRET_PREFIX))
    signed = f"{webhook_id}.{timestamp}.".encode() + body
    return "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()


def signed_headers(
    secrets_: Iterable[str], webhook_id: str, timestamp: int, body: bytes
) -> dict[str, str]:
    """The Standard Webhooks headers: one signature per secret, space-separated (during a
    rotation the old secret signs alongside the new, so either verifies)."""
    return {
        "content-type": "application/json",
        "user-agent": USER_AGENT,
        "webhook-id": webhook_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": " ".join(signature(s, webhook_id, timestamp, body) for s in secrets_),
    }


# --- Which URLs may be called ---------------------------------------------------------------


class UnsafeUrl(ValueError):
    """A callback URL this service will not call; the message says why, for the caller."""


def is_public(address: str) -> bool:
    """A globally routable unicast address: not private, loopback, link-local (cloud metadata
    at 169.254.169.254), shared, reserved or multicast; IPv4-mapped IPv6 judged as IPv4."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_global and not ip.is_multicast


def resolve(host: str, port: int) -> list[str]:
    """Every address `host` resolves to (an IP literal resolves to itself)."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return sorted({str(info[4][0]) for info in infos})


def check_url(url: str, *, allow_private: bool, resolver: Resolver | None = None) -> None:
    """Raise UnsafeUrl unless `url` may be called: https to public addresses only, unless
    private networks are allowed (development and tests), which allows plain http too."""
    try:
        parts = urlsplit(url)
        hostname = parts.hostname
    except ValueError:  # e.g. an unclosed IPv6 bracket
        raise UnsafeUrl("is not a valid URL") from None
    if parts.scheme not in ("https", "http") or not hostname:
        raise UnsafeUrl("must be an absolute https URL")
    if parts.username is not None or parts.password is not None:
        raise UnsafeUrl("must not carry credentials")
    if parts.scheme != "https" and not allow_private:
        raise UnsafeUrl("must be https")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        raise UnsafeUrl("has an invalid port") from None
    if allow_private:
        return
    try:
        addresses = (resolver or resolve)(hostname, port)
    except (OSError, UnicodeError):
        raise UnsafeUrl(f"host {hostname!r} does not resolve") from None
    private = [address for address in addresses if not is_public(address)]
    if private or not addresses:
        raise UnsafeUrl(
            f"host {parts.hostname!r} resolves to {', '.join(private) or 'nothing'}, "
            "not a public address"
        )


# --- One attempt ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Answer:
    """What one attempt got: a status and the start of the body, or why there was none."""

    succeeded: bool
    status_code: int | None
    latency_ms: int
    error: str | None
    excerpt: str | None


class _PeerRefused(OSError):
    """The socket connected to a private address (DNS answered differently than before)."""


class _CheckedConnection(HTTPConnection):
    def _new_conn(self) -> socket.socket:
        sock = super()._new_conn()
        peer = str(sock.getpeername()[0])
        if not is_public(peer):
            sock.close()
            raise _PeerRefused(f"connected to {peer}, not a public address")
        return sock


class _CheckedHTTPSConnection(_CheckedConnection, HTTPSConnection):
    pass


class _CheckedPool(HTTPConnectionPool):
    ConnectionCls = _CheckedConnection


class _CheckedHTTPSPool(HTTPSConnectionPool):
    ConnectionCls = _CheckedHTTPSConnection


class _CheckedAdapter(HTTPAdapter):
    """Connections that refuse a private peer, whatever the name resolved to by then."""

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = {"http": _CheckedPool, "https": _CheckedHTTPSPool}


def send(
    url: str,
    body: bytes,
    headers: dict[str, str],
    *,
    allow_private: bool,
    connect_timeout: float,
    total_timeout: float,
    resolver: Resolver | None = None,
) -> Answer:
    """POST one callback; 2xx is success, anything else (a redirect too) a failure.

    Bounded: connecting by `connect_timeout`, every read by `total_timeout`, and the answer is
    read only as far as its excerpt and only until `total_timeout` has passed.
    """
    started = time.monotonic()

    def took() -> int:
        return round((time.monotonic() - started) * 1000)

    try:
        check_url(url, allow_private=allow_private, resolver=resolver)
    except UnsafeUrl as exc:
        return Answer(False, None, took(), f"refused: {exc}"[:300], None)
    with requests.Session() as session:
        session.trust_env = False  # no proxy from the environment: the peer must be the host
        if not allow_private:
            session.mount("https://", _CheckedAdapter())
            session.mount("http://", _CheckedAdapter())
        try:
            response = session.post(
                url,
                data=body,
                headers=headers,
                timeout=(connect_timeout, total_timeout),
                allow_redirects=False,
                stream=True,
            )
        except requests.exceptions.ConnectionError as exc:
            refused = _peer_refusal(exc)
            if refused:
                return Answer(False, None, took(), f"refused: {refused}"[:300], None)
            if isinstance(
                exc, requests.exceptions.ConnectTimeout | requests.exceptions.ReadTimeout
            ):
                return Answer(False, None, took(), "timeout", None)
            return Answer(False, None, took(), _connection_error(exc), None)
        except requests.exceptions.Timeout:
            return Answer(False, None, took(), "timeout", None)
        except requests.exceptions.RequestException as exc:
            return Answer(False, None, took(), f"request failed ({type(exc).__name__})", None)
        with response:
            excerpt, error = _read_excerpt(response, started + total_timeout)
        ok = 200 <= response.status_code < 300
        return Answer(ok and error is None, response.status_code, took(), error, excerpt)


def _read_excerpt(response: requests.Response, deadline: float) -> tuple[str, str | None]:
    data = b""
    try:
        for chunk in response.iter_content(chunk_size=256):
            data += chunk
            if len(data) >= EXCERPT_CHARS * 4 or time.monotonic() > deadline:
                break
    except requests.exceptions.RequestException:
        return _text(data), "the answer was cut off"
    if time.monotonic() > deadline:
        return _text(data), "timeout"
    return _text(data), None


def _text(data: bytes) -> str:
    return data.decode("utf-8", errors="replace")[:EXCERPT_CHARS]


def _peer_refusal(exc: BaseException | None, depth: int = 0) -> str | None:
    """The refusal of a private peer, wherever requests and urllib3 wrapped it."""
    if exc is None or depth > 6:
        return None
    if isinstance(exc, _PeerRefused):
        return str(exc)
    inner = [exc.__cause__, exc.__context__, getattr(exc, "reason", None)]
    inner += [arg for arg in exc.args if isinstance(arg, BaseException)]
    for found in (_peer_refusal(e, depth + 1) for e in inner if isinstance(e, BaseException)):
        if found:
            return found
    return None


def _connection_error(exc: requests.exceptions.ConnectionError) -> str:
    text = str(exc)
    if "SSL" in text or "certificate" in text.lower():
        return "TLS handshake failed"
    if "Name or service not known" in text or "NameResolution" in text:
        return "host does not resolve"
    if "RemoteDisconnected" in text or "Connection aborted" in text:
        return "connection closed without an answer"
    return "connection failed"
