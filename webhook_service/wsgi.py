"""The WSGI entry point gunicorn loads (`webhook_service.wsgi:app`)."""

from webhook_service.http import create_app

app = create_app()
