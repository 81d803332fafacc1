"""The WSGI entry point gunicorn loads (`webhook_service.wsgi:app`)."""

from webhook_service.http import create_app

app = create_app()
# Each gunicorn worker imports this after the fork (no preload): its listener for job changes
# starts with it, so polls can be answered from memory from the start (http/poll_cache.py).
app.extensions["webhook_service"]["wakeups"].start()
