"""What every console view shares: rendering a page, reading a form, naming who acts."""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import datetime
from typing import Any, TypeVar

from flask import Response, g, render_template, request
from pydantic import BaseModel, ValidationError

from webhook_service import services
from webhook_service.http.console import words
from webhook_service.schemas import field_errors

Model = TypeVar("Model", bound=BaseModel)
FieldProblems = list[tuple[str, str]]


def page(template: str, *, status: int = 200, **context: Any) -> Response:
    """Render `console/<template>` with the signed-in person and the shared helpers."""
    html = render_template(
        f"console/{template}",
        staff=g.get("staff"),
        section=(request.endpoint or "").removeprefix("console."),
        when=when,
        pretty=pretty,
        words=words,
        **context,
    )
    return Response(html, status=status, mimetype="text/html")


def staff() -> services.Staff:
    """Who is signed in (the guard has checked there is someone)."""
    signed_in: services.Staff = g.staff
    return signed_in


def values(source: Mapping[str, str]) -> dict[str, str]:
    """A form's or query's filled-in fields (an HTML form sends the empty ones too)."""
    return {
        name: value.strip()
        for name, value in source.items()
        if name != "csrf_token" and value.strip()
    }


def validated(model: type[Model], given: Mapping[str, Any]) -> tuple[Model | None, FieldProblems]:
    """The model, or None and each problem as (field, message)."""
    try:
        return model.model_validate(dict(given)), []
    except ValidationError as exc:
        return None, [(e.field, e.message) for e in field_errors(exc)]


def sentence(problems: FieldProblems) -> str:
    return "; ".join(f"{field.replace('_', ' ')} {message}" for field, message in problems) + "."


def when(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S UTC") if value is not None else "—"


def pretty(value: Any) -> str:
    return json.dumps(value, indent=2, ensure_ascii=False, sort_keys=True, default=str)
