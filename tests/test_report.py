"""The interference report: every figure against an in-RAM NumPy computation, the same for any blocks and
threads, the same from ``analyze`` and from ``merge --report``, and its files."""

from __future__ import annotations

import json
import math
import re
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ooc_ties import PRESETS, MergeOptions, OocTiesError, Resources, merge
from ooc_ties.analyze import analyze
from ooc_ties.cli import main
from ooc_ties.io.checkpoint import Checkpoint
from ooc_ties.kernels import report, ties
from ooc_ties.kernels.convert import decode_oracle, encode_oracle
from ooc_ties.report.document import layer_of, module_of
from tests.conftest import LAYOUT_SCOPES, read_only

Models = tuple[Path, list[Path]]


def _f32(checkpoint: Checkpoint, name: str) -> np.ndarray:
    return decode_oracle(np.asarray(checkpoint.read(name)).reshape(-1))


def _numpy_report(models: Models, document: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Each tensor's figures, computed in RAM from the report's own thresholds and majority sign
    (the paper preset: every value at least the threshold is kept)."""
    base_path, ft_paths = models
    thresholds = [m["threshold"] for m in document["models"]]
    positive = document["majority"]["model"] > 0
    out = {}
    with Checkpoint(base_path) as base:
        fts = [Checkpoint(p) for p in ft_paths]
        try:
            for name in base.names:
                b = _f32(base, name)
                tau = np.stack([_f32(ft, name) - b for ft in fts])
                v = np.where(np.abs(tau) >= np.array(thresholds, np.float32)[:, None], tau, np.float32(0))
                s = np.zeros(b.shape, np.float32)
                for row in v:
                    s = s + row
                elected = np.where(s == 0, 1.0 if positive else -1.0, np.sign(s))
                kept = v != 0
                agree = kept & (np.sign(v) == elected)
                t64 = tau.astype(np.float64)
                out[name] = {
                    "models_kept": np.bincount(kept.sum(axis=0), minlength=len(fts) + 1).tolist(),
                    "conflicts": int(np.count_nonzero((v > 0).any(axis=0) & (v < 0).any(axis=0))),
                    "open": int(np.count_nonzero((s == 0) & kept.any(axis=0))),
                    "kept": kept.sum(axis=1).tolist(),
                    "wins": agree.sum(axis=1).tolist(),
                    "l1": np.abs(t64).sum(axis=1),
                    "l2": np.sqrt((t64 * t64).sum(axis=1)),
                    "kept_l1": np.abs(v.astype(np.float64)).sum(axis=1),
                    "discarded": float(np.abs(v.astype(np.float64))[kept & ~agree].sum()),
                    "dots": t64 @ t64.T,
                    "signs": np.sign(tau).astype(np.int64) @ np.sign(tau).astype(np.int64).T,
                }
        finally:
            for ft in fts:
                ft.close()
    return out


def test_every_figure_is_the_numpy_one(tiny_models: Models, tmp_path: Path) -> None:
    result = analyze(*tiny_models, tmp_path / "report", PRESETS["paper"], Resources(threads=2))
    document = result.document
    expected = _numpy_report(tiny_models, document)
    assert {row["name"] for row in document["tensors"]} == set(expected)
    for row in document["tensors"]:
        want = expected[row["name"]]
        for key in ("models_kept", "conflicts", "open"):
            assert row[key] == want[key], (row["name"], key)
        assert [m["kept"] for m in row["models"]] == want["kept"]
        assert [m["wins"] for m in row["models"]] == want["wins"]
        np.testing.assert_allclose([m["l1"] for m in row["models"]], want["l1"], rtol=1e-12)
        np.testing.assert_allclose([m["l2"] for m in row["models"]], want["l2"], rtol=1e-12)
        kept_mass = float(want["kept_l1"].sum())
        assert math.isclose(row["kept_mass"], kept_mass, rel_tol=1e-12)
        assert math.isclose(row["discarded_mass"], want["discarded"], rel_tol=1e-12, abs_tol=1e-300)
        diag = np.sqrt(np.diag(want["dots"]))
        np.testing.assert_allclose(row["cosine"], want["dots"] / np.outer(diag, diag), rtol=1e-12)
        nnz = np.sqrt(np.diag(want["signs"]).astype(np.float64))
        np.testing.assert_allclose(row["sign_cosine"], want["signs"] / np.outer(nnz, nnz), rtol=1e-15)
    whole = document["whole"]
    assert whole["models_kept"] == np.sum([e["models_kept"] for e in expected.values()], axis=0).tolist()
    assert whole["conflicts"] == sum(e["conflicts"] for e in expected.values())
    assert whole["elements"] == sum(r["elements"] for r in document["tensors"])
    kept = np.sum([e["kept"] for e in expected.values()], axis=0)
    assert [m["kept"] for m in document["models"]] == kept.tolist()
    merged = merge(*tiny_models, tmp_path / "merged", PRESETS["paper"])  # pass 1 counts the same
    assert [m["kept"] for m in document["models"]] == [g.kept for g in merged.thresholds.groups[""]]


def _figures(document: dict[str, Any]) -> tuple[list[Any], list[float]]:
    """Every integer and every float of a document, in order."""
    ints: list[Any] = []
    floats: list[float] = []

    def walk(value: Any) -> None:
        if isinstance(value, dict):
            for key in sorted(value):
                walk(value[key])
        elif isinstance(value, list):
            for item in value:
                walk(item)
        elif isinstance(value, float):
            floats.append(value)
        else:
            ints.append(value)

    walk(document)
    return ints, floats


@pytest.mark.parametrize(("block", "threads"), [(1000, 1), (4096, 2)])
def test_the_report_is_the_same_whatever_the_blocks_and_threads(
    tiny_models: Models, tmp_path: Path, block: int, threads: int
) -> None:
    options = PRESETS["mergekit"].with_(density=0.3)
    one = analyze(*tiny_models, tmp_path / "one", options, Resources(threads=2)).document
    other = analyze(*tiny_models, tmp_path / "other", options, Resources(threads=threads, max_block_elements=block))
    ints, floats = _figures(one)
    other_ints, other_floats = _figures(other.document)
    assert ints == other_ints  # every count, name and label exactly
    np.testing.assert_allclose(other_floats, floats, rtol=1e-12)


def test_merge_report_is_the_analyze_report(tiny_models: Models, tmp_path: Path) -> None:
    options = PRESETS["paper"].with_(density=0.3, weights=(1.0, 0.5, 0.7))
    merge(*tiny_models, tmp_path / "merged", options, report=tmp_path / "from-merge")
    analyze(*tiny_models, tmp_path / "from-analyze", options)
    for name in ("report.json", "tensors.csv", "index.html"):
        assert (tmp_path / "from-merge" / name).read_bytes() == (tmp_path / "from-analyze" / name).read_bytes()


def test_the_report_files(tiny_models: Models, tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    result = analyze(*tiny_models, tmp_path / "report")
    names = sorted(p.name for p in result.output.iterdir())
    assert names == sorted(
        [
            "conflicts_by_layer.png",
            "density_curves.png",
            "index.html",
            "models_kept.png",
            "report.json",
            "similarity.png",
            "tensors.csv",
            "top_conflicts.png",
        ]
    )
    document = json.loads((result.output / "report.json").read_text())
    assert document["format"] == "ooc-ties-report" and document["version"] == 1
    page = (result.output / "index.html").read_text()
    assert all(f'src="{n}"' in page for n in names if n.endswith(".png"))
    rows = (result.output / "tensors.csv").read_text().splitlines()
    assert len(rows) == 1 + len(document["tensors"]) and rows[0].startswith("name,layer,module,elements,")
    curves = document["density_curves"]
    assert curves["densities"][0] == 0.01 and curves["densities"][-1] == 1.0
    for model in curves["models"]:
        assert model["l1_share"] == sorted(model["l1_share"]) and math.isclose(model["l1_share"][-1], 1.0)


def test_without_matplotlib_the_data_files_are_written(
    tiny_models: Models, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib raises ModuleNotFoundError
    result = analyze(*tiny_models, tmp_path / "report")
    assert result.note is not None and "pip install 'ooc-ties[plot]'" in result.note
    assert sorted(p.name for p in result.output.iterdir()) == ["index.html", "report.json", "tensors.csv"]
    assert "pip install" in (result.output / "index.html").read_text()


def test_a_resumed_merge_reports_what_one_run_reports(tiny_models: Models, tmp_path: Path) -> None:
    """The blocks an interrupted run merged are read again and counted (not written): the resumed
    merge's report and signs are those of a merge in one run."""
    from test_grid import _Interrupt

    out = tmp_path / "out"
    resources = Resources(threads=1, max_block_elements=4096)
    options = PRESETS["paper"]
    with pytest.raises(KeyboardInterrupt):
        merge(*tiny_models, out, options, resources, progress=_Interrupt(5), report=tmp_path / "first")
    assert not (tmp_path / "first").exists()
    resumed = merge(
        *tiny_models, out, options, resources, resume=True, report=tmp_path / "report", save_signs=tmp_path / "s"
    )
    assert resumed.resumed_blocks > 0
    whole = tmp_path / "whole"
    one_run = merge(
        *tiny_models, whole, options, resources, report=tmp_path / "one-run", save_signs=tmp_path / "one-run-s"
    )
    assert one_run.bytes_read > resumed.plan.merge_input_bytes  # (pass 1 and pass 2)
    assert resumed.bytes_read == resumed.plan.merge_input_bytes  # (pass 1 resumed; pass 2 counts or merges)
    for name in ("report.json", "tensors.csv"):
        assert (tmp_path / "report" / name).read_bytes() == (tmp_path / "one-run" / name).read_bytes()
    assert (tmp_path / "s").read_bytes() == (tmp_path / "one-run-s").read_bytes()


def test_blocks_merged_again_are_counted_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A wrong majority guess whose open elements a tie quota decides (so they cannot be recorded) has
    pass 2 merge blocks again; the report counts each block once: every 8th element in the magnitudes,
    and the same figures as an analysis that counts them once."""
    from safetensors.numpy import save_file

    from ooc_ties.pass1.costs import VOTE_STRIDE
    from ooc_ties.report.collect import Collector

    block = 4096
    n_blocks = 4 * VOTE_STRIDE
    sampled = (np.arange(n_blocks * block) // block) % VOTE_STRIDE == 0
    sign = np.where(sampled, 1.0, -1.0).astype(np.float32)  # the sample votes +, the whole model votes -
    tau2 = sign.copy()
    tau2[::4] = -tau2[::4]  # exact zero votes between kept values, every value at the threshold
    tensors = [np.zeros(sign.size, np.float32), sign, tau2]
    paths = [tmp_path / f"m{i}.safetensors" for i in range(3)]
    for path, tensor in zip(paths, tensors, strict=True):
        save_file({"w": tensor}, path)
    totals: list[np.ndarray] = []
    counted = Collector.magnitudes

    def spy(self: Collector) -> np.ndarray:
        totals.append(counted(self).sum(axis=1))
        return counted(self)

    monkeypatch.setattr(Collector, "magnitudes", spy)
    options = PRESETS["paper"].with_(trim="topk", density=0.75)  # a tie quota: pass 1 guesses the sign
    resources = Resources(max_block_elements=block, threads=2)
    with caplog.at_level("INFO", logger="ooc_ties"):
        merge(paths[0], paths[1:], tmp_path / "out", options, resources, report=tmp_path / "report")
    again = re.search(r"(\d+) merged again", caplog.text)
    assert again is not None and int(again.group(1)) > 0, caplog.text
    assert totals[0].tolist() == [-(-sign.size // 8)] * 2
    merged = json.loads((tmp_path / "report" / "report.json").read_text())
    assert merged["density_curves"] == analyze(paths[0], paths[1:], tmp_path / "a", options).document["density_curves"]


def test_names_give_layers_and_modules() -> None:
    assert layer_of("model.layers.12.self_attn.q_proj.weight") == 12
    assert layer_of("model.embed_tokens.weight") is None
    assert module_of("model.layers.12.self_attn.q_proj.weight") == "q_proj"
    assert module_of("lm_head.weight") == "lm_head"


def test_the_cli(tiny_models: Models, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    base, fts = tiny_models
    main(["analyze", "--base", str(base), *map(str, fts), "-o", str(tmp_path / "report"), "--density", "0.3"])
    err = capsys.readouterr().err
    assert "of the elements have kept values of both signs" in err and "index.html" in err
    document = json.loads((tmp_path / "report" / "report.json").read_text())
    assert document["options"]["density"] == 0.3
    with pytest.raises(SystemExit) as info:
        main(["analyze", "--base", str(base), *map(str, fts), "-o", str(tmp_path / "x"), "--density", "0.1,0.2"])
    assert info.value.code == 2
    with pytest.raises(SystemExit) as info:  # it exists
        main(["analyze", "--base", str(base), *map(str, fts), "-o", str(tmp_path / "report"), "-q"])
    assert info.value.code == 1


def test_a_grid_reports_every_merge(tiny_models: Models, tmp_path: Path) -> None:
    from ooc_ties import expand_grid, merge_grid

    points = list(expand_grid(PRESETS["paper"], {"density": [0.1, 0.3]}))
    merge_grid(*tiny_models, tmp_path / "grid", points, report=tmp_path / "reports")
    for point in points:
        alone = analyze(*tiny_models, tmp_path / "alone" / point.name, point.options)
        grid_report = (tmp_path / "reports" / point.name / "report.json").read_bytes()
        assert grid_report == (alone.output / "report.json").read_bytes()


def test_a_method_without_a_vote_discards_nothing(tiny_models: Models, tmp_path: Path) -> None:
    result = analyze(*tiny_models, tmp_path / "report", MergeOptions(method="task_arithmetic"))
    whole = result.document["whole"]
    assert whole["discarded_mass"] == 0.0 and whole["open"] == 0
    assert whole["models_kept"][-1] > 0 and result.document["density_curves"] is not None


@pytest.mark.parametrize("preset", ["paper", "mergekit"])
def test_a_merge_from_its_own_saved_signs_is_the_same_merge(tiny_models: Models, tmp_path: Path, preset: str) -> None:
    """The saved signs are the votes' signs (0 where the vote is exactly zero); a merge that elects from
    them (``sign_from``) counts the same votes and elects the same signs: the same bytes."""
    options = PRESETS[preset].with_(density=0.3)
    signs = tmp_path / "signs.safetensors"
    plain = merge(*tiny_models, tmp_path / "plain", options, Resources(threads=2), save_signs=signs)
    with Checkpoint(signs) as saved:
        assert {saved.info(n).dtype.code for n in saved.names} == {"I8"}
        assert sorted(saved.names) == sorted(t.name for t in plain.plan.merged)
        values = np.concatenate([np.asarray(saved.read(n)).reshape(-1) for n in saved.names])
        assert set(np.unique(values).tolist()) == {-1, 0, 1}
    again = merge(
        *tiny_models, tmp_path / "again", options.with_(sign_from=str(signs)), Resources(max_block_elements=999)
    )
    assert again.output is not None and plain.output is not None
    with Checkpoint(plain.output) as a, Checkpoint(again.output) as b:
        for name in a.names:
            assert np.asarray(a.read(name)).tobytes() == np.asarray(b.read(name)).tobytes(), name
    from ooc_ties.reference import reference_merge

    expected = reference_merge(*tiny_models, options.with_(sign_from=str(signs)))
    with Checkpoint(again.output) as b:
        assert all(np.asarray(b.read(n)).tobytes() == expected[n].tobytes() for n in b.names)


def test_analyze_saves_the_signs_and_refuses_a_taken_path(tiny_models: Models, tmp_path: Path) -> None:
    signs = tmp_path / "signs.safetensors"
    analyze(*tiny_models, tmp_path / "report", save_signs=signs)
    assert signs.is_file() and not list(tmp_path.glob(".*partial*"))
    with pytest.raises(OocTiesError, match="already exists"):
        analyze(*tiny_models, tmp_path / "report2", save_signs=signs)
    assert not (tmp_path / "report2").exists()


def test_docs_name_every_field(tiny_models: Models, tmp_path: Path) -> None:
    """docs/report.md documents the schema: every key of a report appears in it."""
    import re

    text = (Path(__file__).resolve().parent.parent / "docs" / "report.md").read_text()
    words = set(re.findall(r"[a-z_0-9]+", text))
    document = analyze(*tiny_models, tmp_path / "report").document
    keys = set(document) | set(document["whole"]) | set(document["models"][0]) | set(document["layers"][0])
    keys |= set(document["tensors"][0]) | set(document["tensors"][0]["models"][0])
    keys |= set(document["density_curves"]) | set(document["density_curves"]["models"][0])
    assert keys - words == set()


# --------------------------------------------------------------------------------------------------
# the merge that counts (the merge kernel's ``counts``) against its oracle and the plain merge

_STORAGE = {"bf16": np.uint16, "f16": np.int16, "f32": np.float32}


def _interference_case(
    seed: int, n: int, n_models: int, kind: str, zeros: bool, quota_kind: str, weights_kind: str, general: bool
) -> tuple[Any, ...]:
    """Inputs of the merge that counts: task values of a few levels (ties at the thresholds, exact
    zero votes), with ``zeros`` some base and fine-tuned values exactly +0.0 or -0.0."""
    rng = np.random.default_rng(seed)
    storage = np.dtype(_STORAGE[kind])
    base = (rng.standard_normal(n) * 0.02).astype(np.float32)
    values = [base + rng.integers(-4, 5, n).astype(np.float32) * np.float32(2.0**-10) for _ in range(n_models)]
    if zeros:
        at = rng.random(n) < 0.2
        base[at] = np.float32(0.0)
        for value in values:
            value[at] = np.where(rng.random(n) < 0.5, np.float32(-0.0), np.float32(0.0))[at]
    base_s = encode_oracle(base, storage)
    fts = tuple(encode_oracle(v, storage) for v in values)
    b = decode_oracle(base_s)
    thr = np.array([np.abs(decode_oracle(ft) - b)[rng.integers(0, n)] if n else 0 for ft in fts], np.float32)
    quota = {
        "all": np.full(n_models, -1),
        "some": rng.integers(0, 50, n_models),
        "none": np.zeros(n_models, np.int64),
    }[quota_kind].astype(np.int64)
    weights = {
        "ones": np.ones(n_models),
        "random": rng.uniform(0.1, 2.0, n_models),
        "negative": rng.uniform(-1.0, 1.0, n_models),
    }[weights_kind].astype(np.float32)
    sparsity = None
    if general:
        band = rng.random() < 0.5
        thr_hi = np.maximum(thr * 3, np.float32(2.0**-9)) if band else np.zeros(0, np.float32)
        quota_hi = rng.integers(-1, 20, n_models) if band else np.zeros(0, np.int64)
        masks = (rng.random((n_models, n)) < 0.6).astype(np.uint8)
        if rng.random() < 0.3:
            masks = np.zeros((n_models, 0), np.uint8)
        scales = (1.0 + rng.random(n_models)).astype(np.float32) if rng.random() < 0.5 else np.zeros(0, np.float32)
        sign = fts[int(rng.integers(0, n_models))] if rng.random() < 0.3 else np.zeros(0, storage)
        sparsity = (thr_hi, quota_hi.astype(np.int64), masks, scales, bool(rng.random() < 0.8), sign)
    return (*read_only(base_s, *fts), thr, quota, weights, sparsity)


_MERGE_OPTIONS = (np.float32(0.7), True, True, True)
"""lam, zero_positive, consensus, normalize of the merge the counts go with."""


def _run_counted(
    case: tuple[Any, ...],
    offset: int,
    options: tuple[Any, ...] = _MERGE_OPTIONS,
    capacity: int = 0,
    count_kept: bool = False,
) -> tuple[np.ndarray, ...]:
    """:func:`ties.merge` with ``counts`` on a case: the merged block, all four vote counts, the magnitudes,
    the elected signs, the interference outputs, then the recorded open elements, their results and the
    values each model kept (counted if ``count_kept``)."""
    base, *fts, thr, quota, weights, sparsity = case
    out = np.empty(base.size, base.dtype)
    votes = np.zeros(4, np.int64)
    at, alt = np.zeros(capacity, np.int64), np.zeros(capacity, base.dtype)
    kept = np.zeros(len(fts) if count_kept else 0, np.int64)
    magnitudes = report.magnitude_histogram(len(fts))
    elected = np.zeros(base.size, np.int8)
    outputs = report.interference_outputs(len(fts))
    counts = (offset, magnitudes, elected, *outputs)
    ties.merge(base, tuple(fts), thr, quota, weights, *options, out, votes, kept, at, alt, sparsity, counts)
    return out, votes, magnitudes, elected, *outputs, at, alt, kept


_FLOATS = {4, 5, 10}
"""The float64 outputs among :func:`_run_counted`'s: norms, dots, discarded."""


_COUNTED_LAYOUTS = {
    False: [("bf16", 3), ("f32", 1)],
    True: [("bf16", 3), ("bf16", 2), ("f16", 2), ("f32", 3), ("f32", 1)],
}
"""(input storage, models) of the test below: by default the merges' own layout (bf16, three models, which
the end-to-end tests compile anyway) and one more; every layout with ``-m slow`` (each layout costs about
4 s of compiling, twice: with and without the general rule)."""


@pytest.mark.parametrize("every", LAYOUT_SCOPES)
@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_merge_counted_matches_its_oracle(every: bool, data: st.DataObject) -> None:
    """The merged block, and every count, exactly the oracle's; every float64 sum within 1e-12 of it;
    the same bits when run again (a fixed order of summation)."""
    kind, n_models = data.draw(st.sampled_from(_COUNTED_LAYOUTS[every]), label="layout")
    seed = data.draw(st.integers(0, 2**31), label="seed")
    n = data.draw(st.integers(0, 5000), label="n")
    zeros = data.draw(st.booleans(), label="zeros")
    quota_kind = data.draw(st.sampled_from(["all", "some", "none"]), label="quota_kind")
    weights_kind = data.draw(st.sampled_from(["ones", "random", "negative"]), label="weights_kind")
    general = data.draw(st.booleans(), label="general")
    offset = data.draw(st.integers(0, 20), label="offset")
    lam = data.draw(st.sampled_from([0.7, 1.0, -2.0]), label="lam")
    flags = data.draw(
        st.tuples(st.booleans(), st.booleans(), st.booleans()), label="zero_positive, consensus, normalize"
    )
    case = _interference_case(seed, n, n_models, kind, zeros, quota_kind, weights_kind, general)
    options = (np.float32(lam), *flags)
    got = _run_counted(case, offset, options)[:-3]
    base, *fts, thr, quota, weights, sparsity = case
    lam32, zero_positive, consensus, normalize = options
    want = ties.merge_oracle(
        base, tuple(fts), thr, quota, weights, lam32, zero_positive, base.dtype,
        consensus=consensus, normalize=normalize, sparsity=sparsity, offset=offset,
    )  # fmt: skip
    for i, (g, w) in enumerate(zip((got[0], got[1][:3], *got[2:]), want, strict=True)):
        assert g.dtype == w.dtype and g.shape == w.shape, i
        if i in _FLOATS:
            np.testing.assert_allclose(g, w, rtol=1e-12, atol=1e-300, err_msg=str(i))
        else:
            np.testing.assert_array_equal(g, w, err_msg=str(i))
    again = _run_counted(case, offset, options)[:-3]
    assert all(a.tobytes() == g.tobytes() for a, g in zip(again, got, strict=True))


def _merged_as_merge_does(
    case: tuple[Any, ...], options: tuple[Any, ...], capacity: int, count_kept: bool
) -> tuple[int, int]:
    """Check :func:`ties.merge` with ``counts`` against the same merge without them: the same
    block, vote counts, kept counts, recorded open elements and their other results; return how many
    open elements there were, and how many were recorded."""
    counted = _run_counted(case, 0, options, capacity, count_kept)
    base, *fts, thr, quota, weights, sparsity = case
    out = np.empty(base.size, base.dtype)
    votes = np.zeros(4, np.int64)
    at, alt = np.zeros(capacity, np.int64), np.zeros(capacity, base.dtype)
    kept = np.zeros(len(fts) if count_kept else 0, np.int64)
    ties.merge(base, tuple(fts), thr, quota, weights, *options, out, votes, kept, at, alt, sparsity)
    recorded = int(votes[2] - votes[3])
    assert counted[0].tobytes() == out.tobytes()
    assert counted[1].tolist() == votes.tolist()
    assert counted[-1].tolist() == kept.tolist()
    assert counted[-3][:recorded].tolist() == at[:recorded].tolist()
    assert counted[-2][:recorded].tobytes() == alt[:recorded].tobytes()
    return int(votes[2]), recorded


@settings(max_examples=30, deadline=None)
@given(
    seed=st.integers(0, 2**31),
    n=st.integers(0, 5000),
    quota_kind=st.sampled_from(["all", "some"]),
    weights_kind=st.sampled_from(["ones", "random"]),
    general=st.booleans(),
    flags=st.tuples(st.booleans(), st.booleans(), st.booleans()),
    capacity=st.sampled_from([0, 3, 5000]),
    count_kept=st.booleans(),
)
def test_merge_counted_merges_as_merge_does(
    seed: int,
    n: int,
    quota_kind: str,
    weights_kind: str,
    general: bool,
    flags: tuple[bool, bool, bool],
    capacity: int,
    count_kept: bool,
) -> None:
    """Counting changes nothing in the merge (:func:`_merged_as_merge_does`), whatever the options."""
    case = _interference_case(seed, n, 3, "bf16", True, quota_kind, weights_kind, general)
    _merged_as_merge_does(case, (np.float32(0.7), *flags), capacity, count_kept)


@pytest.mark.parametrize("capacity", [3, 5000])
def test_merge_counted_records_open_elements_as_merge_does(capacity: int) -> None:
    """A case with exact zero votes between kept values: the open elements recorded, as ``merge`` records
    them (up to the capacity)."""
    case = _interference_case(0, 5000, 3, "bf16", True, "all", "ones", False)
    open_, recorded = _merged_as_merge_does(case, (np.float32(0.7), True, True, True), capacity, True)
    assert open_ > 3 and recorded == min(open_, capacity)


def test_interference_sums_do_not_depend_on_the_tiles() -> None:
    """A block of 2.5 tiles and the same elements in blocks of 1000 (each its own call, the sums added
    in block order) give the same merge, counts and float64 sums within 1e-12."""
    case = _interference_case(7, 5120, 3, "bf16", True, "all", "random", False)
    whole = _run_counted(case, 0)
    base, *fts, thr, quota, weights, sparsity = case
    out = np.empty(base.size, base.dtype)
    votes = np.zeros(4, np.int64)
    none = np.zeros(0, np.int64)
    parts = [report.magnitude_histogram(3), np.zeros(0, np.int8), *report.interference_outputs(3)]
    for start in range(0, base.size, 1000):
        piece = slice(start, start + 1000)
        ties.merge(
            base[piece], tuple(ft[piece] for ft in fts), thr, quota, weights, *_MERGE_OPTIONS, out[piece], votes,
            none, none, np.zeros(0, base.dtype), sparsity, (start, *parts),
        )  # fmt: skip
    assert out.tobytes() == whole[0].tobytes()
    assert votes.tolist() == whole[1].tolist()
    for i, (w, p) in enumerate(zip(whole[2:-3], parts, strict=True)):
        if i == 1:
            continue
        if i + 2 in _FLOATS:
            np.testing.assert_allclose(p, w, rtol=1e-12, atol=1e-300)
        else:
            np.testing.assert_array_equal(p, w)
