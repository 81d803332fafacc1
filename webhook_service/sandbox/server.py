"""Serving the sandbox over real HTTP with werkzeug's threaded server.

Werkzeug's server (like gunicorn and nginx) silently drops request headers whose names
contain `_`, against header smuggling. Cobalt's auth headers are `client_id`,
`client_secret` and `access_token`, so the sandbox's request handler keeps them.
"""

from __future__ import annotations

import logging
import threading
from typing import Any
from urllib.parse import urlsplit

from flask import Flask
from werkzeug.serving import BaseWSGIServer, WSGIRequestHandler, make_server

logger = logging.getLogger("webhook_service.sandbox")


class CobaltRequestHandler(WSGIRequestHandler):
    """Werkzeug's handler, keeping underscore headers and logging requests as ids only."""

    def make_environ(self) -> dict[str, Any]:
        environ: dict[str, Any] = super().make_environ()
        for key, value in self.headers.items():
            if "_" in key:
                environ["HTTP_" + key.upper().replace("-", "_")] = value.replace("\r\n", "")
        return environ

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        # The path without its query string; an access token in a control URL is masked.
        path = urlsplit(self.path).path
        if path.startswith("/_sandbox/tokens/"):
            parts = path.split("/")
            path = "/".join([*parts[:3], "***", *parts[4:]])
        status = getattr(code, "value", code)
        logger.info("http_request", extra={"method": self.command, "path": path, "status": status})


def make_sandbox_server(app: Flask, host: str = "127.0.0.1", port: int = 0) -> BaseWSGIServer:
    """A threaded werkzeug server for `app` (port 0: any free port, see `server.port`)."""
    return make_server(host, port, app, threaded=True, request_handler=CobaltRequestHandler)


def start_sandbox_server(
    app: Flask, host: str = "127.0.0.1", port: int = 0
) -> tuple[BaseWSGIServer, threading.Thread]:
    """Serve `app` on a daemon thread, for tests; stop with `server.shutdown()`."""
    server = make_sandbox_server(app, host, port)
    # A short poll interval makes `shutdown()` return quickly; tests start and stop a lot.
    thread = threading.Thread(
        target=server.serve_forever, args=(0.05,), name="sandbox-http", daemon=True
    )
    thread.start()
    return server, thread
