"""Parity with mergekit itself: each deterministic method against ``mergekit-yaml`` (0.1.5) on float32
models without magnitude ties, within 4 ulp per element.

mergekit and its torch live in a venv of their own (they pin their own numpy and transformers); the
tests run its ``mergekit-yaml`` as a program. ``.ci/run`` builds that venv and names it in
``OOC_TIES_MERGEKIT_VENV``; without it these tests are skipped with the reason.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

from ooc_ties import PRESETS, MergeOptions, merge
from ooc_ties.io.checkpoint import Checkpoint
from tests.conftest import TINY

VENV = Path(os.environ.get("OOC_TIES_MERGEKIT_VENV", "/nonexistent"))
MERGEKIT_YAML = VENV / "bin" / "mergekit-yaml"
pytestmark = pytest.mark.skipif(
    not MERGEKIT_YAML.is_file(),
    reason="mergekit is not installed: set OOC_TIES_MERGEKIT_VENV to a venv with mergekit==0.1.5 (as .ci/run does)",
)

MAX_ULP = 4


@pytest.fixture(scope="module")
def f32_models(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Path]]:
    """A float32 Llama-shaped base and three fine-tunes whose task vectors have no two equal magnitudes
    in any tensor (where mergekit keeps one of two tied values is up to torch.argsort). Random float32
    task vectors tie now and then, so they are made tie-free by construction: the base is a multiple of
    2**-10 below 2**-4, a task value is +-k * 2**-20 with every k distinct, and their sum is exact."""
    root = tmp_path_factory.mktemp("f32")
    rng = np.random.default_rng(5)
    shapes = TINY.tensors()
    base = {
        name: (np.round(rng.standard_normal(shape) * 20).clip(-60, 60) / 1024).astype(np.float32)
        for name, shape in shapes
    }
    config = dict(TINY.config(), torch_dtype="float32")
    folders = []
    for i in range(4):
        folder = root / ("base" if i == 0 else f"ft{i}")
        folder.mkdir()
        tensors = base if i == 0 else {name: _untied(base[name], rng) for name in base}
        save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})
        (folder / "config.json").write_text(json.dumps(config))
        folders.append(folder)
    return folders[0], folders[1:]


def _untied(base: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """``base`` plus a task vector of distinct magnitudes ``k * 2**-20`` (up to about 0.03), random signs."""
    k = rng.permutation(base.size).reshape(base.shape) + 1
    tau = (k * rng.choice([-1, 1], base.shape)).astype(np.float64) * 2.0**-20
    tuned = (base.astype(np.float64) + tau).astype(np.float32)
    assert np.array_equal(tuned.astype(np.float64) - base, tau)  # exact: the sum needs < 24 bits
    return tuned


def _mergekit(config: str, out: Path) -> None:
    yml = out.parent / f"{out.name}.yml"
    yml.write_text(config)
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    done = subprocess.run(
        [str(MERGEKIT_YAML), str(yml), str(out), "--no-cuda", "--no-copy-tokenizer", "--quiet"],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]


def _tensors(folder: Path) -> dict[str, np.ndarray]:
    found = sorted(folder.glob("*.safetensors"))
    out: dict[str, np.ndarray] = {}
    for path in found:
        with Checkpoint(path) as checkpoint:
            out.update({name: np.array(checkpoint.read(name)) for name in checkpoint.names})
    return out


def _ulp_distance(a: np.ndarray, b: np.ndarray) -> int:
    """Largest distance in float32 units in the last place (on the ordered integer line)."""
    ia = a.astype(np.float32).view(np.int32).astype(np.int64)
    ib = b.astype(np.float32).view(np.int32).astype(np.int64)
    ia = np.where(ia < 0, -(ia & 0x7FFFFFFF), ia)
    ib = np.where(ib < 0, -(ib & 0x7FFFFFFF), ib)
    return int(np.abs(ia - ib).max()) if a.size else 0


def _config(
    method: str, base: Path, fts: list[Path], per_model: list[dict[str, float]], shared: dict[str, object]
) -> str:
    lines = [f"merge_method: {method}", f"base_model: {json.dumps(str(base))}", "models:"]
    for ft, params in zip(fts, per_model, strict=True):
        lines += [f"  - model: {json.dumps(str(ft))}", f"    parameters: {json.dumps(params)}"]
    if shared:
        lines.append(f"parameters: {json.dumps(shared)}")
    lines += ["dtype: float32", "out_dtype: float32", ""]
    return "\n".join(lines)


CASES = [
    pytest.param(
        "task_arithmetic",
        [{"weight": 1.0}, {"weight": 0.5}, {"weight": -0.3}],
        {"lambda": 0.4},
        MergeOptions(method="task_arithmetic", weights=(1.0, 0.5, -0.3), lam=0.4, out_dtype="f32"),
        id="task_arithmetic",
    ),
    pytest.param(
        "task_arithmetic",
        [{"weight": 0.7}, {"weight": 0.2}, {"weight": 0.6}],
        {"normalize": True},
        MergeOptions(method="task_arithmetic", weights=(0.7, 0.2, 0.6), normalize=True, out_dtype="f32"),
        id="task_arithmetic-normalized",
    ),
    pytest.param(
        "ties",
        [{"weight": 1.0, "density": 0.3}, {"weight": 0.5, "density": 0.3}, {"weight": 0.8, "density": 0.3}],
        {},
        PRESETS["mergekit"].with_(density=0.3, weights=(1.0, 0.5, 0.8), out_dtype="f32"),
        id="ties",
    ),
    pytest.param(
        "ties",
        [{"weight": 1.0, "density": 0.1}, {"weight": 0.9, "density": 0.4}, {"weight": 1.2, "density": 0.7}],
        {},
        PRESETS["mergekit"].with_(density=(0.1, 0.4, 0.7), weights=(1.0, 0.9, 1.2), out_dtype="f32"),
        id="ties-per-model-density",
    ),
    pytest.param(
        "ties",
        [{"weight": 1.0, "density": 0.5}, {"weight": 1.0, "density": 0.5}, {"weight": 1.0, "density": 0.5}],
        {"normalize": False, "lambda": 0.8},
        PRESETS["mergekit"].with_(density=0.5, normalize=False, lam=0.8, out_dtype="f32"),
        id="ties-not-normalized",
    ),
]


@pytest.mark.parametrize(("method", "per_model", "shared", "options"), CASES)
def test_matches_mergekit(
    f32_models: tuple[Path, list[Path]],
    tmp_path: Path,
    method: str,
    per_model: list[dict[str, float]],
    shared: dict[str, object],
    options: MergeOptions,
) -> None:
    base, fts = f32_models
    _mergekit(_config(method, base, fts, per_model, shared), tmp_path / "mergekit")
    result = merge(base, fts, tmp_path / "ooc", options)
    assert result.output is not None
    theirs, ours = _tensors(tmp_path / "mergekit"), _tensors(result.output)
    assert set(theirs) == set(ours)
    worst = {name: _ulp_distance(theirs[name], ours[name]) for name in ours}
    assert max(worst.values()) <= MAX_ULP, sorted(worst.items(), key=lambda kv: -kv[1])[:5]
    shutil.rmtree(tmp_path / "mergekit")


def test_the_same_config_file_in_both_tools(f32_models: tuple[Path, list[Path]], tmp_path: Path) -> None:
    """``ooc-ties merge --config`` and ``mergekit-yaml`` on one file, as mergekit's examples write them (the
    base listed again under ``models``, top-level parameters)."""
    from ooc_ties.cli import main

    base, fts = f32_models
    lines = ["models:", f"  - model: {json.dumps(str(base))}"]
    for ft, (density, weight) in zip(fts, [(0.3, 1.0), (0.6, 0.4), (0.2, 0.8)], strict=True):
        lines += [f"  - model: {json.dumps(str(ft))}", f"    parameters: {{density: {density}, weight: {weight}}}"]
    lines += ["merge_method: ties", f"base_model: {json.dumps(str(base))}", "parameters: {normalize: true}"]
    lines += ["dtype: float32", ""]
    config = "\n".join(lines)
    _mergekit(config, tmp_path / "mergekit")
    (tmp_path / "merge.yml").write_text(config)
    main(["merge", "-q", "--config", str(tmp_path / "merge.yml"), "-o", str(tmp_path / "ooc")])
    theirs, ours = _tensors(tmp_path / "mergekit"), _tensors(tmp_path / "ooc")
    assert set(theirs) == set(ours)
    worst = max(_ulp_distance(theirs[name], ours[name]) for name in ours)
    assert worst <= MAX_ULP
