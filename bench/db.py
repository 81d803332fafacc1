"""The bench's own PostgreSQL database: create, migrate, seed in bulk SQL, sample, drop.
Everything here runs against a database the bench creates and owns (never the service's);
seeded rows are synthetic, no PHI.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql
from sqlalchemy.engine import make_url

from webhook_service.migrations import upgrade
from webhook_service.phi import PhiKeys
from webhook_service.settings import normalise_database_url

# The clinic every seeded job belongs to; the service and worker get the same token, so
# `default_clinic()` finds it unchanged and never rewrites it.
CLINIC_NAME = "default"
ACCESS_TOKEN = "bench-access-token"  # noqa: S105 - a throwaway value for a throwaway database
REFERENCE_ID = "atr_bench_clinic"
# One seeded job in OPEN_EVERY is still processing (accepted by Cobalt, awaiting its
# webhook); the rest are settled. Webhooks in the bench target the open ones.
OPEN_EVERY = 50
# Job n is a telephone encounter when n = 1 mod 4 (one in four; support's MRN searches draw
# these), and also when n = OPEN_EVERY mod OPEN_ENCOUNTER_EVERY: a quarter of the open jobs,
# which the first rule never reaches (open jobs are even), so both kinds are in flight.
ENCOUNTER_EVERY = 4
OPEN_ENCOUNTER_EVERY = 4 * OPEN_EVERY
# Settled jobs older than this are seeded already purged (the service's default retention).
RETENTION_DAYS = 30
BASELINE_ROWS = 10_000


def is_telephone_encounter(n: int) -> bool:
    """Job n's kind as `seed_jobs` makes it (the bench's webhooks must name the right event)."""
    return n % ENCOUNTER_EVERY == 1 or n % OPEN_ENCOUNTER_EVERY == OPEN_EVERY


@dataclass(frozen=True)
class BenchDatabase:
    """A database the bench created on a server, and the URLs to reach it."""

    server_url: str  # libpq form, pointing at a maintenance database (e.g. /postgres)
    name: str

    @property
    def libpq_url(self) -> str:
        url = make_url(normalise_database_url(self.server_url))
        return url.set(drivername="postgresql", database=self.name).render_as_string(
            hide_password=False
        )

    @property
    def service_url(self) -> str:
        """The `DATABASE_URL` the service, worker and baselines get."""
        return normalise_database_url(self.libpq_url)


def _server_libpq(server_url: str) -> str:
    url = make_url(normalise_database_url(server_url))
    return url.set(drivername="postgresql").render_as_string(hide_password=False)


def create_database(server_url: str, name: str, service_env: Mapping[str, str]) -> BenchDatabase:
    """Drop any leftover bench database of this name, create it afresh and migrate it.

    Migrations read the service's settings (PHI keys) from the environment, so they run
    with the same variables the service gets.
    """
    with psycopg.connect(_server_libpq(server_url), autocommit=True, connect_timeout=5) as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    database = BenchDatabase(server_url, name)
    with connect(database) as conn:
        # hmac() for the seed's search hashes; the service itself does not need it.
        conn.execute("CREATE EXTENSION IF NOT EXISTS pgcrypto")
    with _environment(service_env):
        upgrade(database.service_url)
    return database


@contextmanager
def _environment(values: Mapping[str, str]) -> Iterator[None]:
    saved = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, old in saved.items():
            if old is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = old


def drop_database(database: BenchDatabase) -> None:
    with psycopg.connect(
        _server_libpq(database.server_url), autocommit=True, connect_timeout=5
    ) as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(database.name))
        )


def connect(database: BenchDatabase) -> psycopg.Connection:
    return psycopg.connect(database.libpq_url, autocommit=True, connect_timeout=5)


def seed_clinic(conn: psycopg.Connection, keys: PhiKeys) -> int:
    """The one clinic the bench's jobs belong to; returns its id.

    Its Cobalt access token is stored encrypted (`access_token_enc`, migration 0005) or,
    on a schema from before that, in plain text.
    """
    columns = {
        row[0]
        for row in conn.execute(
            "SELECT column_name FROM information_schema.columns WHERE table_name = 'clinics'"
        )
    }
    encrypted = "access_token_enc" in columns
    token_column = "access_token_enc" if encrypted else "access_token"
    token = keys.encrypt(ACCESS_TOKEN.encode("utf-8")) if encrypted else ACCESS_TOKEN
    query = sql.SQL(
        """
        INSERT INTO clinics (name, {token_column}, access_token_reference_id, needs_relink,
                             created_at, updated_at)
        VALUES (%s, %s, %s, false, now(), now())
        RETURNING id
        """
    ).format(token_column=sql.Identifier(token_column))
    row = conn.execute(query, (CLINIC_NAME, token, REFERENCE_ID)).fetchone()
    assert row is not None
    return int(row[0])


def seed_reference_lists(conn: psycopg.Connection, clinic_id: int, sizes: Mapping[str, int]) -> int:
    """The clinic's copy of Cobalt's lists, as the worker would have fetched it: the sandbox's
    demo ids (the ones the encounter scenario sends) among `sizes[kind]` entries each."""
    demo = {"providers": "PRV-1001", "locations": "LOC-3001", "pharmacies": "PHR-4001"}
    total = 0
    for kind, size in sizes.items():
        conn.execute(
            "DELETE FROM reference_items WHERE clinic_id = %s AND kind = %s", (clinic_id, kind)
        )
        conn.execute(
            "INSERT INTO reference_items (clinic_id, kind, ehr_id, name, status) "
            "SELECT %s, %s, CASE WHEN n = 1 THEN %s::text ELSE %s::text || n END, "
            "'Bench ' || n, 'active' "
            "FROM generate_series(1, %s) AS n",
            (clinic_id, kind, demo[kind], f"{kind[:3].upper()}-B", size),
        )
        conn.execute(
            "INSERT INTO reference_lists (clinic_id, kind, fetched_at, attempted_at, item_count) "
            "VALUES (%s, %s, now(), now(), %s) ON CONFLICT (clinic_id, kind) DO UPDATE "
            "SET fetched_at = now(), attempted_at = now(), item_count = excluded.item_count",
            (clinic_id, kind, size),
        )
        total += size
    conn.execute("ANALYZE reference_items")
    return total


@dataclass(frozen=True)
class SeedValues:
    """Encrypted PHI templates (valid Fernet tokens under the bench's keys) and the search key.

    Fernet tokens cannot be made in SQL, so each kind of value is encrypted once here and the
    same token is stored in every row that needs one: decrypting it costs the service the
    same as decrypting a row's own. Hashes are per row, made by pgcrypto's `hmac()` exactly as
    `phi.search_hash` makes them.
    """

    search_key: str
    note_body: bytes
    encounter_body: bytes
    outcome_full: bytes
    outcome_failed: bytes
    outcome_purged: bytes
    error_message: bytes

    @classmethod
    def make(cls, encryption_keys: tuple[str, ...], search_key: str) -> SeedValues:
        keys = PhiKeys(encryption_keys, search_key)

        def enc(value: Any) -> bytes:
            data = value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))
            return keys.encrypt(data.encode("utf-8"))

        return cls(
            search_key=search_key,
            note_body=enc({"appointment_id": "appt-bench", "note": "Synthetic bench note."}),
            encounter_body=enc(
                {
                    "patient_mrn": "MRN-BENCH",
                    "provider_id": "prov-1",
                    "location_id": "loc-1",
                    "assigned_to_id": "staff-1",
                    "reason": "Refill",
                }
            ),
            outcome_full=enc({"event": "note.created", "message": "Note created"}),
            outcome_failed=enc(
                {"event": "note.failed", "message": "Appointment not found in the EMR"}
            ),
            outcome_purged=enc({"event": "note.created"}),
            error_message=enc("Appointment not found in the EMR"),
        )


def seed_jobs(
    conn: psycopg.Connection,
    first: int,
    last: int,
    *,
    clinic_id: int,
    client_id: int,
    values: SeedValues,
    pending: bool = False,
) -> float:
    """Insert jobs numbered first..last in one statement; return the seconds it took.

    The only place the bench writes `jobs`: it names every column it sets and leaves the
    rest (including nullable columns added by later migrations) to their defaults.
    Job n has Cobalt job id `cj_n`. With `pending=False`, one job in OPEN_EVERY is open
    (processing, accepted by Cobalt, created seconds ago) and the rest are settled (one in
    twenty failed); one in four is a telephone encounter, and so is a quarter of the open
    jobs (`is_telephone_encounter`); created times go back 30 s per job
    (1M jobs is about a year), and jobs settled more than RETENTION_DAYS ago are already
    purged, as the worker leaves them. With `pending=True` every job is a note waiting for
    the worker, each for its own appointment so none waits behind another.
    """
    started = time.perf_counter()
    conn.execute(
        """
        INSERT INTO jobs (
            id, kind, status, clinic_id, client_id, request_body_enc, request_hash,
            appointment_hash, patient_mrn_hash, submission_state, submit_attempts,
            next_attempt_at, cobalt_job_id, cobalt_telephone_encounter_id, outcome_enc,
            error_code, error_message_enc, flagged, purged_at, created_at, updated_at,
            finished_at
        )
        SELECT
            gen_random_uuid(),
            t.kind,
            t.status,
            %(clinic_id)s,
            %(client_id)s,
            CASE WHEN t.purged THEN NULL
                 WHEN t.kind = 'note' THEN %(note_body)s
                 ELSE %(encounter_body)s END,
            encode(sha256(convert_to('bench-job-' || n, 'UTF8')), 'hex'),
            CASE WHEN t.kind = 'note'
                THEN encode(hmac('appt-' || n, %(search_key)s, 'sha256'), 'hex') END,
            CASE WHEN t.kind = 'telephone_encounter'
                THEN encode(hmac('MRN' || n, %(search_key)s, 'sha256'), 'hex') END,
            t.submission_state,
            CASE WHEN %(pending)s THEN 0 ELSE 1 END,
            CASE WHEN %(pending)s THEN now() END,
            CASE WHEN NOT %(pending)s THEN 'cj_' || n END,
            CASE WHEN t.kind = 'telephone_encounter' THEN 'te_' || n END,
            CASE WHEN t.status = 'processing' THEN NULL
                 WHEN t.purged THEN %(outcome_purged)s
                 WHEN t.status = 'failed' THEN %(outcome_failed)s
                 ELSE %(outcome_full)s END,
            CASE WHEN t.status = 'failed' THEN 'cobalt_failed' END,
            CASE WHEN t.status = 'failed' AND NOT t.purged THEN %(error_message)s END,
            false,
            CASE WHEN t.purged THEN t.finished_at + %(retention)s * interval '1 day' END,
            t.created_at,
            CASE WHEN t.purged THEN t.finished_at + %(retention)s * interval '1 day'
                 ELSE coalesce(t.finished_at, t.created_at) END,
            t.finished_at
        FROM generate_series(%(first)s::bigint, %(last)s::bigint) AS n
        CROSS JOIN LATERAL (
            SELECT
                CASE WHEN NOT %(pending)s AND (n %% %(encounter_every)s = 1
                        OR n %% %(open_encounter_every)s = %(open_every)s)
                    THEN 'telephone_encounter' ELSE 'note' END AS kind,
                CASE WHEN %(pending)s OR n %% %(open_every)s = 0 THEN 'processing'
                     WHEN n %% 20 = 3 THEN 'failed'
                     ELSE 'completed' END AS status,
                CASE WHEN %(pending)s THEN 'pending' ELSE 'accepted' END AS submission_state,
                CASE WHEN %(pending)s OR n %% %(open_every)s = 0
                    THEN now() - (n %% 60) * interval '1 second'
                    ELSE now() - n * interval '30 seconds' END AS created_at
        ) AS c
        CROSS JOIN LATERAL (
            SELECT c.*,
                CASE WHEN c.status <> 'processing'
                    THEN c.created_at + interval '40 seconds' END AS finished_at,
                c.status <> 'processing'
                    AND c.created_at < now() - %(retention)s * interval '1 day' AS purged
        ) AS t
        """,
        {
            "first": first,
            "last": last,
            "clinic_id": clinic_id,
            "client_id": client_id,
            "pending": pending,
            "open_every": OPEN_EVERY,
            "encounter_every": ENCOUNTER_EVERY,
            "open_encounter_every": OPEN_ENCOUNTER_EVERY,
            "retention": RETENTION_DAYS,
            "search_key": values.search_key,
            "note_body": values.note_body,
            "encounter_body": values.encounter_body,
            "outcome_full": values.outcome_full,
            "outcome_failed": values.outcome_failed,
            "outcome_purged": values.outcome_purged,
            "error_message": values.error_message,
        },
    )
    return time.perf_counter() - started


def analyze(conn: psycopg.Connection) -> None:
    """Fresh planner statistics and visibility map after a bulk load, as autovacuum would."""
    conn.execute("VACUUM (ANALYZE) jobs")
    conn.execute("VACUUM (ANALYZE) bench_items")


def checkpoint(conn: psycopg.Connection) -> None:
    """Flush dirty pages now, so a checkpoint does not land in the middle of a measurement."""
    conn.execute("CHECKPOINT")


def settle_open_jobs(conn: psycopg.Connection) -> int:
    """Close every open job (before the worker phase), so only the worker's batch is due."""
    cursor = conn.execute(
        """
        UPDATE jobs SET status = 'completed', submission_state = 'accepted',
               next_attempt_at = NULL, inflight_key = NULL, finished_at = now(),
               updated_at = now()
        WHERE status = 'processing'
        """
    )
    return cursor.rowcount


def reopen_jobs(conn: psycopg.Connection, numbers: Sequence[int]) -> int:
    """Put the seed's open jobs back as seeded: processing, no outcome, unflagged, untouched.

    The service's webhook scenario settles them; the webhook floor, measured after it, must
    find what the service found. Only rows that changed are written, then vacuumed, so the
    floor does not wade through the dead versions the service never saw.
    """
    cursor = conn.execute(
        """
        UPDATE jobs SET status = 'processing', outcome_enc = NULL, error_code = NULL,
               error_message_enc = NULL, finished_at = NULL, flagged = false,
               next_attempt_at = NULL, claimed_until = NULL, inflight_key = NULL,
               updated_at = created_at
        WHERE cobalt_job_id = ANY(%s)
          AND (status <> 'processing' OR flagged OR updated_at <> created_at)
        """,
        ([f"cj_{n}" for n in numbers],),
    )
    conn.execute("VACUUM jobs")
    return cursor.rowcount


def client_id(conn: psycopg.Connection, name: str) -> int:
    row = conn.execute("SELECT id FROM api_clients WHERE name = %s", (name,)).fetchone()
    if row is None:
        raise RuntimeError(f"API client {name!r} was not created")
    return int(row[0])


def count_pending(conn: psycopg.Connection) -> int:
    row = conn.execute("SELECT count(*) FROM jobs WHERE submission_state = 'pending'").fetchone()
    assert row is not None
    return int(row[0])


def count_jobs(conn: psycopg.Connection) -> int:
    row = conn.execute("SELECT count(*) FROM jobs").fetchone()
    assert row is not None
    return int(row[0])


def sample_job_ids(conn: psycopg.Connection, limit: int) -> list[str]:
    """Up to `limit` job ids drawn uniformly from the whole table."""
    rows = conn.execute("SELECT id::text FROM jobs ORDER BY random() LIMIT %s", (limit,)).fetchall()
    return [row[0] for row in rows]


def create_baseline_tables(conn: psycopg.Connection, rows: int = BASELINE_ROWS) -> None:
    """The baselines' own small tables: items to read and update, deliveries to insert."""
    conn.execute(
        """
        CREATE TABLE bench_items (
            id uuid PRIMARY KEY,
            n integer NOT NULL UNIQUE,
            status varchar(16) NOT NULL,
            cobalt_job_id varchar(200),
            outcome jsonb,
            hits integer NOT NULL DEFAULT 0,
            created_at timestamptz NOT NULL,
            updated_at timestamptz NOT NULL
        )
        """
    )
    conn.execute(
        """
        CREATE TABLE bench_deliveries (
            id bigserial PRIMARY KEY,
            dedup_key varchar(300) NOT NULL UNIQUE,
            raw_body bytea NOT NULL,
            received_at timestamptz NOT NULL
        )
        """
    )
    conn.execute(
        """
        INSERT INTO bench_items (id, n, status, cobalt_job_id, outcome, created_at, updated_at)
        SELECT gen_random_uuid(), n, 'completed', 'cj_' || n, '{"event": "note.created"}',
               now() - n * interval '30 seconds', now() - n * interval '30 seconds'
        FROM generate_series(1, %s) AS n
        """,
        (rows,),
    )


def sample_item_ids(conn: psycopg.Connection, limit: int) -> list[str]:
    rows = conn.execute(
        "SELECT id::text FROM bench_items ORDER BY random() LIMIT %s", (limit,)
    ).fetchall()
    return [row[0] for row in rows]


def postmaster_pid(conn: psycopg.Connection) -> int | None:
    """The PostgreSQL server's main pid, when it runs on this machine and we may read it."""
    try:
        row = conn.execute("SHOW data_directory").fetchone()
        assert row is not None
        with open(os.path.join(row[0], "postmaster.pid")) as pidfile:
            pid = int(pidfile.readline().strip())
    except (psycopg.Error, OSError, ValueError):
        return None
    return pid if os.path.exists(f"/proc/{pid}") else None


def table_sizes(conn: psycopg.Connection) -> dict[str, int]:
    """Bytes on disk (with indexes) of the tables that grow."""
    names = ("jobs", "job_events", "webhook_deliveries", "bench_items", "bench_deliveries")
    return {
        name: int(
            conn.execute("SELECT pg_total_relation_size(%s::regclass)", (name,)).fetchone()[0]  # type: ignore[index]
        )
        for name in names
    }
