"""Small helpers every blueprint shares: the app's settings, sessions, and the clock."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime

from flask import current_app, request
from sqlalchemy import Connection, Engine
from sqlalchemy.orm import Session
from werkzeug.exceptions import RequestEntityTooLarge

from webhook_service.clock import utcnow as clock_utcnow
from webhook_service.db import SessionFactory, transaction
from webhook_service.settings import Settings


def settings() -> Settings:
    value: Settings = current_app.extensions["webhook_service"]["settings"]
    return value


def sessions() -> SessionFactory:
    value: SessionFactory = current_app.extensions["webhook_service"]["sessions"]
    return value


@contextmanager
def request_transaction() -> Iterator[Session]:
    """The request's one transaction: committed when the view's block ends."""
    with transaction(sessions()) as session:
        yield session


@contextmanager
def write_connection() -> Iterator[Connection]:
    """A request that writes with Core statements only: one pooled connection, one
    transaction committed when the block ends, no ORM session."""
    engine: Engine = current_app.extensions["webhook_service"]["engine"]
    with engine.begin() as connection:
        yield connection


@contextmanager
def read_connection() -> Iterator[Connection]:
    """A request that only reads: one pooled connection, no ORM session (rolled back at end)."""
    engine: Engine = current_app.extensions["webhook_service"]["engine"]
    with engine.connect() as connection:
        yield connection


def utcnow() -> datetime:
    clock = current_app.extensions["webhook_service"].get("clock")
    return clock() if clock is not None else clock_utcnow()


def read_body() -> bytes:
    """The whole request body; 413 over `MAX_BODY_BYTES`, chunked or with a Content-Length.

    Werkzeug stops reading a chunked body at the limit and hands back what it read (which
    then fails as truncated JSON, a 400); one more byte from the server's own stream tells a
    body that ends at the limit from one that goes on.
    """
    raw = request.get_data(cache=False)
    limit = request.max_content_length
    chunked = request.content_length is None
    if (
        chunked
        and limit is not None
        and len(raw) >= limit
        and request.environ["wsgi.input"].read(1)
    ):
        raise RequestEntityTooLarge()
    return raw
