"""``python -m bench.quality`` runs the benchmark end to end (``--help`` for the flags)."""

import sys

from .run import main

sys.exit(main())
