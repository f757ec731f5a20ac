"""Log lines and sizes in words: the few helpers every stage of the benchmark uses."""

from __future__ import annotations

import argparse
import re
import sys
import time

MiB = 1024 * 1024


def log(msg: str) -> None:
    """A timestamped progress line on stderr (the report goes to stdout)."""
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def parse_size(text: str) -> int:
    """'256MiB', '2GiB', '5GB', '1000' -> bytes (only for display; ooc-ties parses the flag itself)."""
    m = re.fullmatch(r"\s*([0-9.]+)\s*([KMGT]?)(i?)B?\s*", text, re.IGNORECASE)
    if not m:
        raise argparse.ArgumentTypeError(f"cannot parse size {text!r}")
    number, prefix, binary = float(m.group(1)), m.group(2).upper(), bool(m.group(3))
    power = "KMGT".find(prefix) + 1 if prefix else 0
    return int(number * (1024 if binary else 1000) ** power)


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    raise AssertionError
