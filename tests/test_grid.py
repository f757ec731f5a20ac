"""Grids of merges: every point byte-identical to the single merge with its options, for the reads of one."""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from pathlib import Path
from typing import Any

import pytest
from conftest import tree_digest
from test_methods import CASES

from ooc_ties import PRESETS, MergeOptions, OptionError, Resources, merge, plan_merge
from ooc_ties.cli import main
from ooc_ties.errors import DiskSpaceError
from ooc_ties.grid import GridMode, GridPoint, expand_grid, name_points
from ooc_ties.io import staging
from ooc_ties.io.checkpoint import Checkpoint
from ooc_ties.merge import merge_grid, plan_grid

Models = tuple[Path, list[Path]]


def _singles(models: Models, root: Path, points: list[GridPoint], **resources: Any) -> dict[str, str]:
    """The tree digest of each point merged alone."""
    base, fts = models
    digests = {}
    for point in points:
        result = merge(base, fts, root / point.name, point.options, Resources(**resources))
        assert result.output is not None
        digests[point.name] = tree_digest(result.output)
    return digests


def test_a_grid_of_every_method_gives_the_single_merges(tiny_models: Models, tmp_path: Path) -> None:
    """Every method case of tests/test_methods.py in one grid: each output folder (tensors, recipe, card,
    mergekit config) is byte-identical to its single merge, and the grid reads far less than they do."""
    options = [case.values[0] for case in CASES]
    grid = merge_grid(*tiny_models, tmp_path / "grid", options, Resources(threads=2))
    names = name_points(options)
    assert [p.name for p in grid.points] == names and len(set(names)) == len(names)
    singles = _singles(tiny_models, tmp_path / "single", list(grid.points), threads=2)
    for point, result in zip(grid.points, grid.results, strict=True):
        assert result.output == (tmp_path / "grid" / point.name).absolute()
        assert tree_digest(result.output) == singles[point.name], point.name
    alone = sum(r.bytes_read for r in grid.results)
    assert grid.bytes_read * 2 < alone  # 22 merges of 9 methods whose pass 1 reads differ: shared where they agree
    document = json.loads((tmp_path / "grid" / "grid.json").read_text())
    assert document["version"] == 1
    assert [(p["name"], p["status"]) for p in document["points"]] == [(n, "done") for n in names]
    assert document["points"][0]["options"] == options[0].to_json()


def test_a_density_and_lambda_grid_reads_what_one_merge_reads(tiny_models: Models, tmp_path: Path) -> None:
    points = expand_grid(PRESETS["paper"], {"density": [0.1, 0.2, 0.3], "lam": [0.8, 1.0, 1.2]})
    assert [p.name for p in points][:4] == ["ties-d0.1-l0.8", "ties-d0.1-l1.0", "ties-d0.1-l1.2", "ties-d0.2-l0.8"]
    grid = merge_grid(*tiny_models, tmp_path / "grid", list(points), Resources(threads=2))
    assert grid.batches == 1
    one = max(r.bytes_read for r in grid.results)
    assert grid.bytes_read <= one * 1.05  # (the densities' brackets may differ: a little more, never 9x)
    singles = _singles(tiny_models, tmp_path / "single", [points[0], points[-1]], threads=1, max_block_elements=1000)
    for point in (points[0], points[-1]):
        assert tree_digest(tmp_path / "grid" / point.name) == singles[point.name]


@pytest.mark.parametrize("preset", ["mergekit", "paper"])
def test_merges_of_one_scope_read_what_the_most_demanding_reads(tiny_models: Models, preset: str) -> None:
    """Per tensor, the merges' reads drift apart (one needs a second read or tie counts where another
    does not); the earliest reads go first, so they meet again at the same tensor."""
    points = expand_grid(PRESETS[preset].with_(scope="tensor"), {"density": [0.1, 0.2, 0.3]})
    with tempfile.TemporaryDirectory() as tmp:
        grid = merge_grid(*tiny_models, tmp, list(points), Resources(threads=2, max_block_elements=4096))
    alone = [r.bytes_read for r in grid.results]
    assert len(set(alone)) > 1  # (they do read differently)
    # (a merge needing a second read at one tensor and another at the next: both reads are made)
    assert max(alone) <= grid.bytes_read <= 1.05 * max(alone)


def test_zip_pairs_the_lists_and_names_say_what_varies() -> None:
    zipped = expand_grid(MergeOptions(), {"density": [0.1, 0.3], "seed": [1, 2]}, "zip")
    assert [(p.options.density, p.options.seed) for p in zipped] == [(0.1, 1), (0.3, 2)]
    assert [p.name for p in zipped] == ["ties-d0.1-seed1", "ties-d0.3-seed2"]
    methods = expand_grid(MergeOptions(), {"method": ["ties", "dare_ties"], "density": [0.5]}, GridMode.CROSS)
    assert [p.name for p in methods] == ["ties", "dare_ties"]
    per_model = expand_grid(MergeOptions(), {"density": [(0.2, 0.4), 0.3], "scope": ["global", "tensor"]})
    assert [p.name for p in per_model] == [
        "ties-d0.2_0.4-global",
        "ties-d0.2_0.4-tensor",
        "ties-d0.3-global",
        "ties-d0.3-tensor",
    ]
    assert name_points([MergeOptions(), MergeOptions()]) == ["ties", "ties-2"]
    with pytest.raises(OptionError, match="--grid zip pairs lists of one length, but density has 2, lam has 3"):
        expand_grid(MergeOptions(), {"density": [0.1, 0.2], "lam": [1, 2, 3]}, "zip")
    with pytest.raises(OptionError, match='grid axis "alpha" is invalid'):
        expand_grid(MergeOptions(), {"alpha": [1]})
    with pytest.raises(OptionError, match="expected a non-empty list"):
        expand_grid(MergeOptions(), {"density": []})
    with pytest.raises(OptionError, match=r"density must be in \(0, 1\]; got 2"):
        expand_grid(MergeOptions(), {"density": [0.5, 2.0]})
    with pytest.raises(OptionError, match='grid mode "diagonal" is invalid'):
        expand_grid(MergeOptions(), {"density": [0.5]}, "diagonal")


def _smallest_budget(models: Models) -> int:
    budget = 1 << 20
    while True:
        try:
            plan_merge(*models, PRESETS["paper"], Resources(memory_budget=budget, threads=1))
            return budget
        except OptionError:
            budget += budget // 8


def test_a_grid_too_large_for_the_budget_runs_in_batches(
    tiny_models: Models, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    budget = int(_smallest_budget(tiny_models) * 2.5)  # two merges fit at once, three do not
    points = list(expand_grid(PRESETS["paper"], {"density": [0.1, 0.2, 0.3, 0.4]}))
    resources = Resources(memory_budget=budget, threads=1)
    with caplog.at_level(logging.WARNING, logger="ooc_ties"):
        grid = merge_grid(*tiny_models, tmp_path / "grid", points, resources)
    assert grid.batches == 2 and "holds 2 of the 4 merges at once: the grid runs in 2 batches" in caplog.text
    singles = _singles(tiny_models, tmp_path / "single", points, threads=1)
    assert {p.name: tree_digest(r.output) for p, r in zip(points, grid.results, strict=True)} == singles
    assert (
        "batches: 2 (merges per batch: 2, 2, split by the memory budget)"
        in plan_grid(*tiny_models, tmp_path / "never", points, resources).describe()
    )
    with pytest.raises(OptionError, match="memory budget"):
        merge_grid(*tiny_models, tmp_path / "none", points, Resources(memory_budget=budget // 4, threads=1))


class _Interrupt:
    """A progress factory that stops pass 2 (as Ctrl-C would) after some blocks."""

    def __init__(self, blocks: int) -> None:
        self.blocks = blocks

    def __call__(self, description: str, total: int) -> Any:
        outer = self

        class Bar:
            def advance(self, nbytes: int) -> None:
                if description.startswith("pass 2/2"):
                    outer.blocks -= 1
                    if outer.blocks == 0:
                        raise KeyboardInterrupt

            def grow(self, nbytes: int) -> None:
                pass

            def close(self) -> None:
                pass

        return Bar()


def test_an_interrupted_grid_resumes(tiny_models: Models, tmp_path: Path) -> None:
    points = list(expand_grid(PRESETS["paper"], {"density": [0.1, 0.3], "lam": [1.0, 0.5]}, "zip"))
    resources = Resources(threads=1, max_block_elements=4096)
    out = tmp_path / "grid"
    with pytest.raises(KeyboardInterrupt):
        merge_grid(*tiny_models, out, points, resources, progress=_Interrupt(8))
    document = json.loads((out / "grid.json").read_text())
    assert {p["status"] for p in document["points"]} == {"pending"}
    assert len(list(out.glob(".*partial*"))) == 2  # both merges stay for --resume
    grid = merge_grid(*tiny_models, out, points, resources, resume=True)
    assert all(r.resumed_blocks > 0 for r in grid.results)
    singles = _singles(tiny_models, tmp_path / "single", points, threads=2)
    assert {p.name: tree_digest(r.output) for p, r in zip(points, grid.results, strict=True)} == singles
    again = merge_grid(*tiny_models, out, points, resources, resume=True)  # finished: nothing is read
    assert again.bytes_read == 0
    assert {p["status"] for p in json.loads((out / "grid.json").read_text())["points"]} == {"done"}


def test_a_grid_the_disk_cannot_hold_is_refused_before_anything_is_written(
    tiny_models: Models, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    points = list(expand_grid(PRESETS["paper"], {"lam": [1.0, 0.5]}))
    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(staging.shutil, "disk_usage", lambda path: usage._replace(free=1000))
    with pytest.raises(DiskSpaceError, match="not enough free disk space"):
        plan_grid(*tiny_models, tmp_path / "grid", points)
    with pytest.raises(DiskSpaceError, match="not enough free disk space"):
        merge_grid(*tiny_models, tmp_path / "grid", points)
    assert not (tmp_path / "grid").exists()


def test_a_zarr_grid_writes_zarr_groups(tiny_models: Models, tmp_path: Path) -> None:
    from ooc_ties.convert import convert

    points = list(expand_grid(PRESETS["paper"], {"lam": [1.0, 0.5]}))
    grid = merge_grid(*tiny_models, tmp_path / "grid.zarr", points, Resources(threads=2))
    assert [r.output.name for r in grid.results if r.output is not None] == ["ties-l1.0.zarr", "ties-l0.5.zarr"]
    convert(tmp_path / "grid.zarr" / "ties-l0.5.zarr", tmp_path / "back")
    alone = merge(*tiny_models, tmp_path / "alone", points[1].options)
    with Checkpoint(tmp_path / "back") as back, Checkpoint(alone.output) as single:
        assert all(back.read(n).tobytes() == single.read(n).tobytes() for n in single.names)


def test_the_cli_spans_a_grid(tiny_models: Models, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    base, fts = tiny_models
    models = ["--base", str(base), *map(str, fts)]
    out = tmp_path / "grid"
    main(["merge", *models, "-o", str(out), "--density", "0.1,0.2/0.3/0.4", "--lambda", "0.8,1", "--dry-run"])
    shown = capsys.readouterr().out
    assert "grid: 4 merges into" in shown and "  ties-d0.2_0.3_0.4-l1.0: density 0.2/0.3/0.4" in shown
    assert not out.exists()
    main(["merge", *models, "-o", str(out), "--method", "ties,dare_ties", "--seed", "1,2", "--grid", "zip", "-q"])
    # (each method's own default density: 0.2 for ties, 1 for dare_ties)
    assert sorted(p.name for p in out.iterdir()) == ["dare_ties-d1.0-seed2", "grid.json", "ties-d0.2-seed1"]
    options = MergeOptions(method="dare_ties", seed=2)
    alone = merge(base, fts, tmp_path / "alone", options)
    assert alone.output is not None and tree_digest(out / "dare_ties-d1.0-seed2") == tree_digest(alone.output)
    with pytest.raises(SystemExit) as info:
        main(["merge", *models, "-o", str(tmp_path / "x"), "--lambda", "1,2", "--save-thresholds", "t.json"])
    assert info.value.code == 2


def test_a_config_file_with_several_merges_is_a_grid(
    tiny_models: Models, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base, fts = tiny_models
    models = "".join(f"  - model: {ft}\n    parameters: {{weight: 1.0, density: 0.3}}\n" for ft in fts)
    one = f"merge_method: ties\nbase_model: {base}\nmodels:\n{models}"
    two = one.replace("merge_method: ties", "merge_method: dare_ties")
    config = tmp_path / "grid.yml"
    config.write_text(f"{one}---\n{two}")
    main(["merge", "--config", str(config), "-o", str(tmp_path / "grid"), "-q"])
    assert sorted(p.name for p in (tmp_path / "grid").iterdir()) == ["dare_ties", "grid.json", "ties"]
    single = tmp_path / "single.yml"
    single.write_text(two)
    main(["merge", "--config", str(single), "-o", str(tmp_path / "alone"), "-q"])
    assert tree_digest(tmp_path / "grid" / "dare_ties") == tree_digest(tmp_path / "alone")
    fewer = "".join(f"  - model: {ft}\n    parameters: {{weight: 1.0, density: 0.3}}\n" for ft in fts[:2])
    config.write_text(f"{one}---\nmerge_method: ties\nbase_model: {base}\nmodels:\n{fewer}")
    with pytest.raises(SystemExit) as info:
        main(["merge", "--config", str(config), "-o", str(tmp_path / "bad"), "-q"])
    assert info.value.code == 1
    assert "the configurations of a grid merge the same models onto the same base" in capsys.readouterr().err


def test_bad_input_leaves_nothing_at_the_grid_folder(tmp_path: Path) -> None:
    import numpy as np

    from ooc_ties.errors import NonFiniteValueError, OutputPathError

    rng = np.random.default_rng(3)
    base = {"w": rng.standard_normal(5000).astype(np.float32)}
    good = {"w": base["w"] + np.float32(0.01)}
    bad = {"w": base["w"].copy()}
    bad["w"][1234] = np.inf
    points = list(expand_grid(PRESETS["paper"], {"lam": [1.0, 0.5]}))
    with pytest.raises(NonFiniteValueError, match=r"<model 2>.*holds inf at element 1234"):
        merge_grid(base, [good, bad], tmp_path / "grid", points)
    assert not (tmp_path / "grid").exists()
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "notes.txt").write_text("mine")
    with pytest.raises(OutputPathError, match="already exists"):
        merge_grid(base, [good, good], taken, points)
    assert [p.name for p in taken.iterdir()] == ["notes.txt"]


def test_each_set_of_weights_of_a_grid_is_checked(
    tiny_models: Models, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    points = list(expand_grid(PRESETS["paper"], {"weights": [(1.0, 1.0, 1.0), (1.0, 0.0, 1.0), (1.0, 0.0, 0.5)]}))
    assert [p.name for p in points] == ["ties-w1.0", "ties-w1.0_0.0_1.0", "ties-w1.0_0.0_0.5"]
    with caplog.at_level(logging.WARNING, logger="ooc_ties"):
        plan_grid(*tiny_models, tmp_path / "grid", points)
    assert caplog.text.count("has weight 0: it does not contribute to the merge") == 1


def test_configurations_crossed_with_command_line_lists_are_named_together(
    tiny_models: Models, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base, fts = tiny_models
    models = "".join(f"  - model: {ft}\n    parameters: {{weight: 1.0, density: 0.3}}\n" for ft in fts)
    one = f"merge_method: ties\nbase_model: {base}\nmodels:\n{models}"
    config = tmp_path / "grid.yml"
    config.write_text(f"{one}---\n{one.replace('merge_method: ties', 'merge_method: dare_ties')}")
    main(["merge", "--config", str(config), "-o", str(tmp_path / "grid"), "--scope", "global,tensor", "--dry-run"])
    shown = capsys.readouterr().out
    names = [line.split(":")[0].strip() for line in shown.splitlines() if line.startswith("  ")]
    assert names == ["ties-global", "ties-tensor", "dare_ties-global", "dare_ties-tensor"]
