"""End-to-end merges of tiny generated checkpoints, byte-compared with the in-RAM reference."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import numpy as np
import pytest
import safetensors
from conftest import tree_digest

from ooc_ties import PRESETS, MergeOptions, OptionError, Resources, Thresholds, merge
from ooc_ties.cli import main
from ooc_ties.io.checkpoint import Checkpoint
from ooc_ties.pass1 import votes
from ooc_ties.reference import reference_merge

Models = tuple[Path, list[Path]]


def read_all(folder: Path) -> dict[str, bytes]:
    with Checkpoint(folder) as c:
        return {n: c.read(n).tobytes() for n in c.names}


def write_models(folder: Path, *tensors: np.ndarray) -> list[Path]:
    """Single-file models ``m0.safetensors``, ``m1...`` holding one tensor ``w`` each (base first)."""
    from safetensors.numpy import save_file

    paths = [folder / f"m{i}.safetensors" for i in range(len(tensors))]
    for path, tensor in zip(paths, tensors, strict=True):
        save_file({"w": tensor}, path)
    return paths


def expected_bytes(base: Path, fts: list[Path], options: MergeOptions) -> dict[str, bytes]:
    return {n: a.tobytes() for n, a in reference_merge(base, fts, options).items()}


OPTION_CASES = {
    "paper": PRESETS["paper"],
    "mergekit": PRESETS["mergekit"],
    "paper-tensor-scope": PRESETS["paper"].with_(scope="tensor"),
    "mergekit-global-weights": PRESETS["mergekit"].with_(scope="global", weights=(1.0, 0.7, 0.4), lam=0.8),
    "topk-majority-f16": PRESETS["paper"].with_(trim="topk", density=0.35, out_dtype="f16"),
    "threshold-positive-f32": PRESETS["paper"].with_(zero_sign="positive", density=0.05, out_dtype="f32"),
    "density-1": PRESETS["paper"].with_(density=1.0),
    "mergekit-tiny-density": PRESETS["mergekit"].with_(density=0.001),
}


@pytest.mark.parametrize("name", sorted(OPTION_CASES))
def test_merge_matches_reference(tiny_models: Models, tmp_path: Path, name: str) -> None:
    base, fts = tiny_models
    options = OPTION_CASES[name]
    result = merge(base, fts, tmp_path / "out", options, Resources(threads=2, max_block_elements=2000))
    assert read_all(result.output) == expected_bytes(base, fts, options)


@pytest.mark.parametrize("preset", ["paper", "mergekit"])
def test_output_bytes_do_not_depend_on_blocks_threads_or_direct_io(
    tiny_models: Models, tmp_path: Path, preset: str
) -> None:
    base, fts = tiny_models
    outputs = set()
    cases = [(None, 1, True), (4096, 2, True), (1000, 2, False), (333, 1, True), (97, 2, True), (None, 2, False)]
    for i, (block, threads, direct) in enumerate(cases):
        out = tmp_path / f"out{i}"
        resources = Resources(threads=threads, max_block_elements=block, direct_io=direct)
        merge(base, fts, out, PRESETS[preset], resources)
        outputs.add((out / "model.safetensors").read_bytes())
    assert len(outputs) == 1


def test_two_models_commute(tiny_models: Models, tmp_path: Path) -> None:
    # With two models every float32 sum has two terms, and a + b == b + a exactly.
    base, fts = tiny_models
    a = merge(base, fts[:2], tmp_path / "ab", PRESETS["paper"], Resources(threads=1))
    b = merge(base, fts[1::-1], tmp_path / "ba", PRESETS["paper"], Resources(threads=2))
    assert read_all(a.output) == read_all(b.output)


def test_density_one_with_agreeing_signs_is_the_plain_mean(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    base = rng.standard_normal((40, 30)).astype(np.float32)
    deltas = [np.abs(rng.standard_normal((40, 30))).astype(np.float32) for _ in range(3)]
    paths = write_models(tmp_path, base, *(base + d for d in deltas))
    result = merge(paths[0], paths[1:], tmp_path / "out", PRESETS["paper"].with_(density=1.0))
    with Checkpoint(result.output) as c:
        merged = np.array(c.read("w")).reshape(40, 30)
    taus = [(base + d) - base for d in deltas]
    expected = base + np.float32(1.0) * (((taus[0] + taus[1]) + taus[2]) / np.float32(3))
    np.testing.assert_array_equal(merged, expected)


def test_sharded_inputs_and_outputs(sharded_models: Models, tmp_path: Path) -> None:
    base, fts = sharded_models
    assert (base / "model.safetensors.index.json").exists()
    result = merge(base, fts, tmp_path / "out", PRESETS["paper"], Resources(shard_size=70_000, threads=2))
    index = json.loads((result.output / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 2 and shards[0].startswith("model-00001-of-")
    assert index["metadata"]["total_size"] == sum(len(b) for b in read_all(result.output).values())
    assert read_all(result.output) == expected_bytes(base, fts, PRESETS["paper"])


def test_output_folder_is_a_loadable_hf_model(tiny_models: Models, tmp_path: Path) -> None:
    base, fts = tiny_models
    result = merge(base, fts, tmp_path / "out", PRESETS["paper"])
    names = sorted(p.name for p in result.output.iterdir())
    expected = ["README.md", "config.json", "generation_config.json", "mergekit_config.yml", "model.safetensors"]
    assert names == [*expected, "ooc_ties_recipe.json"]
    raw = (result.output / "model.safetensors").read_bytes()
    # The safetensors package validates the header and layout (contiguous, in bounds) when it parses.
    tensors = dict(safetensors.deserialize(raw))
    with Checkpoint(base) as b:
        assert sorted(tensors) == sorted(b.names)
        for name, info in tensors.items():
            assert info["dtype"].upper() in ("BF16", "BFLOAT16") and tuple(info["shape"]) == b.info(name).shape
    with safetensors.safe_open(result.output / "model.safetensors", "numpy") as f:
        metadata = f.metadata()
    assert metadata["format"] == "pt"
    assert json.loads(metadata["ooc_ties"])["density"] == 0.2
    recipe = json.loads((result.output / "ooc_ties_recipe.json").read_text())
    assert recipe["options"]["scope"] == "global" and len(recipe["thresholds"]["groups"][""]) == 3
    assert (result.output / "config.json").read_bytes() == (base / "config.json").read_bytes()


def test_output_dtype_updates_config(tiny_models: Models, tmp_path: Path) -> None:
    base, fts = tiny_models
    result = merge(base, fts, tmp_path / "out", PRESETS["paper"].with_(out_dtype="f32"))
    assert json.loads((result.output / "config.json").read_text())["torch_dtype"] == "float32"


def test_inputs_are_untouched_and_nothing_is_left_beside_the_output(tiny_models: Models, tmp_path: Path) -> None:
    base, fts = tiny_models
    before = [tree_digest(p) for p in (base, *fts)]
    merge(base, fts, tmp_path / "out", PRESETS["mergekit"])
    assert [tree_digest(p) for p in (base, *fts)] == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_cli_merge_matches_library(tiny_models: Models, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    base, fts = tiny_models
    main(
        [
            "merge",
            "--base",
            str(base),
            *map(str, fts),
            "-o",
            str(tmp_path / "cli"),
            "--preset",
            "mergekit",
            "--density",
            "0.3",
            "--weights",
            "1",
            "0.5",
            "0.25",
            "--lambda",
            "0.9",
            "--threads",
            "2",
            "--fsync",
            "--no-direct-io",
            "-q",
        ]
    )
    options = PRESETS["mergekit"].with_(density=0.3, weights=(1, 0.5, 0.25), lam=0.9)
    assert read_all(tmp_path / "cli") == expected_bytes(base, fts, options)
    assert capsys.readouterr().err == ""


def test_cli_dry_run_writes_nothing(tiny_models: Models, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    base, fts = tiny_models
    main(["merge", "--base", str(base), *map(str, fts), "-o", str(tmp_path / "out"), "--dry-run"])
    out = capsys.readouterr().out
    assert "tensors: 21 merged" in out and "peak memory" in out and "disk needed" in out
    assert not (tmp_path / "out").exists()


def test_overwrite_replaces_an_existing_output(tiny_models: Models, tmp_path: Path) -> None:
    base, fts = tiny_models
    out = tmp_path / "out"
    out.mkdir()
    (out / "stale.txt").write_text("old")
    merge(base, fts, out, PRESETS["paper"], overwrite=True)
    assert not (out / "stale.txt").exists() and (out / "model.safetensors").exists()


def test_mixed_input_dtypes_are_decoded(tmp_path: Path) -> None:
    from safetensors.numpy import save_file

    rng = np.random.default_rng(5)
    base = (rng.standard_normal(500) * 0.1).astype(np.float32)
    ft1 = (base + rng.standard_normal(500).astype(np.float32) * 0.01).astype(np.float16)
    ft2 = (base + rng.standard_normal(500).astype(np.float32) * 0.01).astype(np.float64)
    paths = [tmp_path / f"{n}.safetensors" for n in ("b", "f1", "f2")]
    for path, tensor in zip(paths, (base, ft1, ft2), strict=True):
        save_file({"w": tensor, "ids": np.arange(7, dtype=np.int64)}, path)
    result = merge(
        paths[0], paths[1:], tmp_path / "out", PRESETS["paper"].with_(density=0.5), Resources(max_block_elements=64)
    )
    assert read_all(result.output) == expected_bytes(paths[0], paths[1:], PRESETS["paper"].with_(density=0.5))
    with Checkpoint(result.output) as c:
        assert c.read("ids").tolist() == list(range(7))


@pytest.mark.parametrize("preset", ["paper", "mergekit"])
def test_reused_thresholds_give_the_same_bytes(tiny_models: Models, tmp_path: Path, preset: str) -> None:
    base, fts = tiny_models
    first = merge(base, fts, tmp_path / "first", PRESETS[preset], Resources(max_block_elements=5000))
    other = PRESETS[preset].with_(lam=0.7, out_dtype="f32")
    reused = merge(
        base, fts, tmp_path / "reused", other, Resources(max_block_elements=333), thresholds=first.thresholds
    )
    assert reused.bytes_read < first.bytes_read
    assert read_all(reused.output) == expected_bytes(base, fts, other)


def test_thresholds_round_trip_through_the_cli(tiny_models: Models, tmp_path: Path) -> None:
    base, fts = tiny_models
    saved = tmp_path / "thr.json"
    common = ["merge", "--base", str(base), *map(str, fts), "--preset", "mergekit", "-q"]
    main([*common, "-o", str(tmp_path / "a"), "--save-thresholds", str(saved)])
    main([*common, "-o", str(tmp_path / "b"), "--thresholds", str(saved)])
    assert read_all(tmp_path / "a") == read_all(tmp_path / "b")
    assert Thresholds.load(saved) == merge(base, fts, tmp_path / "c", PRESETS["mergekit"]).thresholds


def test_thresholds_from_other_options_or_models_are_refused(
    tiny_models: Models, sharded_models: Models, tmp_path: Path
) -> None:
    base, fts = tiny_models
    thresholds = merge(base, fts, tmp_path / "first", PRESETS["paper"]).thresholds
    with pytest.raises(OptionError, match=r"density 0\.2 \(merge has 0\.3\)"):
        merge(base, fts, tmp_path / "x", PRESETS["paper"].with_(density=0.3), thresholds=thresholds)
    with pytest.raises(OptionError, match="weights"):
        merge(base, fts, tmp_path / "y", PRESETS["paper"].with_(weights=(1, 1, 2)), thresholds=thresholds)
    with pytest.raises(OptionError, match="computed for 3 fine-tuned models; this merge has 2"):
        merge(base, fts[:2], tmp_path / "z", PRESETS["paper"], thresholds=thresholds)
    other_base, other_fts = sharded_models  # same shapes and count, other files
    with pytest.raises(OptionError, match="computed for other inputs"):
        merge(other_base, other_fts, tmp_path / "w", PRESETS["paper"], thresholds=thresholds)
    (tmp_path / "bad.json").write_text('{"format": "something else"}')
    with pytest.raises(OptionError, match=r"bad\.json"):
        Thresholds.load(tmp_path / "bad.json")
    assert not any(p.name in ("w", "x", "y", "z") for p in tmp_path.iterdir())


@pytest.mark.parametrize(
    ("spill", "output", "block"),
    [
        (False, "out", 64),
        (True, "out", 64),
        (False, "out.zarr", 64),
        (True, "out.zarr", 64),
        # blocks of 4 pages: written past the page cache, then patched through it
        (False, "out", 4096),
        (True, "out", 4096),
    ],
)
def test_a_wrong_majority_guess_is_corrected(
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
    spill: bool,
    output: str,
    block: int,
) -> None:
    """Pass 1 guesses the majority sign from every 16th block; pass 2 must settle it exactly by
    correcting the open elements it recorded (in memory, or spilled to a file), without reading again."""
    from ooc_ties import pass2
    from ooc_ties.convert import convert
    from ooc_ties.pass1.costs import VOTE_STRIDE

    if spill:
        monkeypatch.setattr(pass2, "PATCH_SHARE", 1 << 62)  # no room in memory: every record is spilled
    n_blocks = 4 * VOTE_STRIDE  # a sample of 4 blocks: decisive, and wrong
    sampled = (np.arange(n_blocks * block) // block) % VOTE_STRIDE == 0
    sign = np.where(sampled, 1.0, -1.0).astype(np.float32)  # the sample votes +, the whole model votes -
    tau1 = sign.copy()
    tau2 = sign.copy()
    tau2[::4] = -tau2[::4]  # exact zero votes between non-zero values: these follow the majority sign
    base = np.zeros(n_blocks * block, np.float32)
    paths = write_models(tmp_path, base, base + tau1, base + tau2)
    options = PRESETS["paper"].with_(density=1.0)
    with caplog.at_level("INFO", logger="ooc_ties"):
        result = merge(paths[0], paths[1:], tmp_path / output, options, Resources(max_block_elements=block, threads=2))
    assert "guessed +1, exact -1" in caplog.text
    assert f"{n_blocks} blocks corrected in place, 0 merged again" in caplog.text
    assert ("spill to" in caplog.text) == spill
    assert result.bytes_read == result.plan.merge_input_bytes * (n_blocks // VOTE_STRIDE + n_blocks) // n_blocks
    assert result.thresholds.majority[""] == -1
    assert result.output is not None
    assert not list(result.output.rglob("open-elements*"))  # the spill file went with the merge
    if output.endswith(".zarr"):
        convert(result.output, tmp_path / "back")
        result = dataclasses.replace(result, output=tmp_path / "back")
    assert result.output is not None
    assert read_all(result.output) == expected_bytes(paths[0], paths[1:], options)
    with Checkpoint(result.output) as c:
        assert (np.asarray(c.read("w"))[::4] == -1).all()  # the open elements took the exact sign


def test_the_thresholds_read_estimates_the_majority_from_every_block(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The sampled blocks vote +, the model votes -: the votes counted in the thresholds' one read, under
    thresholds estimated from the sample, see the whole model and guess right, so nothing is corrected."""
    from ooc_ties.pass1.costs import VOTE_STRIDE

    block, n_blocks = 256, 8 * VOTE_STRIDE
    rng = np.random.default_rng(21)
    sampled = (np.arange(n_blocks * block) // block) % VOTE_STRIDE == 0
    sign = np.where(sampled, 1.0, -1.0).astype(np.float32)
    tau1 = (sign * rng.uniform(0.5, 1.5, sign.size)).astype(np.float32)
    tau2 = (sign * rng.uniform(0.5, 1.5, sign.size)).astype(np.float32)
    base = np.zeros(n_blocks * block, np.float32)
    paths = write_models(tmp_path, base, base + tau1, base + tau2)
    options = PRESETS["paper"].with_(density=0.9)
    with caplog.at_level("DEBUG", logger="ooc_ties"):
        result = merge(paths[0], paths[1:], tmp_path / "out", options, Resources(max_block_elements=block))
    assert "estimated from every block" in caplog.text
    assert re.search(r"sample [1-9][0-9]* vs 0,", caplog.text)  # (the sample alone would guess +)
    assert "guessed" not in caplog.text  # (logged for a wrong guess)
    assert result.thresholds.majority[""] == -1
    assert read_all(result.output) == expected_bytes(paths[0], paths[1:], options)


def test_half_the_elements_open_are_recorded_and_nothing_is_read_again(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """However many open elements there are, pass 2 records them all: pass 1 only reads its sample."""
    block = 1 << 16
    rng = np.random.default_rng(5)
    tau1 = rng.choice(np.array([-1.0, 1.0], np.float32), 16 * block)
    tau2 = np.where(rng.random(16 * block) < 0.5, -tau1, tau1).astype(np.float32)  # half cancel exactly
    base = np.zeros(16 * block, np.float32)
    paths = write_models(tmp_path, base, base + tau1, base + tau2)
    options = PRESETS["paper"].with_(density=1.0)
    with caplog.at_level("DEBUG", logger="ooc_ties"):
        result = merge(paths[0], paths[1:], tmp_path / "out", options, Resources(max_block_elements=block))
    assert "(recordable)" in caplog.text and "full vote" not in caplog.text
    assert result.bytes_read == result.plan.merge_input_bytes * 17 // 16  # the vote sample and the merge
    assert read_all(result.output) == expected_bytes(paths[0], paths[1:], options)


def test_the_full_vote_counts_the_sampled_blocks_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Only the sampled blocks tip the majority (the others tie exactly), and not decisively enough to
    guess from where pass 2 could not record the open elements (a tie quota or a drop decides them): the
    full vote must add the sample's votes to those of the other blocks."""
    from ooc_ties.pass1.costs import VOTE_STRIDE

    monkeypatch.setattr(votes, "records_open_elements", lambda options: False)

    block, blocks = 1 << 14, 16
    rng = np.random.default_rng(11)
    tau1 = np.empty(blocks * block, np.float32)
    cancel = np.zeros(blocks * block, bool)
    for k in range(blocks):
        tip = 100 if k % VOTE_STRIDE == 0 else 0  # the blocks vote_sample takes
        kept = block // 2
        signs = np.concatenate(
            [np.ones(kept // 2 + tip), -np.ones(kept - kept // 2 - tip), rng.choice([-1.0, 1.0], block - kept)]
        )
        is_cancelled = np.concatenate([np.zeros(kept, bool), np.ones(block - kept, bool)])
        order = rng.permutation(block)
        tau1[k * block : (k + 1) * block] = signs[order]
        cancel[k * block : (k + 1) * block] = is_cancelled[order]
    tau2 = np.where(cancel, -tau1, tau1).astype(np.float32)
    base = np.zeros(blocks * block, np.float32)
    paths = write_models(tmp_path, base, base + tau1, base + tau2)
    options = PRESETS["paper"].with_(density=1.0)
    with caplog.at_level("DEBUG", logger="ooc_ties.pass1"):
        result = merge(paths[0], paths[1:], tmp_path / "out", options, Resources(max_block_elements=block))
    assert "full vote" in caplog.text
    assert read_all(result.output) == expected_bytes(paths[0], paths[1:], options)
    with Checkpoint(result.output) as c:
        merged = np.asarray(c.read("w"))
    assert (merged[cancel] == 1).all()  # the open elements took the majority sign, +1
