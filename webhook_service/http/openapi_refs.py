"""References within the OpenAPI document: to a model's schema, a JSON body, a problem answer,
a header. Both parts of the document (`openapi`, `openapi_support`) write them.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from webhook_service.schemas import Problem

# Named types (JobStatus, JobKind) a query model refers to are components like any other.
_REF_TEMPLATE = "#/components/schemas/{model}"


def _ref(model: type[BaseModel]) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{model.__name__}"}


def _json(model: type[BaseModel]) -> dict[str, Any]:
    return {"application/json": {"schema": _ref(model)}}


def _problem(description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/problem+json": {"schema": _ref(Problem)}},
    }


def _header(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/headers/{name}"}
