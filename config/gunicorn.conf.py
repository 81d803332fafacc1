"""gunicorn settings for the `web` process (Procfile), read by `gunicorn --config`.

Threads, not more processes, absorb the slow clients and webhook bursts: each request is
short and mostly waits on the database. Timeouts sit inside Heroku's 30 s router limit.
"""

import gc
import multiprocessing
import os
from typing import Any

from webhook_service.logs import capture_stray_output, gunicorn_logconfig

bind = f"0.0.0.0:{os.environ.get('PORT', '5000')}"
workers = int(os.environ.get("WEB_CONCURRENCY", min(multiprocessing.cpu_count(), 4)))
worker_class = "gthread"
threads = int(os.environ.get("GUNICORN_THREADS", "4"))
timeout = 25  # a worker stuck this long is restarted, before the router's 30 s cut-off
graceful_timeout = 25  # SIGTERM: finish in-flight requests within Heroku's 30 s
keepalive = 5
max_requests = 100_000  # recycle now and then (10,000 meant every 10-40 s under load)
max_requests_jitter = 10_000  # so they do not all go at once
accesslog = None  # the app logs each request as a JSON line, without query strings (PHI)
loglevel = os.environ.get("LOG_LEVEL", "info").lower()
# gunicorn's own lines ("Booting worker", "Worker exiting", a worker that cannot load the
# app) in the app's JSON shape, on stdout like the app's; what it prints to stderr too.
logconfig_dict = gunicorn_logconfig(loglevel)
capture_stray_output()
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
