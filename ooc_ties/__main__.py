"""``python -m ooc_ties``: the ``ooc-ties`` command (see :mod:`ooc_ties.cli`)."""

from __future__ import annotations

from ooc_ties.cli import main

if __name__ == "__main__":
    main()
