"""Typed settings, read from the environment once when the app or worker starts.

Every variable is listed with a comment in `config/example.env`. Tests build `Settings(...)`
directly instead of touching the environment.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from webhook_service.phi import DEVELOPMENT_KEY, PhiKeys

DEFAULT_SQLITE_PATH = Path("instance") / "webhook_service.sqlite3"

CommaList = Annotated[tuple[str, ...], NoDecode]

# The SECRET_KEY committed in config/dev.env (a test keeps the two equal): anyone can read
# it, so production refuses it, as it refuses a key too short to resist guessing.
DEVELOPMENT_SECRET_KEY = "development-only-not-secret"  # noqa: S105 - public, so production refuses it
MIN_SECRET_KEY_BYTES = 32
# Each web process trusts a checked bearer token this long at most, then looks it up again:
# the longest a revoked token can keep working anywhere.
MAX_AUTH_CACHE_SECONDS = 60.0


# Heroku sends SIGKILL this long after SIGTERM (any process: web, worker, release).
PLATFORM_STOP_SECONDS = 30.0
# What a worker needs after its shutdown grace: record the calls it gave up on as `unknown`,
# close its pool and exit. SHUTDOWN_GRACE_SECONDS is at most the rest of the 30 s.
SHUTDOWN_MARGIN_SECONDS = 5.0


def normalise_database_url(url: str) -> str:
    """Accept Heroku's `postgres://` and plain `postgresql://`; always use psycopg 3."""
    for prefix in ("postgres://", "postgresql://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url


def _safe_cobalt_url(url: str) -> bool:
    """https, or http to this machine (a local sandbox, as the bench runs in production)."""
    parts = urlsplit(url)
    return parts.scheme == "https" or (
        parts.scheme == "http" and parts.hostname in ("127.0.0.1", "localhost", "::1")
    )


class Settings(BaseSettings):
    model_config = SettingsConfigDict(extra="ignore", frozen=True)

    environment: Literal["development", "production", "test"] = Field(
        default="production", validation_alias="WEBHOOK_SERVICE_ENV"
    )
    database_url: str = Field(default="", validation_alias="DATABASE_URL")

    cobalt_api_url: str = Field(
        default="https://api.usecobalt.com/v1", validation_alias="COBALT_API_URL"
    )
    cobalt_client_id: str = Field(default="", validation_alias="COBALT_CLIENT_ID")
    cobalt_client_secret: str = Field(default="", validation_alias="COBALT_CLIENT_SECRET")
    cobalt_access_token: str = Field(default="", validation_alias="COBALT_ACCESS_TOKEN")
    cobalt_webhook_secrets: CommaList = Field(default=(), validation_alias="COBALT_WEBHOOK_SECRETS")
    # Cobalt answers POSTs at once; a reply slower than this is treated as "may have been
    # accepted" (submission unknown), never as a failure to be retried blindly.
    cobalt_connect_timeout_seconds: float = Field(
        default=5.0, validation_alias="COBALT_CONNECT_TIMEOUT_SECONDS"
    )
    cobalt_read_timeout_seconds: float = Field(
        default=20.0, validation_alias="COBALT_READ_TIMEOUT_SECONDS"
    )

    secret_key: str = Field(default="", validation_alias="SECRET_KEY")
    phi_encryption_keys: CommaList = Field(default=(), validation_alias="PHI_ENCRYPTION_KEYS")
    # Keys the MRN/appointment search hashes. Never rotate it without re-hashing every row.
    phi_search_key: str = Field(default="", validation_alias="PHI_SEARCH_KEY")
    phi_retention_days: int = Field(default=30, validation_alias="PHI_RETENTION_DAYS")
    cors_allowed_origins: CommaList = Field(default=(), validation_alias="CORS_ALLOWED_ORIGINS")
    log_level: str = Field(default="INFO", validation_alias="LOG_LEVEL")
    # Optional error tracking (webhook_service/error_tracking.py): empty, nothing is sent.
    sentry_dsn: str = Field(default="", validation_alias="SENTRY_DSN")

    max_body_bytes: int = Field(default=256 * 1024, validation_alias="MAX_BODY_BYTES")
    note_expected_seconds: int = Field(default=180, validation_alias="NOTE_EXPECTED_SECONDS")
    encounter_expected_seconds: int = Field(
        default=120, validation_alias="ENCOUNTER_EXPECTED_SECONDS"
    )
    job_deadline_seconds: int = Field(default=1800, validation_alias="JOB_DEADLINE_SECONDS")
    submit_max_attempts: int = Field(default=8, validation_alias="SUBMIT_MAX_ATTEMPTS")
    retry_base_seconds: float = Field(default=2.0, validation_alias="RETRY_BASE_SECONDS")
    retry_cap_seconds: float = Field(default=300.0, validation_alias="RETRY_CAP_SECONDS")
    claim_ttl_seconds: int = Field(default=60, validation_alias="CLAIM_TTL_SECONDS")
    # After SIGTERM, how long a worker still waits for Cobalt to answer the calls in hand;
    # then it records each one `unknown` (never resent: reconciled against Cobalt's log) and
    # exits, inside the platform's 30 s whatever COBALT_READ_TIMEOUT_SECONDS is.
    shutdown_grace_seconds: float = Field(
        default=20.0,
        gt=0.0,
        le=PLATFORM_STOP_SECONDS - SHUTDOWN_MARGIN_SECONDS,
        validation_alias="SHUTDOWN_GRACE_SECONDS",
    )
    worker_poll_seconds: float = Field(default=1.0, validation_alias="WORKER_POLL_SECONDS")
    # Threads per worker process; each makes one Cobalt call at a time, so a 200 ms Cobalt
    # caps a process at WORKER_CONCURRENCY / 0.2 s submissions per second. The threads
    # share WORKER_DATABASE_POOL_SIZE connections.
    worker_concurrency: int = Field(default=16, validation_alias="WORKER_CONCURRENCY")
    # Processes the worker command runs, each with WORKER_CONCURRENCY threads: one process
    # is bound by its interpreter lock, so a dyno with more cores takes one per core.
    worker_processes: int = Field(default=1, ge=1, le=64, validation_alias="WORKER_PROCESSES")
    # How long a web process trusts a bearer token it has checked: a revoked token stops
    # working in every process within this many seconds (0: look every token up on every
    # request). At most MAX_AUTH_CACHE_SECONDS (`require_web_secrets`).
    auth_cache_seconds: float = Field(default=5.0, validation_alias="AUTH_CACHE_SECONDS")
    poll_retry_after_seconds: int = Field(default=2, validation_alias="POLL_RETRY_AFTER_SECONDS")
    # Abuse limits (issue 18). Submissions one front-end client may make per minute, counted
    # in the database so the limit holds across web processes; 0: no limit.
    rate_limit_submissions_per_minute: int = Field(
        default=600, ge=0, validation_alias="RATE_LIMIT_SUBMISSIONS_PER_MINUTE"
    )
    # Jobs waiting to be sent at which new submissions get 503 instead of queueing; 0: no cap.
    backlog_max_jobs: int = Field(default=5000, ge=0, validation_alias="BACKLOG_MAX_JOBS")
    # Console sign-in attempts one address may make in a quarter of an hour without one
    # succeeding; then 429 until the quarter ends. 0: no throttle.
    sign_in_max_failures: int = Field(default=10, ge=0, validation_alias="SIGN_IN_MAX_FAILURES")
    # The connection budget (README, "Connection budget"): the most PostgreSQL connections
    # one web process, and one worker process, ever hold. Threads share them: a request's or
    # a job step's database work is short, and no thread holds one while it waits on Cobalt.
    # The defaults keep the default formation within a 20-connection plan.
    database_pool_size: int = Field(default=3, ge=1, le=100, validation_alias="DATABASE_POOL_SIZE")
    # Requests a web process works on at once (http/slots.py): as many as gthread's threads,
    # whatever the worker class; held long polls and streams wait without one.
    request_slots: int = Field(default=4, ge=1, le=1000, validation_alias="GUNICORN_THREADS")
    worker_database_pool_size: int = Field(
        default=4, ge=1, le=100, validation_alias="WORKER_DATABASE_POOL_SIZE"
    )

    # Pre-flight (issue 21): how old each clinic's copy of Cobalt's provider, location and
    # pharmacy lists may grow before the worker fetches it again. A miss refreshes it at
    # once anyway, so this bounds how long a removed id is still offered to pickers.
    reference_ttl_seconds: int = Field(
        default=900, ge=10, le=7 * 24 * 3600, validation_alias="REFERENCE_TTL_SECONDS"
    )
    # Check a telephone encounter's provider, location and pharmacy ids against that copy
    # before storing it (422 naming the field when the EMR lacks one); false: Cobalt decides.
    preflight_checks: bool = Field(default=True, validation_alias="PREFLIGHT_CHECKS")
    # Callbacks to front ends (issue 20). Private, loopback and link-local targets (and plain
    # http) are refused unless this is set: for development and tests, never production.
    callback_allow_private_networks: bool = Field(
        default=False, validation_alias="CALLBACK_ALLOW_PRIVATE_NETWORKS"
    )
    # Threads per worker process that send callbacks (besides WORKER_CONCURRENCY's, which call
    # Cobalt): a receiver slower than its timeout holds one of them for that long.
    callback_concurrency: int = Field(
        default=4, ge=1, le=64, validation_alias="CALLBACK_CONCURRENCY"
    )
    # Each attempt is bounded: connecting, each read, and the whole answer (see
    # callback_client.py), so a hanging receiver never holds a worker thread for long.
    callback_connect_timeout_seconds: float = Field(
        default=3.0, gt=0, validation_alias="CALLBACK_CONNECT_TIMEOUT_SECONDS"
    )
    callback_timeout_seconds: float = Field(
        default=10.0, gt=0, validation_alias="CALLBACK_TIMEOUT_SECONDS"
    )
    # Shrinks the callbacks' three-day retry schedule (and the days before an endpoint is
    # disabled) by this factor: for reliability runs, which cannot wait days. 1 in production.
    callback_retry_scale: float = Field(
        default=1.0, gt=0, le=1, validation_alias="CALLBACK_RETRY_SCALE"
    )

    @field_validator(
        "cobalt_webhook_secrets", "phi_encryption_keys", "cors_allowed_origins", mode="before"
    )
    @classmethod
    def _split_commas(cls, value: object) -> object:
        if isinstance(value, str):
            return tuple(part.strip() for part in value.split(",") if part.strip())
        return value

    @field_validator("database_url")
    @classmethod
    def _normalise_url(cls, value: str) -> str:
        return normalise_database_url(value.strip())

    @field_validator("cobalt_api_url")
    @classmethod
    def _strip_slash(cls, value: str) -> str:
        return value.rstrip("/")

    @field_validator("log_level")
    @classmethod
    def _upper_level(cls, value: str) -> str:
        return value.upper()

    def phi_keys(self) -> PhiKeys:
        """The PHI keys; outside production, a development key stands in for missing ones."""
        if self.phi_encryption_keys and self.phi_search_key:
            return PhiKeys(self.phi_encryption_keys, self.phi_search_key)
        if self.environment == "production":
            raise RuntimeError(
                "PHI_ENCRYPTION_KEYS and PHI_SEARCH_KEY must be set in production: each a "
                "random secret of at least 32 characters (`openssl rand -hex 32`, or "
                "`webhook-service keys generate`)"
            )
        return PhiKeys(
            self.phi_encryption_keys or (DEVELOPMENT_KEY,),
            self.phi_search_key or DEVELOPMENT_KEY,
        )

    def require_web_secrets(self) -> None:
        """Fail fast when the web process would run with settings it must refuse: in
        production without its secrets; anywhere with a revocation that could take long."""
        if not 0 <= self.auth_cache_seconds <= MAX_AUTH_CACHE_SECONDS:
            raise RuntimeError(
                f"AUTH_CACHE_SECONDS must be between 0 and {MAX_AUTH_CACHE_SECONDS:g}: a "
                "revoked bearer token keeps working that long in each web process"
            )
        if self.environment != "production":
            return
        if not self.secret_key:
            raise RuntimeError(
                "SECRET_KEY must be set in production (set WEBHOOK_SERVICE_ENV=development "
                "for local runs)"
            )
        if self.secret_key == DEVELOPMENT_SECRET_KEY:
            raise RuntimeError(
                "SECRET_KEY is the development one committed in config/dev.env: set a random "
                "secret in production (`openssl rand -hex 32`)"
            )
        if len(self.secret_key.encode("utf-8")) < MIN_SECRET_KEY_BYTES:
            raise RuntimeError(
                f"SECRET_KEY must be at least {MIN_SECRET_KEY_BYTES} bytes in production "
                f"(`openssl rand -hex 32`); it has {len(self.secret_key.encode('utf-8'))}"
            )

    def require_worker_settings(self) -> None:
        """Fail fast when the worker could never reach Cobalt, or would reach it unsafely."""
        missing = [
            name
            for name, value in (
                ("COBALT_CLIENT_ID", self.cobalt_client_id),
                ("COBALT_CLIENT_SECRET", self.cobalt_client_secret),
            )
            if not value
        ]
        if missing:
            raise RuntimeError(
                f"{' and '.join(missing)} must be set: the worker cannot call Cobalt without "
                "its credentials (the dashboard's API keys)"
            )
        if self.environment == "production" and not _safe_cobalt_url(self.cobalt_api_url):
            raise RuntimeError(
                "COBALT_API_URL must be https in production (plain http only to this machine): "
                "the worker sends the client secret and the clinics' access tokens to it"
            )

    @property
    def effective_database_url(self) -> str:
        """The configured URL, or the embedded SQLite file when none is set."""
        if self.database_url:
            return self.database_url
        return f"sqlite:///{DEFAULT_SQLITE_PATH.resolve()}"

    @property
    def is_sqlite(self) -> bool:
        return self.effective_database_url.startswith("sqlite")

    @property
    def reference_ttl(self) -> timedelta:
        return timedelta(seconds=self.reference_ttl_seconds)

    @property
    def job_deadline(self) -> timedelta:
        return timedelta(seconds=self.job_deadline_seconds)

    def expected_duration(self, kind: str) -> timedelta:
        seconds = self.note_expected_seconds if kind == "note" else self.encounter_expected_seconds
        return timedelta(seconds=seconds)
