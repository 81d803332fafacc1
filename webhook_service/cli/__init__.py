"""The operational commands: `webhook-service …` (entry point `main`)."""

from webhook_service.cli.main import main

__all__ = ["main"]
