"""Merge methods as data: every declared method against its in-RAM reference, whatever the blocks and
threads, and its kernel flags against the kernel's oracle."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import tree_digest
from hypothesis import given, settings
from hypothesis import strategies as st

from ooc_ties import PRESETS, MergeOptions, OptionError, Resources, merge, plan_merge
from ooc_ties.cli import main
from ooc_ties.io.checkpoint import Checkpoint
from ooc_ties.kernels import ties
from ooc_ties.methods import METHODS, TASK_ARITHMETIC, TIES
from ooc_ties.reference import reference_merge

Models = tuple[Path, list[Path]]

CASES = [
    pytest.param(MergeOptions(method="task_arithmetic", lam=0.4), id="task_arithmetic"),
    pytest.param(MergeOptions(method="task_arithmetic", weights=(0.5, 1.5, -0.25), normalize=True), id="ta-normalized"),
    pytest.param(PRESETS["paper"].with_(normalize=False, lam=0.7), id="ties-paper-not-normalized"),
    pytest.param(PRESETS["mergekit"].with_(density=0.4, weights=(1.0, 0.5, 2.0)), id="ties-mergekit"),
    pytest.param(PRESETS["paper"].with_(density=(0.1, 0.5, 1.0)), id="ties-paper-per-model-density"),
    pytest.param(PRESETS["mergekit"].with_(density=(0.3, 0.05, 0.6)), id="ties-mergekit-per-model-density"),
    pytest.param(MergeOptions(method="linear", weights=(0.5, 0.3, 0.2)), id="linear"),
    pytest.param(MergeOptions(method="linear", weights=(1.0, 2.0, 1.0), normalize=False), id="linear-sum"),
    pytest.param(MergeOptions(method="dare_linear", density=0.3, weights=(0.5, 1.0, 0.7)), id="dare_linear"),
    pytest.param(
        PRESETS["mergekit"].with_(method="dare_ties", density=(0.2, 0.5, 0.9), seed=7), id="dare_ties-mergekit"
    ),
    pytest.param(MergeOptions(method="dare_ties", density=0.4, seed=3), id="dare_ties-majority"),
    pytest.param(
        MergeOptions(method="dare_linear", density=0.25, rescale_rule="density", lam=0.8), id="dare_linear-paper"
    ),
    pytest.param(MergeOptions(method="dare_linear", density=0.5, rescale=False), id="dare_linear-no-rescale"),
    pytest.param(PRESETS["mergekit"].with_(method="breadcrumbs", density=0.5, gamma=0.05), id="breadcrumbs-mergekit"),
    pytest.param(MergeOptions(method="breadcrumbs_ties", density=0.3, gamma=(0.01, 0.1, 0.0)), id="breadcrumbs_ties"),
    pytest.param(
        PRESETS["mergekit"].with_(method="breadcrumbs_ties", density=0.9, gamma=0.2), id="breadcrumbs_ties-thin-bottom"
    ),
    pytest.param(PRESETS["mergekit"].with_(method="della", density=0.4, epsilon=0.1, seed=11), id="della-mergekit"),
    pytest.param(MergeOptions(method="della", density=0.5, epsilon=(0.1, 0.2, 0.3)), id="della-majority"),
    pytest.param(MergeOptions(method="della_linear", density=0.6, epsilon=0.05, lam=1.5), id="della_linear"),
    pytest.param(PRESETS["mergekit"].with_(density=(0.3, 1.0, 0.1), rescale=True), id="ties-mergekit-rescale"),
    pytest.param(PRESETS["paper"].with_(rescale=True), id="ties-paper-rescale"),
    pytest.param(
        PRESETS["mergekit"].with_(method="breadcrumbs_ties", density=0.4, gamma=0.1, rescale=True),
        id="breadcrumbs_ties-rescale",
    ),
]


def _read_all(folder: Path) -> dict[str, bytes]:
    with Checkpoint(folder) as checkpoint:
        return {name: checkpoint.read(name).tobytes() for name in checkpoint.names}


@pytest.mark.parametrize("options", CASES)
@pytest.mark.parametrize(("block", "threads"), [(None, 2), (1000, 1), pytest.param(4096, 2, marks=pytest.mark.slow)])
def test_every_method_matches_its_reference(
    tiny_models: Models, tmp_path: Path, options: MergeOptions, block: int | None, threads: int
) -> None:
    base, fts = tiny_models
    result = merge(base, fts, tmp_path / "out", options, Resources(max_block_elements=block, threads=threads))
    assert result.output is not None
    expected = reference_merge(base, fts, options)
    got = _read_all(result.output)
    assert set(got) == set(expected)
    for name, data in got.items():
        assert data == expected[name].tobytes(), name


@pytest.mark.parametrize("method", ["task_arithmetic", "linear"])
def test_methods_without_statistics_read_their_inputs_once(tiny_models: Models, tmp_path: Path, method: str) -> None:
    base, fts = tiny_models
    options = MergeOptions(method=method)
    plan = plan_merge(base, fts, options)
    assert "reads: 1 pass over" in plan.describe() and options.method.title in plan.describe()
    result = merge(base, fts, tmp_path / "out", options)
    assert result.bytes_read == plan.merge_input_bytes
    assert result.thresholds.majority == {}  # no vote: no consensus


def test_task_arithmetic_is_the_weighted_sum_of_task_vectors(tiny_models: Models, tmp_path: Path) -> None:
    """Independent of the reference: f32 output, lambda 1, weights (1, 1, 1): base + the three task
    vectors, added in model order, in float32."""
    base, fts = tiny_models
    result = merge(base, fts, tmp_path / "out", MergeOptions(method="task_arithmetic", out_dtype="f32"))
    assert result.output is not None
    name = "model.layers.0.mlp.up_proj.weight"
    with Checkpoint(base) as b, Checkpoint(result.output) as out:
        b32 = (np.array(b.read(name)).astype(np.uint32) << 16).view(np.float32)
        total = np.zeros_like(b32)
        for ft in fts:
            with Checkpoint(ft) as f:
                total = total + ((np.array(f.read(name)).astype(np.uint32) << 16).view(np.float32) - b32)
        np.testing.assert_array_equal(np.array(out.read(name)), b32 + total)


def test_options_follow_the_method() -> None:
    assert MergeOptions().method is TIES and MergeOptions().density == 0.2 and MergeOptions().normalize
    ta = MergeOptions(method="task_arithmetic")
    assert ta.method is TASK_ARITHMETIC and ta.density == 1.0 and not ta.normalize and not ta.trims
    assert PRESETS["paper"].with_(method="task_arithmetic").density == 1.0  # the method's own default
    assert ta.with_(method="ties").density == 0.2
    assert ta.to_json()["method"] == "task_arithmetic" and ta.to_json()["normalize"] is False
    with pytest.raises(OptionError, match=r"density 0\.3 does not apply to task_arithmetic"):
        MergeOptions(method="task_arithmetic", density=0.3)
    per_model = MergeOptions(density=(0.5, "0.25"))
    assert per_model.density == (0.5, 0.25) and per_model.model_densities(2) == (0.5, 0.25)
    assert per_model.to_json()["density"] == [0.5, 0.25]
    with pytest.raises(OptionError, match="2 densities given for 3 fine-tuned models"):
        per_model.model_densities(3)
    with pytest.raises(OptionError, match=r"density must be in \(0, 1\]; got 1.5"):
        MergeOptions(density=(0.5, 1.5))
    invalid = r'merge method "dare" is invalid \(expected one of: "linear", "task_arithmetic", "ties", "dare_ties",'
    with pytest.raises(OptionError, match=invalid):
        MergeOptions(method="dare")
    assert set(METHODS) == {
        "linear",
        "task_arithmetic",
        "ties",
        "dare_ties",
        "dare_linear",
        "breadcrumbs",
        "breadcrumbs_ties",
        "della",
        "della_linear",
    }


def test_cli_method_and_normalize(tiny_models: Models, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    base, fts = tiny_models
    out = tmp_path / "out"
    main(
        [
            "merge",
            "-q",
            "--method",
            "task_arithmetic",
            "--lambda",
            "0.4",
            "--normalize",
            "--base",
            str(base),
            *map(str, fts),
            "-o",
            str(out),
        ]
    )
    expected = reference_merge(base, fts, MergeOptions(method="task_arithmetic", lam=0.4, normalize=True))
    assert _read_all(out) == {name: value.tobytes() for name, value in expected.items()}
    card = (out / "README.md").read_text()
    assert "# Task Arithmetic merge" in card and "- normalize: True" in card and "- density:" not in card
    with pytest.raises(SystemExit):
        main(
            [
                "merge",
                "--method",
                "task_arithmetic",
                "--density",
                "0.5",
                "--base",
                str(base),
                str(fts[0]),
                "-o",
                str(tmp_path / "bad"),
            ]
        )
    assert "does not apply to task_arithmetic" in capsys.readouterr().err


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    n=st.integers(1, 5000),
    models=st.integers(1, 4),
    consensus=st.booleans(),
    normalize=st.booleans(),
    weights=st.sampled_from(["ones", "random", "cancelling"]),
)
def test_kernel_flags_match_the_oracle(
    seed: int, n: int, models: int, consensus: bool, normalize: bool, weights: str
) -> None:
    """The merge kernel with and without a consensus, normalized or not, against its NumPy oracle, on
    float32 blocks (bf16 storage is covered by tests/test_kernels.py's shared layouts)."""
    rng = np.random.default_rng(seed)
    base = rng.standard_normal(n).astype(np.float32)
    fts = tuple((base + rng.standard_normal(n).astype(np.float32) * np.float32(0.01)) for _ in range(models))
    w = {
        "ones": np.ones(models),
        "random": rng.uniform(-1, 2, models),
        "cancelling": np.array([1.0, -1.0, 0.5, -0.5][:models]),  # sums of weights that are exactly 0
    }[weights].astype(np.float32)
    thr = np.zeros(models, np.float32)
    quota = np.full(models, -1, np.int64)
    lam = np.float32(0.7)
    out = np.empty(n, np.float32)
    votes, kept = np.zeros(4, np.int64), np.zeros(models, np.int64)
    at, alt = np.zeros(16, np.int64), np.empty(16, np.float32)
    ties.merge(base, fts, thr, quota, w, lam, True, consensus, normalize, out, votes, kept, at, alt)
    expected, expected_votes = ties.merge_oracle(
        base, fts, thr, quota, w, lam, True, np.dtype(np.float32), consensus=consensus, normalize=normalize
    )
    np.testing.assert_array_equal(out.view(np.uint32), expected.view(np.uint32))
    np.testing.assert_array_equal(votes[:3], expected_votes)
    if not consensus:
        assert votes[2] == 0  # nothing depends on an elected sign
    assert kept.tolist() == [n] * models  # threshold 0 keeps every value


def test_method_parameters_are_checked_against_the_method() -> None:
    """gamma only for breadcrumbs, epsilon only for DELLA (and inside DELLA's range), rescale only for the
    methods that sparsify; each method brings its own defaults (mergekit's)."""
    dare = MergeOptions(method="dare_ties", density=0.3)
    assert dare.rescale and not dare.normalize and dare.gamma is None and dare.epsilon is None
    assert MergeOptions(method="della").epsilon == 0.15 and MergeOptions(method="della").normalize
    assert MergeOptions(method="breadcrumbs").gamma == 0.01 and not MergeOptions(method="breadcrumbs").rescale
    assert MergeOptions(method="linear").normalize and not MergeOptions(method="linear").method.uses_base
    assert dare.with_(method="ties").rescale is False  # another method: its own rescale default
    with pytest.raises(OptionError, match="gamma does not apply to ties"):
        MergeOptions(gamma=0.1)
    with pytest.raises(OptionError, match="epsilon does not apply to dare_linear"):
        MergeOptions(method="dare_linear", epsilon=0.1)
    with pytest.raises(OptionError, match="density - epsilon and density \\+ epsilon inside"):
        MergeOptions(method="della", density=0.1, epsilon=0.2)
    with pytest.raises(OptionError, match="rescale does not apply to task_arithmetic"):
        MergeOptions(method="task_arithmetic", rescale=True)
    with pytest.raises(OptionError, match="rescale rule density applies to DARE"):
        MergeOptions(method="della", density=0.5, rescale_rule="density")
    with pytest.raises(OptionError, match="seed must be an integer"):
        MergeOptions(method="dare_ties", seed=-1)
    with pytest.raises(OptionError, match="2 gammas given for 3"):
        MergeOptions(method="breadcrumbs", gamma=(0.1, 0.2)).model_gammas(3)


def test_random_drops_depend_on_the_seed_only(tiny_models: Models, tmp_path: Path) -> None:
    """Another seed, other bytes; the same seed on another block grid and thread count, the same bytes."""
    base, fts = tiny_models
    options = MergeOptions(method="dare_ties", density=0.3, seed=5)
    first = merge(base, fts, tmp_path / "a", options, Resources(threads=2))
    again = merge(base, fts, tmp_path / "b", options, Resources(max_block_elements=700, threads=1))
    other = merge(base, fts, tmp_path / "c", options.with_(seed=6), Resources(threads=2))
    assert first.output and again.output and other.output
    assert _read_all(first.output) == _read_all(again.output)
    assert _read_all(first.output) != _read_all(other.output)


@pytest.mark.parametrize(
    "options",
    [
        pytest.param(PRESETS["paper"], id="ties-paper"),
        pytest.param(PRESETS["mergekit"].with_(density=0.4), id="ties-mergekit"),
        pytest.param(MergeOptions(method="dare_ties", density=0.5, seed=2), id="dare_ties"),
    ],
)
@pytest.mark.parametrize(("block", "threads"), [(None, 2), (1000, 1)])
def test_the_sign_from_another_model(
    tiny_models: Models, tmp_path: Path, options: MergeOptions, block: int | None, threads: int
) -> None:
    """--sign-from: the sign of a third model's task vector is elected instead of the vote (the paper's
    multitask sign); byte for byte as the reference, and not the vote's merge."""
    base, fts = tiny_models
    signed = options.with_(sign_from=str(fts[2]))
    result = merge(base, fts[:2], tmp_path / "out", signed, Resources(max_block_elements=block, threads=threads))
    assert result.output is not None
    expected = reference_merge(base, fts[:2], signed)
    got = _read_all(result.output)
    assert all(got[name] == expected[name].tobytes() for name in got)
    voted = reference_merge(base, fts[:2], options)
    assert any(got[name] != voted[name].tobytes() for name in got)


def test_the_sign_from_needs_a_sign_election() -> None:
    with pytest.raises(OptionError, match="sign_from applies to methods with a sign election, not to dare_linear"):
        MergeOptions(method="dare_linear", sign_from="model")


def test_sign_from_on_the_command_line(tiny_models: Models, tmp_path: Path) -> None:
    base, fts = tiny_models
    out = tmp_path / "out"
    main(["merge", "-b", str(base), str(fts[0]), str(fts[1]), "--sign-from", str(fts[2]), "-o", str(out), "-q"])
    recipe = json.loads((out / "ooc_ties_recipe.json").read_text())
    assert recipe["options"]["sign_from"] == str(fts[2])
    expected = reference_merge(base, fts[:2], PRESETS["paper"].with_(sign_from=str(fts[2])))
    assert _read_all(out) == {name: a.tobytes() for name, a in expected.items()}


def test_every_method_is_in_the_table_of_cases() -> None:
    """CASES is the method/reference table: each declared method is compared with the reference."""
    assert {param.values[0].method.name for param in CASES} == set(METHODS)


@pytest.mark.parametrize("options", CASES)
def test_every_file_is_the_same_whatever_the_blocks_and_threads(
    tiny_models: Models, tmp_path: Path, options: MergeOptions
) -> None:
    """Not only the tensors: the recipe (thresholds, rescale factors), model card and config too."""
    base, fts = tiny_models
    one = merge(base, fts, tmp_path / "one", options, Resources(max_block_elements=700, threads=1)).output
    two = merge(base, fts, tmp_path / "two", options, Resources(threads=2)).output
    assert one is not None and two is not None
    assert tree_digest(one) == tree_digest(two)
