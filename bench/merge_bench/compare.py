"""``--compare-output``: mergekit-yaml's output against ooc-ties' mergekit-preset output, tensor by tensor."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

from .data import Workdir
from .util import log
from .variants import Tools, Variant

# Runs in a child: per-tensor count of differing elements between two safetensors folders.
COMPARE_CODE = r"""
import json, sys
from pathlib import Path
import numpy as np

def index(folder):
    out = {}
    for f in sorted(Path(folder).glob("*.safetensors")):
        with open(f, "rb") as fh:
            n = int.from_bytes(fh.read(8), "little")
            header = json.loads(fh.read(n))
        for name, info in header.items():
            if name != "__metadata__":
                out[name] = (f, 8 + n, info)
    return out

SIZES = {"BF16": 2, "F16": 2, "F32": 4, "F64": 8, "I64": 8, "I32": 4, "U8": 1, "I8": 1, "BOOL": 1}
UINT = {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}

def load(entry):
    f, base, info = entry
    a, b = info["data_offsets"]
    size = SIZES[info["dtype"]]
    return np.memmap(f, dtype=UINT[size], mode="r", offset=base + a, shape=((b - a) // size,))

def as_f32(raw, dtype):
    if dtype == "BF16":
        return (raw.astype(np.uint32) << 16).view(np.float32)
    if dtype == "F16":
        return raw.view(np.float16).astype(np.float32)
    if dtype == "F32":
        return raw.view(np.float32)
    return raw.astype(np.float64)

a, b = index(sys.argv[1]), index(sys.argv[2])
report = {"only_in_a": sorted(set(a) - set(b)), "only_in_b": sorted(set(b) - set(a)), "tensors": {}}
for name in sorted(set(a) & set(b)):
    ia, ib = a[name][2], b[name][2]
    row = {"dtype_a": ia["dtype"], "dtype_b": ib["dtype"], "shape": ia["shape"]}
    if ia["dtype"] != ib["dtype"] or ia["shape"] != ib["shape"]:
        row["comparable"] = False
    else:
        ra, rb = load(a[name]), load(b[name])
        row["numel"] = int(ra.size)
        diff = np.flatnonzero(ra != rb)
        row["differing_bits"] = int(diff.size)
        if diff.size:
            fa, fb = as_f32(np.asarray(ra[diff]), ia["dtype"]), as_f32(np.asarray(rb[diff]), ib["dtype"])
            row["differing_values"] = int(np.count_nonzero(fa != fb))  # +0.0 == -0.0
            row["max_abs_diff"] = float(np.max(np.abs(fa.astype(np.float64) - fb)))
        else:
            row["differing_values"] = 0
    report["tensors"][name] = row
print(json.dumps(report))
"""


def compare_outputs(tools: Tools, dirs: list[Path], work: Workdir, keep_output: bool) -> dict[str, Any] | None:
    """Compare the kept outputs (running ooc-ties' mergekit preset once if none was kept); None if nothing to do."""
    if not work.kept_mergekit.exists():
        log("compare: no successful mergekit-yaml run, nothing to compare")
        shutil.rmtree(work.kept_ooc, ignore_errors=True)
        return None
    if not work.kept_ooc.exists():
        v = Variant("mergekit", 2, None)
        log("compare: running ooc-ties --preset mergekit --threads 2 once (untimed) for the comparison")
        subprocess.run(tools.command(v, dirs, work.kept_ooc, ["-q"]), check=True)
    log(f"compare: {work.kept_mergekit} vs {work.kept_ooc}")
    r = subprocess.run(
        [tools.python, "-c", COMPARE_CODE, str(work.kept_mergekit), str(work.kept_ooc)],
        capture_output=True,
        text=True,
    )
    comparison = None
    if r.returncode != 0:
        log(f"compare failed:\n{r.stderr[-2000:]}")
    else:
        comparison = json.loads(r.stdout)
    if not keep_output:
        shutil.rmtree(work.kept_mergekit, ignore_errors=True)
        shutil.rmtree(work.kept_ooc, ignore_errors=True)
    return comparison


def print_comparison(c: dict[str, Any]) -> None:
    tensors = c["tensors"]
    print("output comparison, mergekit-yaml vs ooc-ties --preset mergekit (bitwise; values: +0.0 == -0.0):")
    if c["only_in_a"] or c["only_in_b"]:
        print(f"  only in mergekit-yaml: {c['only_in_a']}; only in ooc-ties: {c['only_in_b']}")
    bad = [n for n, t in tensors.items() if t.get("comparable") is False]
    if bad:
        print(f"  not comparable (dtype or shape): {bad}")
    groups: dict[str, list[int]] = {}
    for n, t in tensors.items():
        if "numel" not in t:
            continue
        kind = re.sub(r"\.\d+\.", ".N.", n)
        g = groups.setdefault(kind, [0, 0, 0, 0, 0])
        g[0] += 1
        g[1] += t["numel"]
        g[2] += t["differing_bits"]
        g[3] += t["differing_values"]
        g[4] += 1 if t["differing_bits"] else 0
    print(
        f"  {'tensor (N = any layer)':48s} {'tensors':>7s} {'elements':>13s} {'diff bits':>10s} "
        f"{'diff values':>11s} {'tensors w/ diff':>15s}"
    )
    tot = [0, 0, 0, 0, 0]
    for kind, g in groups.items():
        print(f"  {kind:48s} {g[0]:7d} {g[1]:13,d} {g[2]:10,d} {g[3]:11,d} {g[4]:15d}")
        tot = [a + b for a, b in zip(tot, g, strict=True)]
    print(
        f"  {'total':48s} {tot[0]:7d} {tot[1]:13,d} {tot[2]:10,d} {tot[3]:11,d} {tot[4]:15d}"
        + (f"  ({tot[2] / tot[1]:.2e} of elements)" if tot[1] else "")
    )
    worst = max((t.get("max_abs_diff", 0.0) for t in tensors.values()), default=0.0)
    print(f"  largest |difference| of a differing element: {worst:.3g}")
