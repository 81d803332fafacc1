"""Entry point: `.venv/bin/python -m bench [--quick] [--jobs N] …` runs the whole bench."""

import sys

from bench.run import main

sys.exit(main())
