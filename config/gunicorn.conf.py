"""gunicorn settings for the `web` process (Procfile), read by `gunicorn --config`.

On PostgreSQL each process serves its requests as gevent greenlets: long polls and streams
(README, "Push") are held by the thousand at the cost of a greenlet each, not a thread, and
every other request is short and mostly waits on the database (psycopg cooperates with
gevent). On SQLite (development, the sandbox) it keeps 4 threads: SQLite's driver blocks the
whole process while it waits for the file's lock. `GUNICORN_WORKER_CLASS` overrides either.
Timeouts sit inside Heroku's 30 s router limit.
"""

import gc
import multiprocessing
import os
import signal
import threading
from typing import Any

bind = f"0.0.0.0:{os.environ.get('PORT', '5000')}"
workers = int(os.environ.get("WEB_CONCURRENCY", min(multiprocessing.cpu_count(), 4)))
_database = os.environ.get("DATABASE_URL", "")
_postgres = _database.startswith(("postgres://", "postgresql://", "postgresql+psycopg://"))
worker_class = os.environ.get("GUNICORN_WORKER_CLASS", "gevent" if _postgres else "gthread")
threads = int(os.environ.get("GUNICORN_THREADS", "4"))  # gthread only
# gevent: requests (held ones included) one process serves at once; the pool still bounds
# its database connections (README, "Connection budget").
worker_connections = int(os.environ.get("GUNICORN_WORKER_CONNECTIONS", "1000"))
timeout = 25  # a worker stuck this long is restarted, before the router's 30 s cut-off
graceful_timeout = 25  # SIGTERM: finish in-flight requests within Heroku's 30 s
keepalive = 5
max_requests = 100_000  # recycle now and then (10,000 meant every 10-40 s under load)
max_requests_jitter = 10_000  # so they do not all go at once
accesslog = None  # the app logs each request as a JSON line, without query strings (PHI)
errorlog = "-"
loglevel = os.environ.get("LOG_LEVEL", "info").lower()
forwarded_allow_ips = os.environ.get("FORWARDED_ALLOW_IPS", "127.0.0.1")
# No preload: each process opens its own database pool after the fork.
preload_app = False
# gunicorn's admin control socket is shared by every gunicorn of the user; we use none of it.
control_socket_disable = True


def on_starting(server: Any) -> None:
    """Keep gunicorn's access log off, whatever the environment says.

    Heroku's Python buildpack exports GUNICORN_CMD_ARGS="--access-logfile -" on every dyno,
    which outranks this file; gunicorn's access line holds the query string, where PHI may be
    (support searches by MRN). The app logs each request itself, without it.
    """
    if server.cfg.accesslog is not None:
        server.cfg.set("accesslog", None)
        server.log.setup(server.cfg)  # the logger was built from the settings before this


on_reload = on_starting  # a SIGHUP reads GUNICORN_CMD_ARGS again


def post_worker_init(worker: object) -> None:
    """The app is loaded: move what start-up made (modules, SQLAlchemy's mappers, pydantic's
    schemas: some 125,000 objects) into the collector's permanent generation, so that a full
    collection scans only what requests made since, not all of it every time (68 ms each, in
    process, before; a pause for every thread of the worker)."""
    gc.freeze()
    if worker is not None:
        _end_held_requests_on_shutdown(worker)


def _end_held_requests_on_shutdown(worker: Any) -> None:
    """On SIGTERM (and SIGINT, SIGQUIT), answer held long polls and end streams first, so the
    graceful shutdown is not spent waiting for them: a long poll answers (304 or the job),
    a stream ends and its EventSource reconnects, with Last-Event-ID, to another process."""
    extensions = getattr(getattr(worker, "wsgi", None), "extensions", {})
    wakeups = extensions.get("webhook_service", {}).get("wakeups")
    if wakeups is None:
        return
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT):
        previous = signal.getsignal(signum)

        def stop_then(sig: int, frame: Any, previous: Any = previous) -> None:
            # Not in the signal handler itself: waking takes a lock (a greenlet's, on gevent,
            # where the handler runs in the event loop and may not block).
            if worker.__class__.__name__.startswith("Gevent"):
                import gevent

                gevent.spawn(wakeups.stop)
            else:
                threading.Thread(target=wakeups.stop, daemon=True).start()
            if callable(previous):
                previous(sig, frame)

        signal.signal(signum, stop_then)
