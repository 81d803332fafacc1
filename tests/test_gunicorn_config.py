"""The web process's gunicorn settings (config/gunicorn.conf.py, as the Procfile runs it)."""

from __future__ import annotations

import gc
import runpy
from pathlib import Path

CONFIG = Path(__file__).resolve().parent.parent / "config" / "gunicorn.conf.py"


def test_a_web_worker_moves_what_start_up_made_out_of_the_collectors_way() -> None:
    """After loading the app, a worker freezes it: full collections then scan only what
    requests made, not the whole app each time (a pause for every thread of the worker)."""
    settings = runpy.run_path(str(CONFIG))
    assert settings["worker_class"] == "gthread"
    gc.unfreeze()
    try:
        settings["post_worker_init"](None)
        assert gc.get_freeze_count() > 10_000  # this test process's modules, at least
    finally:
        gc.unfreeze()
