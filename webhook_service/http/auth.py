"""Bearer-token authentication and roles for `/v1/*`, and CORS for browser front ends."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta
from functools import wraps
from typing import ParamSpec, TypeVar

from flask import Flask, current_app, g, request
from flask_cors import CORS

from webhook_service.db import transaction
from webhook_service.errors import ServiceError
from webhook_service.http.context import sessions, settings, utcnow
from webhook_service.models import ApiClient
from webhook_service.services.clients import authenticate, hash_token

AUTH_CACHE_SIZE = 10_000  # tokens remembered per process (AUTH_CACHE_SECONDS each)
P = ParamSpec("P")
R = TypeVar("R")


class Unauthenticated(ServiceError):
    status, slug, title = 401, "unauthenticated", "Authentication required"

    def headers(self) -> dict[str, str]:
        return {"WWW-Authenticate": 'Bearer realm="webhook_service", error="invalid_token"'}


class Forbidden(ServiceError):
    status, slug, title = 403, "forbidden", "Not allowed"

    def headers(self) -> dict[str, str]:
        return {"WWW-Authenticate": 'Bearer realm="webhook_service", error="insufficient_scope"'}


def current_client() -> ApiClient:
    client: ApiClient = g.api_client
    return client


def require(*roles: str) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """Let the view run only for an authenticated client holding one of `roles`."""

    def decorator(view: Callable[P, R]) -> Callable[P, R]:
        @wraps(view)
        def wrapped(*args: P.args, **kwargs: P.kwargs) -> R:
            g.api_client = _client_from_header()
            if g.api_client.role not in roles:
                raise Forbidden(f"This route needs the {' or '.join(roles)} role.")
            return view(*args, **kwargs)

        return wrapped

    return decorator


def client_if_any() -> ApiClient | None:
    """The client a valid bearer token names, or None: for routes open to anyone that tell
    an authenticated client more."""
    if not request.headers.get("Authorization"):
        return None
    try:
        return _client_from_header()
    except Unauthenticated:
        return None


def _client_from_header() -> ApiClient:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthenticated("Send `Authorization: Bearer <token>`.")
    digest = hash_token(token.strip())
    now = utcnow()
    cache: dict[str, tuple[ApiClient, datetime]] = current_app.extensions["webhook_service"][
        "auth_cache"
    ]
    cached = cache.get(digest)
    if cached is not None and cached[1] > now:
        return cached[0]
    with transaction(sessions()) as session:
        client = authenticate(session, token.strip())
        if client is None:
            cache.pop(digest, None)
            raise Unauthenticated("The bearer token is unknown or revoked.")
        session.expunge(client)
    ttl = settings().auth_cache_seconds
    if ttl > 0:
        # Polls come every second or two per job: looking the token up each time was a
        # third of a poll's cost. A revoked token keeps working for at most `ttl` seconds.
        if len(cache) >= AUTH_CACHE_SIZE:
            cache.clear()
        cache[digest] = (client, now + timedelta(seconds=ttl))
    return client


def init_cors(app: Flask, origins: tuple[str, ...]) -> None:
    """Allow the configured browser origins to call `/v1/*` and read our headers."""
    if not origins:
        return
    CORS(
        app,
        resources={r"/v1/*": {"origins": list(origins)}},
        allow_headers=[
            "Authorization",
            "Content-Type",
            "Idempotency-Key",
            "If-None-Match",
            "Prefer",
            "Last-Event-ID",
        ],
        expose_headers=[
            "ETag",
            "Retry-After",
            "Location",
            "Idempotent-Replayed",
            "X-Request-ID",
            "Preference-Applied",
        ],
        methods=["GET", "POST", "OPTIONS"],
        max_age=600,
    )
