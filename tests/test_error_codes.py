"""The codes a job carries agree everywhere a front end reads them.

`lifecycle.ERROR_CODES` and `ATTENTION_MESSAGES` are the one list; the README's table, the
OpenAPI description and the reference front end (`demo.js`) are held to it here, and so is
every place in the package that sets a code.
"""

from __future__ import annotations

import ast
import importlib
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from webhook_service.cobalt import REJECTION_CODES, recognise_rejection
from webhook_service.http.openapi import build_spec
from webhook_service.lifecycle import (
    ATTENTION_MESSAGES,
    ERROR_CODES,
    JobStatus,
    outcome_from_event,
)
from webhook_service.models import Job
from webhook_service.services.deadline import NOT_SENT_CODES
from webhook_service.services.support_actions import chart_outcome

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "webhook_service"
README = (ROOT / "README.md").read_text(encoding="utf-8")
REGISTERED = set(ERROR_CODES) | set(ATTENTION_MESSAGES)


def readme_error_code_section() -> str:
    start = README.index("**Error codes.**")
    return README[start : README.index("\n## ", start)]


def readme_error_code_table() -> dict[str, str]:
    """`error.code` → the `error.field` column's first backticked word, row by row."""
    rows = {}
    for line in readme_error_code_section().splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) == 3 and cells[0].startswith("`") and cells[0] != "`error.code`":
            field = re.match(r"`([^`]+)`", cells[1])
            assert field, line
            rows[cells[0].strip("`")] = field.group(1)
    return rows


# --- README ------------------------------------------------------------------------------------


def test_the_readme_table_lists_exactly_the_registered_error_codes() -> None:
    table = readme_error_code_table()
    assert set(table) == set(ERROR_CODES), "README's error-code table and lifecycle.ERROR_CODES"


def test_the_readme_table_names_the_field_each_code_names() -> None:
    table = readme_error_code_table()
    for code, entry in ERROR_CODES.items():
        assert table.get(code) == (entry.field or "null"), code


def test_the_readme_says_unknown_codes_can_appear_and_what_to_do_with_them() -> None:
    section = readme_error_code_section()
    assert "reasons[0].code" in section
    assert "any other code" in section
    assert "`error.message`" in section


def test_the_readme_describes_every_status_the_attention_codes_and_retried_as() -> None:
    for status in JobStatus:
        assert f"`{status}`" in README, status
    for code in ATTENTION_MESSAGES:
        assert f'"attention": {{"code": "{code}"' in README, code
    assert "**`retried_as`**" in README


# --- OpenAPI -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def schemas() -> dict[str, dict]:
    return build_spec()["components"]["schemas"]


def test_openapi_lists_every_registered_error_code_with_its_meaning(schemas) -> None:
    described = schemas["JobError"]["properties"]["code"]["description"]
    for code, entry in ERROR_CODES.items():
        assert f"- `{code}`: {entry.meaning}" in described, code
    assert "treat any code not listed here as failed" in described


def test_openapi_says_which_codes_name_which_field(schemas) -> None:
    described = schemas["JobError"]["properties"]["field"]["description"]
    for code, entry in ERROR_CODES.items():
        named = f"`{entry.field}` with `{code}`"
        assert (named in described) == (entry.field is not None), code


def test_openapi_describes_attention_status_and_retried_as(schemas) -> None:
    described = schemas["Attention"]["properties"]["code"]["description"]
    for code, message in ATTENTION_MESSAGES.items():
        assert f"- `{code}`: {message}" in described, code
    job = schemas["JobOut"]["properties"]
    assert job["status"]["$ref"] == "#/components/schemas/JobStatus"
    assert schemas["JobStatus"]["enum"] == [str(status) for status in JobStatus]
    assert job["status"]["description"]
    assert "resubmitted" in job["retried_as"]["description"]


# --- Every code the service sets is registered -------------------------------------------------


def test_every_code_a_synchronous_refusal_gets_is_registered() -> None:
    assert set(ERROR_CODES) >= REJECTION_CODES
    for message in ("Provider not found", "Unsupported EMR", "Something else went wrong"):
        rejection = recognise_rejection(404, {"success": False, "message": message})
        assert rejection.code in ERROR_CODES
        assert rejection.field == ERROR_CODES[rejection.code].field


def test_every_code_a_job_failed_at_its_deadline_or_from_the_chart_gets_is_registered() -> None:
    assert set(NOT_SENT_CODES.values()) <= set(ERROR_CODES)
    failure = chart_outcome(found_in_chart=False).error
    assert failure is not None
    assert failure["code"] in ERROR_CODES


@pytest.mark.parametrize(
    ("event_type", "data"),
    [
        ("note.failed", {}),
        ("telephone_encounter.failed", {"available_medications": ["Metformin 500 mg"]}),
        ("telephone_encounter.created_partial", {"message": "Refill not added"}),
    ],
)
def test_the_codes_the_service_gives_cobalts_outcomes_are_registered(event_type, data) -> None:
    outcome = outcome_from_event(event_type, data)
    assert outcome is not None
    assert outcome.error is not None
    assert outcome.error["code"] in ERROR_CODES


def test_a_failure_with_cobalts_own_reason_code_carries_it_unregistered() -> None:
    # The one source of codes outside the registry, which the docs tell front ends about.
    reasons = [{"code": "chart_locked", "description": "Chart is locked"}]
    outcome = outcome_from_event("telephone_encounter.failed", {"reasons": reasons})
    assert outcome is not None
    assert outcome.error is not None
    assert outcome.error["code"] == "chart_locked"


def test_every_registered_code_and_field_fits_its_column() -> None:
    columns = Job.__table__.c
    for code, entry in ERROR_CODES.items():
        assert len(code) <= columns.error_code.type.length, code
        assert len(entry.field or "") <= columns.error_field.type.length, code
    for code in ATTENTION_MESSAGES:
        assert len(code) <= columns.attention_code.type.length, code


# Where a code is written in the package: a dict's "code" (a job's `error`), "error_code" or
# "attention_code" key, a `code=` argument or a `Rejection`'s first, a job's `error_code` or
# `attention_code` attribute, a value of a `…_CODES` table, a `return` of a `…_code` function.
CODE_KEYS = {"code", "error_code", "attention_code"}
CODE_ATTRIBUTES = {"error_code", "attention_code"}


def written_codes(tree: ast.AST) -> Iterator[ast.expr]:
    for node in ast.walk(tree):
        if isinstance(node, ast.Dict):
            for key, value in zip(node.keys, node.values, strict=True):
                if isinstance(key, ast.Constant) and key.value in CODE_KEYS:
                    yield value
        elif isinstance(node, ast.Call):
            yield from (kw.value for kw in node.keywords if kw.arg == "code")
            name = node.func.attr if isinstance(node.func, ast.Attribute) else None
            name = node.func.id if isinstance(node.func, ast.Name) else name
            if name == "Rejection" and node.args:
                yield node.args[0]
        elif isinstance(node, ast.Assign):
            for target in node.targets:
                if isinstance(target, ast.Attribute) and target.attr in CODE_ATTRIBUTES:
                    yield node.value
                if (
                    isinstance(target, ast.Name)
                    and target.id.endswith("_CODES")
                    and isinstance(node.value, ast.Dict)
                ):
                    yield from node.value.values
        elif isinstance(node, ast.FunctionDef) and node.name.endswith("_code"):
            yield from (
                ret.value for ret in ast.walk(node) if isinstance(ret, ast.Return) and ret.value
            )


def literal_codes(value: ast.expr, namespace: object) -> Iterator[tuple[str, str]]:
    """The codes an expression in a code position states outright, with how it states them.
    Computed values (a variable, Cobalt's reason code) are left to the tests above."""
    if isinstance(value, ast.Constant) and isinstance(value.value, str):
        yield value.value, repr(value.value)
    elif isinstance(value, ast.Name) and value.id.isupper():
        stated = getattr(namespace, value.id, None)
        if isinstance(stated, str):
            yield stated, value.id
    elif isinstance(value, ast.IfExp):
        yield from literal_codes(value.body, namespace)
        yield from literal_codes(value.orelse, namespace)


class ModuleOnDemand:
    """A module's names, imported only when a constant needs resolving (importing `wsgi`
    would build an app)."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __getattr__(self, attribute: str) -> object:
        return getattr(importlib.import_module(self.name), attribute)


def unregistered_codes(source: str, namespace: object) -> list[str]:
    return [
        how
        for value in written_codes(ast.parse(source))
        for code, how in literal_codes(value, namespace)
        if code not in REGISTERED
    ]


def test_the_code_scan_catches_an_unregistered_code() -> None:
    source = (
        'failure = {"code": "made_up", "message": "m"}\n'
        'job.error_code = "also_made_up"\n'
        "def _error_code():\n    return COBALT_FAILED\n"
    )
    namespace = importlib.import_module("webhook_service.lifecycle")
    assert sorted(unregistered_codes(source, namespace)) == ["'also_made_up'", "'made_up'"]


def test_every_code_written_in_the_package_is_registered() -> None:
    found: dict[str, list[str]] = {}
    stated: set[str] = set()
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(PACKAGE)
        if relative.parts[0] == "sandbox":  # the simulator speaks as Cobalt, with its codes
            continue
        module = ModuleOnDemand(
            ".".join(("webhook_service", *relative.with_suffix("").parts)).removesuffix(".__init__")
        )
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for value in written_codes(tree):
            for code, how in literal_codes(value, module):
                stated.add(code)
                if code not in REGISTERED:
                    found.setdefault(str(relative), []).append(how)
    assert found == {}, "codes set in the package but not in lifecycle.ERROR_CODES"
    # The scan must see the places that set codes, or it proves nothing.
    assert {"not_in_chart", "cobalt_unavailable", "appointment_busy", "no_outcome"} <= stated
    assert {"refill_not_added", "medication_not_found", "cobalt_failed"} <= stated


# --- The reference front end -------------------------------------------------------------------


def test_the_demo_front_end_renders_every_key_a_front_end_switches_on() -> None:
    demo = (PACKAGE / "http" / "static" / "demo.js").read_text(encoding="utf-8")
    for read in (
        "job.status",
        "job.attention.code",
        "job.attention.message",
        "job.error.code",
        "job.error.field",
        "job.error.message",
        "job.retried_as",
    ):
        assert read in demo, read
    terminal = re.search(r"const TERMINAL = new Set\(\[([^\]]*)\]\)", demo)
    assert terminal is not None
    assert set(re.findall(r'"(\w+)"', terminal.group(1))) == {
        str(status) for status in JobStatus if status != JobStatus.PROCESSING
    }
