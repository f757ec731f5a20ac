#!/usr/bin/env python3
"""Plot throughput and peak memory versus model size from bench_merge.py JSON files.

    python bench/plot.py /tmp/oocbench-results/scaling.json [more.json ...] [-o bench/throughput.png]

Accepts both kinds of JSON the benchmark writes: a ``--scaling`` file (one entry per shape) and a
single-shape ``--json`` report (one point). Points of the same variant and shape from several files are
merged (the later file wins). Left: GB/s of input (input bytes counted once / median wall) per variant,
with the two-read I/O floor for reference. Right: peak RSS (``ru_maxrss``, solid) and peak ``RssAnon``
(sampled, dashed) in MiB. Both axes are logarithmic. Needs matplotlib (Agg backend, no display).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

FLOOR = "io-floor (cat x2)"
STYLE = {  # variant -> (colour, marker)
    "paper/1t": ("tab:blue", "o"),
    "paper/2t": ("tab:green", "s"),
    "mergekit/1t": ("tab:purple", "v"),
    "mergekit/2t": ("tab:olive", "^"),
    "mergekit-yaml": ("tab:red", "D"),
    "reference/paper": ("tab:brown", "x"),
    "reference/mergekit": ("tab:pink", "+"),
    FLOOR: ("0.6", "."),
}
LABEL = {
    "paper/1t": "ooc-ties paper, 1 thread",
    "paper/2t": "ooc-ties paper, 2 threads",
    "mergekit/1t": "ooc-ties mergekit preset, 1 thread",
    "mergekit/2t": "ooc-ties mergekit preset, 2 threads",
    "mergekit-yaml": "mergekit 0.1.5 (torch CPU)",
    "reference/paper": "in-RAM NumPy reference",
    FLOOR: "I/O floor (cat x2)",
}


def load_points(paths: list[Path]) -> dict[str, dict[str, tuple[int, dict]]]:
    """variant -> shape -> (parameters, summary)."""
    points: dict[str, dict[str, tuple[int, dict]]] = {}
    for path in paths:
        data = json.loads(path.read_text())
        entries = data["shapes"] if data.get("mode") == "scaling" else [data]
        for e in entries:
            params = e.get("parameters")
            if params is None:
                print(f"plot: {path}: shape {e.get('shape')} has no 'parameters' (old JSON); skipped", file=sys.stderr)
                continue
            for name, s in e["summary"].items():
                if s.get("runs"):
                    points.setdefault(name, {})[e["shape"]] = (params, s)
    return points


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("json", nargs="+", type=Path, help="bench_merge.py JSON files (--scaling or --json)")
    p.add_argument("-o", "--output", type=Path, default=Path(__file__).with_name("throughput.png"))
    p.add_argument("--title", default=None, help="figure title")
    p.add_argument("--dpi", type=int, default=90)
    args = p.parse_args(argv)

    points = load_points(args.json)
    if not points:
        sys.exit("plot: no successful runs in the given files")
    fig, (ax_t, ax_m) = plt.subplots(1, 2, figsize=(10, 4.0))
    order = [n for n in STYLE if n in points] + sorted(n for n in points if n not in STYLE)
    for name in order:
        rows = sorted(points[name].values(), key=lambda r: r[0])
        xs = [r[0] for r in rows]
        colour, marker = STYLE.get(name, (None, "o"))
        label = LABEL.get(name, name)
        floor = name == FLOOR
        ax_t.plot(
            xs,
            [r[1]["gbps"] for r in rows],
            marker=marker,
            color=colour,
            label=label,
            linestyle=":" if floor else "-",
            linewidth=1 if floor else 1.6,
        )
        if floor:
            continue
        ax_m.plot(xs, [r[1]["maxrss_mib"] for r in rows], marker=marker, color=colour, label=f"{label}: max RSS")
        ax_m.plot(
            xs,
            [r[1]["rss_anon_peak_mib"] for r in rows],
            marker=marker,
            color=colour,
            linestyle="--",
            alpha=0.7,
            label=f"{label}: RssAnon",
        )
    ax_t.set(
        xscale="log",
        yscale="log",
        xlabel="parameters per model",
        ylabel="GB/s of input (bytes counted once)",
        title="throughput (median wall)",
    )
    ax_m.set(
        xscale="log",
        yscale="log",
        xlabel="parameters per model",
        ylabel="MiB",
        title="peak memory (solid: max RSS, dashed: RssAnon)",
    )
    for ax in (ax_t, ax_m):
        ax.grid(True, which="both", alpha=0.3)
    ax_t.legend(fontsize=7, loc="best")
    handles, labels = ax_m.get_legend_handles_labels()
    keep = [i for i, lab in enumerate(labels) if lab.endswith("max RSS")]
    ax_m.legend([handles[i] for i in keep], [labels[i].removesuffix(": max RSS") for i in keep], fontsize=7)
    if args.title:
        fig.suptitle(args.title, fontsize=10)
    fig.tight_layout()
    args.output.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.output, dpi=args.dpi)
    print(f"wrote {args.output} ({args.output.stat().st_size / 1024:.0f} KiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
