"""The sandbox's pretend EMR: deterministic providers, staff, patients and appointments.

Every name and MRN here is invented. `DEMO_IDS` is the stable set of ids a demo page can
pre-fill; each one is chosen to produce a known outcome.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from typing import Any, Final


@dataclass(frozen=True)
class Provider:
    ehr_id: str
    first_name: str
    last_name: str
    npi: str
    specialty: str
    # Cobalt lists inactive providers too (`status`), and refuses only ids it does not have.
    status: str = "active"

    def to_api(self) -> dict[str, Any]:
        return {
            "ehr_id": self.ehr_id,
            "name": f"{self.first_name} {self.last_name}",
            "first_name": self.first_name,
            "last_name": self.last_name,
            "npi": self.npi,
            "specialty": self.specialty,
        }


@dataclass(frozen=True)
class StaffMember:
    ehr_id: str
    name: str
    role: str

    def to_api(self) -> dict[str, Any]:
        return {"ehr_id": self.ehr_id, "name": self.name, "role": self.role}


@dataclass(frozen=True)
class Location:
    ehr_id: str
    name: str
    address: str

    def to_api(self) -> dict[str, Any]:
        return {"ehr_id": self.ehr_id, "name": self.name, "address": self.address}


@dataclass(frozen=True)
class Pharmacy:
    ehr_id: str
    name: str
    address: str
    phone: str
    # The EMR's pharmacy step fails for this one, so a refill sent there ends `created_partial`.
    fails_refill_step: bool = False

    def to_api(self) -> dict[str, Any]:
        return {
            "ehr_id": self.ehr_id,
            "name": self.name,
            "address": self.address,
            "phone": self.phone,
        }


@dataclass(frozen=True)
class Medication:
    name: str
    refillable: bool = True


@dataclass(frozen=True)
class Patient:
    mrn: str
    first_name: str
    last_name: str
    date_of_birth: str
    medications: tuple[Medication, ...] = ()
    # The EMR cannot open this chart: every telephone encounter for it fails outright.
    chart_locked: bool = False

    @property
    def refillable_medications(self) -> list[str]:
        return [med.name for med in self.medications if med.refillable]


@dataclass(frozen=True)
class Appointment:
    id: str
    patient: Patient
    provider_id: str
    location_id: str
    start_time: datetime
    duration_minutes: int
    appointment_type: str

    def to_api(self) -> dict[str, Any]:
        end_time = self.start_time + timedelta(minutes=self.duration_minutes)
        return {
            "id": self.id,
            "patient_mrn": self.patient.mrn,
            "patient_name": f"{self.patient.first_name} {self.patient.last_name}",
            "patient_date_of_birth": self.patient.date_of_birth,
            "provider_id": self.provider_id,
            "location_id": self.location_id,
            "start_time": _iso(self.start_time),
            "end_time": _iso(end_time),
            "appointment_type": self.appointment_type,
            "status": "scheduled",
        }


@dataclass(frozen=True)
class SeedData:
    providers: dict[str, Provider]
    staff: dict[str, StaffMember]
    locations: dict[str, Location]
    pharmacies: dict[str, Pharmacy]
    patients: dict[str, Patient]
    appointments: dict[str, Appointment] = field(default_factory=dict)

    def appointments_between(self, start: date, end: date) -> list[Appointment]:
        """Appointments whose start falls on a UTC date in [start, end], earliest first."""
        found = [a for a in self.appointments.values() if start <= a.start_time.date() <= end]
        return sorted(found, key=lambda a: (a.start_time, a.id))


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


PROVIDERS: Final = (
    Provider("PRV-1001", "Amara", "Okafor", "1487650001", "Family Medicine"),
    Provider("PRV-1002", "Daniel", "Reyes", "1487650002", "Internal Medicine"),
    Provider("PRV-1003", "Priya", "Natarajan", "1487650003", "Pediatrics"),
    Provider("PRV-1004", "Helen", "Brooks", "1487650004", "Family Medicine", "inactive"),
)
STAFF: Final = (
    StaffMember("STF-2001", "Jordan Lee", "Medical Assistant"),
    StaffMember("STF-2002", "Sam Whitfield", "Registered Nurse"),
)
LOCATIONS: Final = (
    Location("LOC-3001", "Main Street Clinic", "100 Main St, Springfield"),
    Location("LOC-3002", "Riverside Clinic", "42 River Rd, Springfield"),
)
PHARMACIES: Final = (
    Pharmacy("PHR-4001", "Springfield Community Pharmacy", "12 Elm St", "555-0101"),
    Pharmacy("PHR-4002", "Riverside Drugs", "88 River Rd", "555-0102"),
    Pharmacy("PHR-4003", "Night Owl Pharmacy", "7 Late Ave", "555-0103", fails_refill_step=True),
)

_NOT_REFILLABLE = False
PATIENTS: Final = (
    Patient(
        "MRN100001",
        "Alice",
        "Moreno",
        "1968-04-12",
        (
            Medication("Lisinopril 10 mg tablet"),
            Medication("Metformin 500 mg tablet"),
            Medication("Amoxicillin 500 mg capsule", _NOT_REFILLABLE),
        ),
    ),
    Patient(
        "MRN100002",
        "Bashir",
        "Khan",
        "1975-09-30",
        (Medication("Atorvastatin 20 mg tablet"), Medication("Levothyroxine 50 mcg tablet")),
    ),
    Patient(
        "MRN100003",
        "Carmen",
        "Diaz",
        "1990-01-22",
        (
            Medication("Albuterol HFA 90 mcg inhaler"),
            Medication("Fluticasone 50 mcg nasal spray"),
        ),
    ),
    Patient(
        "MRN100004",
        "Dmitri",
        "Volkov",
        "1959-07-04",
        (Medication("Amlodipine 5 mg tablet"), Medication("Hydrochlorothiazide 25 mg tablet")),
    ),
    Patient(
        "MRN100005",
        "Esther",
        "Park",
        "1983-11-15",
        (Medication("Sertraline 50 mg tablet"), Medication("Omeprazole 20 mg capsule")),
    ),
    Patient(
        "MRN100006",
        "Farah",
        "Haddad",
        "1971-03-08",
        (Medication("Metoprolol succinate 25 mg tablet"), Medication("Lisinopril 20 mg tablet")),
    ),
    Patient(
        "MRN100007",
        "Gus",
        "Lindqvist",
        "2001-06-19",
        (Medication("Ibuprofen 800 mg tablet", _NOT_REFILLABLE),),
    ),
    Patient(
        "MRN100008",
        "Hana",
        "Sato",
        "1964-12-01",
        (Medication("Gabapentin 300 mg capsule"), Medication("Losartan 50 mg tablet")),
    ),
    Patient(
        "MRN100009",
        "Ivan",
        "Petrov",
        "1955-02-27",
        (
            Medication("Insulin glargine 100 units/mL pen"),
            Medication("Metformin 1000 mg tablet"),
        ),
    ),
    Patient(
        "MRN100010",
        "Julia",
        "Brandt",
        "1988-08-23",
        (Medication("Montelukast 10 mg tablet"),),
        chart_locked=True,
    ),
)

# (appointment id, patient index, provider index, location index, day offset, hour, minute)
_APPOINTMENTS: Final = (
    ("728948", 0, 0, 0, 0, 9, 0),
    ("728949", 1, 0, 0, 0, 9, 30),
    ("728950", 2, 1, 1, 0, 10, 0),
    ("728951", 3, 1, 0, 0, 11, 0),
    ("728952", 4, 2, 1, 0, 14, 0),
    ("728953", 5, 0, 0, 1, 9, 0),
    ("728954", 6, 2, 1, 1, 10, 30),
    ("728955", 7, 1, 0, -1, 15, 0),
    ("728956", 8, 0, 1, -1, 16, 0),
    ("728957", 9, 2, 0, 2, 8, 30),
    ("728958", 0, 1, 1, 7, 13, 0),
    ("728959", 3, 0, 0, -7, 11, 30),
)

DEMO_IDS: Final[dict[str, str]] = {
    # POST /v1/notes
    "appointment_id": "728948",  # exists today: ends note.created (or note.uploaded)
    "unknown_appointment_id": "999999",  # no such appointment: ends note.failed
    # A gateway in front of Cobalt answers 504 before Cobalt queues the note: nothing is
    # created, and the service cannot know that (unknown; attention past the deadline).
    "gateway_timeout_appointment_id": "504504",
    # POST /v1/telephone-encounters
    "patient_mrn": "MRN100001",
    "provider_id": "PRV-1001",
    "inactive_provider_id": "PRV-1004",  # listed as inactive: Cobalt still takes it
    # In no list: refused at once by the service's pre-flight check (422 naming
    # provider_id) once the clinic's lists are fetched; before that, by Cobalt (failed).
    "unknown_provider_id": "PRV-9999",
    "location_id": "LOC-3001",
    "assigned_to_id": "STF-2001",
    "pharmacy_ehr_id": "PHR-4001",
    "refill_medication_name": "lisinopril",  # partial, case-insensitive: Lisinopril 10 mg tablet
    "failing_pharmacy_ehr_id": "PHR-4003",  # with a matched refill: created_partial
    "unknown_medication_name": "Warfarin",  # not among the patient's meds: failed + list
    "locked_chart_patient_mrn": "MRN100010",  # any encounter: failed (general failure)
}


def build_seed(today: date) -> SeedData:
    """Build the pretend EMR with appointments placed around `today` (UTC)."""
    appointments: dict[str, Appointment] = {}
    for appt_id, patient, provider, location, offset, hour, minute in _APPOINTMENTS:
        start = datetime.combine(today + timedelta(days=offset), time(hour, minute), tzinfo=UTC)
        appointments[appt_id] = Appointment(
            id=appt_id,
            patient=PATIENTS[patient],
            provider_id=PROVIDERS[provider].ehr_id,
            location_id=LOCATIONS[location].ehr_id,
            start_time=start,
            duration_minutes=30,
            appointment_type="Office Visit",
        )
    return SeedData(
        providers={p.ehr_id: p for p in PROVIDERS},
        staff={s.ehr_id: s for s in STAFF},
        locations={loc.ehr_id: loc for loc in LOCATIONS},
        pharmacies={p.ehr_id: p for p in PHARMACIES},
        patients={p.mrn: p for p in PATIENTS},
        appointments=appointments,
    )
