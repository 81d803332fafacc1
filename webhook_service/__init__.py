"""webhook_service: between front ends and Cobalt.

The folders are the layers: `http/` answers HTTP, `cli/` and `worker.py` run as processes,
`services/` holds the use cases, and the modules beside them are the pure core and storage.
"""
