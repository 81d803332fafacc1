"""What every command module shares: the database session factory a command opens."""

from __future__ import annotations

from webhook_service.db import SessionFactory
from webhook_service.settings import Settings


def session_factory() -> SessionFactory:
    """A one-connection session factory on the configured database, PHI keys loaded."""
    from webhook_service import phi
    from webhook_service.db import make_engine, make_session_factory

    settings = Settings()
    phi.configure(settings.phi_keys())
    return make_session_factory(
        make_engine(settings.effective_database_url, pool_size=1, process_kind="cli")
    )
