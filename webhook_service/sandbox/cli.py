"""`webhook-service sandbox`: run the Cobalt simulator on a local port.

Logs are the service's JSON lines on stdout (`webhook_service.logs`), carrying ids, types
and statuses only: never note text, MRNs, names or medications.
"""

from __future__ import annotations

import logging
import signal
from types import FrameType
from typing import Any

import click

from webhook_service.logs import capture_stray_output, configure_logging
from webhook_service.sandbox.app import create_sandbox_app
from webhook_service.sandbox.config import (
    DEFAULT_ACCESS_TOKEN,
    DEFAULT_ACCESS_TOKEN_REFERENCE_ID,
    DEFAULT_CLIENT_ID,
    DEFAULT_CLIENT_SECRET,
    AccessTokenConfig,
    FaultSettings,
    SandboxConfig,
)
from webhook_service.sandbox.replies import get_sandbox
from webhook_service.sandbox.server import make_sandbox_server

logger = logging.getLogger("webhook_service.sandbox")

_RATE = click.FloatRange(0.0, 1.0)
_SECONDS = click.FloatRange(min=0.0)
_FAULT_FIELDS = tuple(FaultSettings.model_fields)


def parse_access_tokens(values: tuple[str, ...]) -> list[AccessTokenConfig]:
    """`TOKEN[=REFERENCE_ID]` options into token configs; none means the default token."""
    if not values:
        return [
            AccessTokenConfig(
                access_token=DEFAULT_ACCESS_TOKEN,
                access_token_reference_id=DEFAULT_ACCESS_TOKEN_REFERENCE_ID,
            )
        ]
    tokens = []
    for index, value in enumerate(values, start=1):
        token, _, reference = value.partition("=")
        default_ref = DEFAULT_ACCESS_TOKEN_REFERENCE_ID + ("" if index == 1 else f"_{index}")
        tokens.append(
            AccessTokenConfig(
                access_token=token, access_token_reference_id=reference or default_ref
            )
        )
    return tokens


def config_from_options(options: dict[str, Any]) -> SandboxConfig:
    """Build the SandboxConfig the command's options describe."""
    faults = FaultSettings(**{name: options[name] for name in _FAULT_FIELDS})
    unsupported = set(options.get("unsupported_emr_tokens") or ())
    tokens = [
        token.model_copy(update={"unsupported_emr": token.access_token in unsupported})
        for token in parse_access_tokens(options["access_tokens"])
    ]
    unknown = unsupported - {token.access_token for token in tokens}
    if unknown:
        raise ValueError(f"--unsupported-emr names no configured access token: {sorted(unknown)}")
    return SandboxConfig(
        client_id=options["client_id"],
        client_secret=options["client_secret"],
        access_tokens=tokens,
        processing_seconds=options["processing_seconds"],
        notes_return_job_id=options["notes_return_job_id"],
        note_success_event=options["note_event"],
        webhook_url=options["webhook_url"],
        webhook_secret=options["webhook_secret"],
        secret_grace_seconds=options["secret_grace_seconds"],
        first_attempt_timeout=options["first_attempt_timeout"],
        retry_delay_seconds=options["retry_delay"],
        retry_timeout=options["retry_timeout"],
        faults=faults,
    )


def _stop(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


@click.command("sandbox")
@click.option("--host", default="127.0.0.1", show_default=True, envvar="SANDBOX_HOST")
@click.option("--port", type=int, default=5050, show_default=True, envvar="SANDBOX_PORT")
@click.option(
    "--processing-seconds",
    type=_SECONDS,
    default=2.0,
    show_default=True,
    envvar="SANDBOX_PROCESSING_SECONDS",
    help="Delay before each outcome webhook.",
)
@click.option(
    "--webhook-url",
    envvar="SANDBOX_WEBHOOK_URL",
    help="Register this URL at start (and after every reset).",
)
@click.option(
    "--webhook-secret",
    envvar="SANDBOX_WEBHOOK_SECRET",
    help="Signing secret for --webhook-url (default: a random whsec_…).",
)
@click.option(
    "--notes-return-job-id/--no-notes-return-job-id",
    default=False,
    envvar="SANDBOX_NOTES_RETURN_JOB_ID",
    help="Add job_id to POST /v1/notes replies.",
)
@click.option(
    "--note-event",
    type=click.Choice(["note.created", "note.uploaded"]),
    default="note.created",
    show_default=True,
    help="Event for a written note.",
)
@click.option(
    "--client-id", default=DEFAULT_CLIENT_ID, show_default=True, envvar="SANDBOX_CLIENT_ID"
)
@click.option(
    "--client-secret",
    default=DEFAULT_CLIENT_SECRET,
    show_default=True,
    envvar="SANDBOX_CLIENT_SECRET",
)
@click.option(
    "--access-token",
    "access_tokens",
    multiple=True,
    metavar="TOKEN[=REFERENCE_ID]",
    envvar="SANDBOX_ACCESS_TOKENS",
    help=f"Repeatable. Default: {DEFAULT_ACCESS_TOKEN}={DEFAULT_ACCESS_TOKEN_REFERENCE_ID}.",
)
@click.option(
    "--secret-grace-seconds",
    type=_SECONDS,
    default=86400.0,
    show_default=True,
    help="How long a rotated-out webhook secret stays valid.",
)
@click.option(
    "--first-attempt-timeout", type=click.FloatRange(min=0.001), default=5.0, show_default=True
)
@click.option("--retry-delay", type=_SECONDS, default=1.0, show_default=True)
@click.option("--retry-timeout", type=click.FloatRange(min=0.001), default=2.0, show_default=True)
@click.option("--duplicate-rate", type=_RATE, default=0.0, help="Deliver events twice.")
@click.option("--drop-rate", type=_RATE, default=0.0, help="Never deliver events.")
@click.option("--reorder-rate", type=_RATE, default=0.0, help="Hold events back.")
@click.option(
    "--delay-seconds",
    type=_SECONDS,
    default=3.0,
    show_default=True,
    help="How long a held-back event waits.",
)
@click.option(
    "--submit-error-rate",
    type=_RATE,
    default=0.0,
    help="Answer submissions 500 without accepting them.",
)
@click.option(
    "--submit-hang-rate", type=_RATE, default=0.0, help="Accept submissions but reply late."
)
@click.option("--hang-seconds", type=_SECONDS, default=30.0, show_default=True)
@click.option(
    "--gateway-error-rate",
    type=_RATE,
    default=0.0,
    help="Answer submissions with a gateway's HTML 502/504 without accepting them.",
)
@click.option(
    "--gateway-error-after-queue-rate",
    type=_RATE,
    default=0.0,
    help="Accept submissions (their webhooks follow) but answer with a gateway's 502/504.",
)
@click.option(
    "--gateway-status",
    type=click.Choice(["502", "504"]),
    default="502",
    show_default=True,
    callback=lambda _ctx, _param, value: int(value),
    help="The status the gateway faults answer with.",
)
@click.option(
    "--success-false-rate",
    type=_RATE,
    default=0.0,
    help='Answer submissions 200 {"success": false} without accepting them.',
)
@click.option(
    "--sync-medication-not-found-rate",
    type=_RATE,
    default=0.0,
    help="Refuse an unknown refill medication at once (404 + available_medications).",
)
@click.option(
    "--foreign-event-rate",
    type=_RATE,
    default=0.0,
    help="With a note, emit an appointment.failed for the same appointment.",
)
@click.option(
    "--unsupported-emr",
    "unsupported_emr_tokens",
    multiple=True,
    metavar="TOKEN",
    help="Repeatable. This access token's EMR is unsupported: encounters answer 422.",
)
@click.option(
    "--reference-lists",
    type=click.Choice(["available", "unavailable", "unreadable"]),
    default="available",
    show_default=True,
    help="GET /v1/providers, /v1/locations, /v1/pharmacies: served, 503, or 200 without a list.",
)
@click.option("--seed", type=int, default=None, help="Seed for the fault RNG.")
@click.option("--log-level", default="INFO", show_default=True, envvar="LOG_LEVEL")
def sandbox_command(**options: Any) -> None:
    """Run the local Cobalt sandbox (a simulator of api.usecobalt.com)."""
    try:
        config = config_from_options(options)
    except ValueError as exc:  # pydantic's ValidationError is a ValueError
        raise click.BadParameter(str(exc)) from exc
    configure_logging(options["log_level"].upper())
    capture_stray_output()
    app = create_sandbox_app(config)
    server = make_sandbox_server(app, options["host"], options["port"])
    signal.signal(signal.SIGTERM, _stop)
    logger.info(
        "sandbox_listening",
        extra={
            "url": f"http://{options['host']}:{server.port}/v1",
            "client_id": config.client_id,
            "access_token_reference_ids": [
                t.access_token_reference_id for t in config.access_tokens
            ],
            "webhook_preregistered": config.webhook_url is not None,
            "processing_seconds": config.processing_seconds,
        },
    )
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
        get_sandbox(app).shutdown(timeout=2.0)
        logger.info("sandbox_stopped")
