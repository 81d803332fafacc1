"""What the submit routes refuse that Cobalt would take and then get wrong in the chart: codes
Cobalt drops from a text note, a SOAP note with no text, blank optional fields; and length
messages that say what was counted."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

import pytest
from flask.testing import FlaskClient

from tests.test_api import (
    EMOJI,
    ENCOUNTER,
    ENCOUNTERS,
    NOTES,
    SOAP,
    assert_field_errors,
    field_errors,
    submit,
)

P = pytest.param
TEXT = "S: cough\nO: clear\nA: viral URI\nP: rest"
SOAP_ONLY = "structured (SOAP) note"
EMPTY_NOTE = "at least one of subjective, objective, assessment and plan"
BLANK = "must not be blank"
OPTIONAL = ["reason", "refill_medication_name", "pharmacy_ehr_id", "caller", "message"]
OPTIONAL += ["template_name"]


def note(value: Any, **extra: Any) -> dict[str, Any]:
    return {"appointment_id": "728948", "note": value, **extra}


# --- ICD-10 and CPT codes only with a structured note -----------------------------------------


@pytest.mark.parametrize(
    ("codes", "expected"),
    [
        P({"icd_10_codes": ["J06.9"]}, {"icd_10_codes": SOAP_ONLY}, id="icd"),
        P({"cpt_codes": ["99213"]}, {"cpt_codes": SOAP_ONLY}, id="cpt"),
        P(
            {"icd_10_codes": ["J06.9"], "cpt_codes": ["99213"]},
            {"icd_10_codes": SOAP_ONLY, "cpt_codes": SOAP_ONLY},
            id="both",
        ),
        P({"cpt_codes": []}, {"cpt_codes": SOAP_ONLY}, id="empty list"),
    ],
)
def test_codes_with_a_text_note_are_422_as_cobalt_would_drop_them(
    client: FlaskClient,
    count_rows: Callable[[str], int],
    codes: dict[str, Any],
    expected: dict[str, str],
) -> None:
    assert_field_errors(client.post(NOTES, json=note(TEXT, **codes)), expected)
    assert count_rows("jobs") == 0


def test_text_note_with_null_codes_is_accepted(client: FlaskClient) -> None:
    submit(client, NOTES, note(TEXT, icd_10_codes=None, cpt_codes=None))


def test_codes_message_says_why(client: FlaskClient) -> None:
    message = field_errors(client.post(NOTES, json=note(TEXT, icd_10_codes=["I10"])))
    assert "ignores" in message["icd_10_codes"]


# --- SOAP: all four sections, at least one with text ------------------------------------------


@pytest.mark.parametrize(
    "sections",
    [
        P(dict.fromkeys(SOAP, ""), id="four empty"),
        P(dict.fromkeys(SOAP, " \n\t"), id="four whitespace"),
        P({**dict.fromkeys(SOAP, ""), "plan": "\u00a0 "}, id="no-break space"),
    ],
)
def test_soap_note_without_any_text_is_422_on_note(
    client: FlaskClient, count_rows: Callable[[str], int], sections: dict[str, str]
) -> None:
    assert_field_errors(client.post(NOTES, json=note(sections)), {"note": EMPTY_NOTE})
    assert count_rows("jobs") == 0


@pytest.mark.parametrize(
    "sections",
    [
        P({**SOAP, "objective": ""}, id="one empty"),
        P({**dict.fromkeys(SOAP, ""), "plan": "Continue lisinopril."}, id="only a plan"),
        P({**dict.fromkeys(SOAP, "  "), "assessment": "Viral URI."}, id="three whitespace"),
    ],
)
def test_soap_note_with_empty_sections_but_some_text_is_accepted(
    client: FlaskClient, sections: dict[str, str]
) -> None:
    job = submit(client, NOTES, note(sections)).json
    assert job["kind"] == "note"


def test_codes_beside_an_empty_soap_note_are_not_blamed(client: FlaskClient) -> None:
    body = note(dict.fromkeys(SOAP, ""), icd_10_codes=["I10"])
    assert_field_errors(client.post(NOTES, json=body), {"note": EMPTY_NOTE})


# --- Optional telephone-encounter strings: left out, or with text ------------------------------


@pytest.mark.parametrize("value", ["", " ", "  \t\n"], ids=["empty", "space", "whitespace"])
@pytest.mark.parametrize("field", OPTIONAL)
def test_blank_optional_encounter_field_is_422_naming_it(
    client: FlaskClient, count_rows: Callable[[str], int], field: str, value: str
) -> None:
    body = {**ENCOUNTER, field: value}
    assert_field_errors(client.post(ENCOUNTERS, json=body), {field: BLANK})
    assert count_rows("jobs") == 0


def test_optional_encounter_fields_with_text_are_accepted(client: FlaskClient) -> None:
    extra = {f: f"{f} text"[:50] for f in OPTIONAL}
    job = submit(client, ENCOUNTERS, {**ENCOUNTER, **extra}).json
    assert job["kind"] == "telephone_encounter"


# --- Length messages say characters ------------------------------------------------------------

IDS = [("appointment_id", NOTES, note(TEXT))] + [
    (field, ENCOUNTERS, ENCOUNTER) for field in ENCOUNTER
]


@pytest.mark.parametrize(("field", "path", "body"), IDS, ids=[i[0] for i in IDS])
@pytest.mark.parametrize("value", ["x" * 201, EMOJI * 100 + "x"], ids=["201 ascii", "100 emoji+1"])
def test_overlong_id_is_422_in_characters(
    client: FlaskClient, field: str, path: str, body: dict[str, Any], value: str
) -> None:
    # Counted in UTF-16 units like every other length here: an emoji is two.
    response = client.post(path, json={**body, field: value})
    assert_field_errors(response, {field: "must be at most 200 characters"})


@pytest.mark.parametrize(("field", "path", "body"), IDS, ids=[i[0] for i in IDS])
def test_id_of_200_characters_is_accepted(
    client: FlaskClient, field: str, path: str, body: dict[str, Any]
) -> None:
    submit(client, path, {**body, field: EMOJI * 99 + "xx"})


def test_support_search_term_and_reason_caps_say_characters(support: FlaskClient) -> None:
    search = support.post("/v1/jobs/search", json={"patient_mrn": "m" * 201})
    assert_field_errors(search, {"patient_mrn": "must be at most 200 characters"})
    retry = support.post(f"/v1/jobs/{uuid.uuid4()}/retry", json={"reason": "r" * 501})
    assert_field_errors(retry, {"reason": "must be at most 500 characters"})


@pytest.mark.parametrize(
    ("query", "expected"),
    [("limit=201", "must be at most 200"), ("limit=0", "must be at least 1")],
)
def test_support_page_size_limits_read_as_sentences(
    support: FlaskClient, query: str, expected: str
) -> None:
    assert_field_errors(support.get(f"/v1/jobs?{query}"), {"limit": expected})
