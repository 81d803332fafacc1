"""The worker as a process: its threads, signals, shutdown grace, and forked siblings.

`worker.py` is what one thread does (claim → call Cobalt → record); this module runs
`WORKER_CONCURRENCY` of them in a process, and `CALLBACK_CONCURRENCY` callback threads
(`callback_sender.py`) rung by a listener on PostgreSQL; stops them inside the platform's
30 s; and with `WORKER_PROCESSES` above 1 forks and supervises that many processes.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
import time
from types import FrameType

from webhook_service import phi, services
from webhook_service.callback_sender import CallbackSender
from webhook_service.clock import utcnow
from webhook_service.cobalt import CobaltAmbiguous, CobaltClient
from webhook_service.db import SessionFactory, make_engine, make_session_factory, transaction
from webhook_service.error_tracking import init_error_tracking
from webhook_service.logs import capture_stray_output, configure_logging, log_failure
from webhook_service.services.metrics import FLUSH_EVERY, Flusher, Heartbeat
from webhook_service.settings import Settings
from webhook_service.wakeups import Wakeups
from webhook_service.worker import GIVE_UP_RECORD_SECONDS, Worker

log = logging.getLogger("webhook_service.worker")


def run_worker(settings: Settings) -> None:
    """Entry point of the `worker` command: runs until SIGTERM or SIGINT.

    With `WORKER_PROCESSES` above 1, the command forks that many worker processes and
    supervises them (see `_supervise`); each is what one process alone would be.
    """
    configure_logging(settings.log_level)
    capture_stray_output()
    init_error_tracking(settings, "worker")
    if settings.worker_processes > 1:
        raise SystemExit(_supervise(settings))
    _run_process(settings)


def _run_process(settings: Settings, parent: int | None = None) -> None:
    """One worker process: runs until SIGTERM or SIGINT (or, forked, its parent is gone).

    `WORKER_CONCURRENCY` threads each claim and submit jobs, so a slow Cobalt (each call
    waits on a headless browser's queue) does not cap throughput at one call at a time.
    One of them also does the housekeeping. On SIGTERM every thread finishes and records
    the call in hand, then exits. A call Cobalt has not answered within
    `SHUTDOWN_GRACE_SECONDS` is given up: its job is recorded `unknown` (Cobalt may have it:
    never resent, reconciled against Cobalt's log) and the process exits, inside Heroku's
    30 s whatever `COBALT_READ_TIMEOUT_SECONDS` is.
    """
    phi.configure(settings.phi_keys())
    threads = max(1, settings.worker_concurrency)
    # The threads share a small pool: each holds a connection only for a step's short
    # transaction, never across a call to Cobalt.
    engine = make_engine(
        settings.effective_database_url,
        pool_size=settings.worker_database_pool_size,
        process_kind="worker",
    )
    sessions = make_session_factory(engine)
    stop = threading.Event()

    def request_stop(signum: int, _frame: FrameType | None) -> None:
        log.info("stopping", extra={"signal": signum})
        stop.set()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    # Forked: the supervisor blocked these until this process could handle them.
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOP_SIGNALS)
    workers = [
        Worker(settings, sessions, CobaltClient.from_settings(settings), housekeeping=(n == 0))
        for n in range(threads)
    ]
    # On PostgreSQL a listener rings the callback threads when a change commits.
    listener = (
        Wakeups(engine, name="worker-listen") if engine.dialect.name == "postgresql" else None
    )
    running = [
        # Daemons: a thread still waiting on Cobalt after the grace must not hold the exit.
        threading.Thread(target=w.run_forever, args=(stop,), name=f"worker-{n}", daemon=True)
        for n, w in enumerate(workers)
    ] + _callback_threads(settings, sessions, stop, listener)
    # Counts and the heartbeat go to the database every few seconds, and once more at the end.
    flusher = Flusher(sessions, utcnow, heartbeat=Heartbeat.for_this_process(utcnow()))
    flushing = threading.Thread(target=flusher.run, args=(stop,), name="metrics", daemon=True)
    try:
        flushing.start()
        for thread in running:
            thread.start()
        log.info("worker started", extra={"threads": threads})
        stopping_since: float | None = None
        while alive := [thread for thread in running if thread.is_alive()]:
            if parent is not None and os.getppid() != parent and not stop.is_set():
                log.warning("supervisor gone: stopping")
                stop.set()
            if stop.is_set():
                if listener is not None and not listener.stopping:
                    listener.stop()  # callback threads waiting for a ring stop waiting
                stopping_since = stopping_since or time.monotonic()
                if time.monotonic() - stopping_since >= settings.shutdown_grace_seconds:
                    give_up_calls(workers, sessions)
                    break
            alive[0].join(timeout=0.25)
    finally:
        stop.set()
        if listener is not None:
            listener.stop()
        flushing.join(timeout=FLUSH_EVERY)
        flusher.flush_quietly()
        engine.dispose()
        log.info("worker stopped", extra={"threads": threads})


_STOP_SIGNALS = {signal.SIGTERM, signal.SIGINT}


def _callback_threads(
    settings: Settings, sessions: SessionFactory, stop: threading.Event, listener: Wakeups | None
) -> list[threading.Thread]:
    """One thread fans new changes out to deliveries (rung by every committed change where
    there is a listener) and hands them to CALLBACK_CONCURRENCY sending threads."""
    sender = CallbackSender(settings, sessions)
    handoff = threading.Semaphore(0)
    senders = settings.callback_concurrency

    def fan_out() -> None:
        if listener is None:
            sender.run_fan_out(stop, None, handoff, senders)
            return
        with listener.watch(every=True) as doorbell:
            sender.run_fan_out(stop, doorbell, handoff, senders)

    return [threading.Thread(target=fan_out, name="callbacks-fan-out", daemon=True)] + [
        threading.Thread(
            target=sender.run_sending, args=(stop, handoff), name=f"callbacks-{n}", daemon=True
        )
        for n in range(senders)
    ]


def give_up_calls(workers: list[Worker], sessions: SessionFactory) -> None:
    """Shutdown's grace is over: record `unknown` for each submission still waiting on Cobalt.

    As when Cobalt's answer times out (`record_ambiguous`): the request may be at Cobalt, so
    the job is never resent and never failed; reconciling against Cobalt's log settles it.
    Doing it now, not leaving the job `sending` until its claim runs out, means nothing
    waits on `CLAIM_TTL_SECONDS`. Bounded by `GIVE_UP_RECORD_SECONDS`.
    """
    claims = [claim for worker in workers if (claim := worker.give_up_call()) is not None]
    if not claims:
        return
    given_up = CobaltAmbiguous("no answer before the worker stopped: Cobalt may have it")

    def record() -> None:
        for claim in claims:
            try:
                with transaction(sessions) as session:
                    services.record_ambiguous(session, claim, given_up, utcnow())
            except Exception as exc:  # the claim runs out instead; the job becomes unknown
                log_failure(log, "could not record a call given up", exc, job_id=str(claim.job_id))
            else:
                log.warning(
                    "submission unknown: no answer before the worker stopped",
                    extra={"job_id": str(claim.job_id)},
                )

    recorder = threading.Thread(target=record, name="give-up", daemon=True)
    recorder.start()
    recorder.join(GIVE_UP_RECORD_SECONDS)


def _supervise(settings: Settings) -> int:
    """Fork `WORKER_PROCESSES` worker processes and wait for them; return the exit status.

    SIGTERM and SIGINT are passed on, and each process finishes the calls in hand. If one
    process dies on its own, the others are stopped too and the command exits non-zero, so
    the platform restarts the whole worker (as it would restart a single process). A
    process whose supervisor is killed outright stops within a second. Several processes
    are safe together: a claim skips rows another process holds.
    """
    supervisor = os.getpid()
    children: set[int] = set()
    # Until each process has its handlers, a stop signal waits (blocked) instead of killing
    # it half-started; the children inherit the mask and unblock in `_run_process`.
    signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)
    for _ in range(settings.worker_processes):
        pid = os.fork()
        if pid == 0:  # the child: a worker process of its own
            code = 0
            try:
                _run_process(settings, parent=supervisor)
            except BaseException as exc:
                log_failure(log, "worker process failed", exc)
                code = 1
            finally:
                os._exit(code)
        children.add(pid)
    log.info("worker processes started", extra={"processes": len(children)})
    stopping = False

    def pass_on(signum: int, _frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True
        for pid in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)

    signal.signal(signal.SIGTERM, pass_on)
    signal.signal(signal.SIGINT, pass_on)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOP_SIGNALS)
    status = 0
    while children:
        pid, wait_status = os.wait()
        children.discard(pid)
        code = os.waitstatus_to_exitcode(wait_status)
        if code != 0 or not stopping:
            log.error("worker process exited", extra={"pid": pid, "exit_code": code})
            status = status or 1
            if not stopping:
                pass_on(signal.SIGTERM, None)
    return status
