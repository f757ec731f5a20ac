"""The quality benchmark's smoke run (bench/quality, issue 17): needs the [quality] extra, else skipped."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("mnist1d")
pytest.importorskip("matplotlib")


@pytest.mark.slow
def test_smoke_run_passes_its_checks(tmp_path: Path) -> None:
    from bench.quality.run import main

    assert main(["--smoke", "--work", str(tmp_path / "work")]) == 0
    doc = json.loads((tmp_path / "work" / "results.json").read_text())
    assert doc["problems"] == []
    (seed,) = doc["seeds"]
    assert len(seed["tasks"]) == 2 and seed["zero_weight_subset_max_abs_diff"] == 0.0
    for row in seed["methods"].values():
        assert all(0.0 <= a <= 1.0 for a in row["test_abs"].values())
    assert all((tmp_path / "work" / f"{name}.png").stat().st_size > 0 for name in ("methods", "n_tasks", "density"))
