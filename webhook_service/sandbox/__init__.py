"""A faithful local Cobalt (api.usecobalt.com) for development and tests, like Stripe test mode.

`create_sandbox_app(config)` builds the Flask app; `app.extensions["sandbox"]` is the
`Sandbox` (drain, shutdown, reset). `DEMO_IDS` lists seeded ids with known outcomes.
"""

from webhook_service.sandbox.app import create_sandbox_app
from webhook_service.sandbox.config import AccessTokenConfig, FaultSettings, SandboxConfig
from webhook_service.sandbox.data import DEMO_IDS
from webhook_service.sandbox.replies import get_sandbox
from webhook_service.sandbox.server import make_sandbox_server, start_sandbox_server
from webhook_service.sandbox.simulator import Sandbox

__all__ = [
    "DEMO_IDS",
    "AccessTokenConfig",
    "FaultSettings",
    "Sandbox",
    "SandboxConfig",
    "create_sandbox_app",
    "get_sandbox",
    "make_sandbox_server",
    "start_sandbox_server",
]
