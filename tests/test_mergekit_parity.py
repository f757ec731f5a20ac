"""Parity with mergekit itself: every method against ``mergekit-yaml`` (0.1.5) on float32 models without
magnitude ties, within 4 ulp per element; DARE's and DELLA's random drops by their statistics, and by
their values given the same masks (see "The other methods" below); on bf16 models with ties at the
magnitude cuts, the same kept count per tensor (see "Ties at the cut" at the end).

mergekit and its torch live in a venv of their own (they pin their own numpy and transformers). One test
runs its ``mergekit-yaml`` as a program; the others' merges all run in one process of that venv
(``tests/mergekit_masked_run.py``, mergekit-yaml's own command), which imports torch and mergekit once
instead of once per merge (about 4 s each). ``.ci/run`` builds that venv and names it in
``OOC_TIES_MERGEKIT_VENV``; without it these tests are skipped with the reason.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import subprocess
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from ooc_ties import PRESETS, MergeOptions, merge
from ooc_ties.io.checkpoint import Checkpoint
from ooc_ties.kernels.drop import (
    dare_probability,
    della_keep_oracle,
    della_probability_oracle,
    random_keep_oracle,
    row_ranks_oracle,
    stream_key,
    tensor_key,
)
from ooc_ties.methods import row_length
from ooc_ties.pass1.order import band_counts
from tests.conftest import TINY

VENV = Path(os.environ.get("OOC_TIES_MERGEKIT_VENV", "/nonexistent"))
MERGEKIT_YAML = VENV / "bin" / "mergekit-yaml"
pytestmark = [
    pytest.mark.slow,  # (about 30 mergekit merges: with the other slow tests in .ci/run, not the default run)
    pytest.mark.skipif(
        not MERGEKIT_YAML.is_file(),
        reason="mergekit is not installed: set OOC_TIES_MERGEKIT_VENV to a venv with mergekit==0.1.5 (as .ci/run does)",
    ),
]

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
    method: str, base: Path | None, fts: list[Path], per_model: list[dict[str, float]], shared: dict[str, object]
) -> str:
    """A configuration of ``method``; ``base`` None: none (``linear``, which merges the ``fts`` themselves)."""
    lines = [f"merge_method: {method}"]
    if base is not None:
        lines.append(f"base_model: {json.dumps(str(base))}")
    lines.append("models:")
    for ft, params in zip(fts, per_model, strict=True):
        lines += [f"  - model: {json.dumps(str(ft))}", f"    parameters: {json.dumps(params)}"]
    if shared:
        lines.append(f"parameters: {json.dumps(shared)}")
    lines += ["dtype: float32", "out_dtype: float32", ""]
    return "\n".join(lines)


# Each merge is a Job: mergekit's output of every job comes from one run of tests/mergekit_masked_run.py
# (the fixture ``mergekit_runs``, below with the other methods).


@dataclass(frozen=True)
class Job:
    """One merge of the parity models in both tools."""

    method: str
    models: tuple[int, ...]
    """Which models, in the configuration's order: 0 the base, 1..3 the fine-tunes."""
    per_model: tuple[dict[str, float], ...]
    shared: dict[str, object]
    masks: bool = False
    """mergekit drops with ooc-ties' masks (its own drops, seeded, otherwise)."""
    exact: bool = False
    """mergekit with ooc-ties' rounding: the L1 norms summed exactly (with ``masks``), or linear's products
    rounded before the sum."""
    tied: bool = False
    """On the bf16 models with tied magnitudes (``tied_models``: 0 the base, 1 the fine-tune), not the
    float32 parity models."""

    @property
    def base(self) -> bool:
        return self.method != "linear"  # (mergekit's linear has no base: ooc-ties lays out as the first model)

    @property
    def normalize(self) -> bool:
        """Divides by the sum of the (agreeing) weights: as set, or mergekit's default for the method."""
        return bool(self.shared.get("normalize", self.method in ("linear", "ties", "della")))

    def driver_job(self, config: Path, out: Path, masks: Path | None) -> dict[str, object]:
        return {
            "config": str(config),
            "out": str(out),
            "seed": None if self.masks or not self.method.startswith(("dare", "della")) else SEED,
            "masks": str(masks) if masks else None,
            "exact_l1": self.exact and self.masks,
            "unfused_addcmul": self.exact and self.method == "linear",
        }

    def exactly(self) -> Job:
        return replace(self, exact=True)


CASES = {
    "task_arithmetic": (
        Job("task_arithmetic", (1, 2, 3), ({"weight": 1.0}, {"weight": 0.5}, {"weight": -0.3}), {"lambda": 0.4}),
        MergeOptions(method="task_arithmetic", weights=(1.0, 0.5, -0.3), lam=0.4, out_dtype="f32"),
    ),
    "task_arithmetic-normalized": (
        Job("task_arithmetic", (1, 2, 3), ({"weight": 0.7}, {"weight": 0.2}, {"weight": 0.6}), {"normalize": True}),
        MergeOptions(method="task_arithmetic", weights=(0.7, 0.2, 0.6), normalize=True, out_dtype="f32"),
    ),
    "ties": (
        Job(
            "ties",
            (1, 2, 3),
            ({"weight": 1.0, "density": 0.3}, {"weight": 0.5, "density": 0.3}, {"weight": 0.8, "density": 0.3}),
            {},
        ),
        PRESETS["mergekit"].with_(density=0.3, weights=(1.0, 0.5, 0.8), out_dtype="f32"),
    ),
    "ties-per-model-density": (
        Job(
            "ties",
            (1, 2, 3),
            ({"weight": 1.0, "density": 0.1}, {"weight": 0.9, "density": 0.4}, {"weight": 1.2, "density": 0.7}),
            {},
        ),
        PRESETS["mergekit"].with_(density=(0.1, 0.4, 0.7), weights=(1.0, 0.9, 1.2), out_dtype="f32"),
    ),
    "ties-not-normalized": (
        Job(
            "ties",
            (1, 2, 3),
            ({"weight": 1.0, "density": 0.5}, {"weight": 1.0, "density": 0.5}, {"weight": 1.0, "density": 0.5}),
            {"normalize": False, "lambda": 0.8},
        ),
        PRESETS["mergekit"].with_(density=0.5, normalize=False, lam=0.8, out_dtype="f32"),
    ),
}
"""Merges through the library (``merge`` with its options) against mergekit's of the configuration."""


@pytest.mark.parametrize("name", list(CASES))
def test_matches_mergekit(
    f32_models: tuple[Path, list[Path]], mergekit_runs: dict[str, tuple[Path, Path]], tmp_path: Path, name: str
) -> None:
    base, fts = f32_models
    result = merge(base, fts, tmp_path / "ooc", CASES[name][1])
    assert result.output is not None
    theirs, ours = _tensors(mergekit_runs[name][1]), _tensors(result.output)
    assert set(theirs) == set(ours)
    worst = _worst_ulps(theirs, ours)
    assert worst[0][1] <= MAX_ULP, worst[:5]


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


# ---------------------------------------------------------------------------------------------------
# The other methods: linear, breadcrumbs, breadcrumbs_ties, dare_ties, dare_linear, della, della_linear.
# ooc-ties runs the configuration file mergekit ran (``ooc-ties merge --config``).
#
# DARE and DELLA drop at random, and ooc-ties draws its masks from its own counter-based generator
# (ooc_ties.kernels.drop), not from torch's. So they are checked twice: (a) the fraction each tool keeps
# of each task vector is within 5 binomial standard deviations of its expectation (the density; for
# DELLA, the sum of its rank-dependent probabilities, which is the density on average over each row);
# (b) given ooc-ties' masks (torch.bernoulli made to return them), mergekit computes ooc-ties' values.
#
# Two of torch's roundings differ from ooc-ties', and the jobs run mergekit both as it is and with that
# rounding patched to ooc-ties' (the driver's docstring says how):
# * linear: torch's addcmul_ fuses ``result + tensor * weight`` into one rounding (an FMA, on this CPU);
#   ooc-ties rounds the product, then the sum.
# * the L1 rescale of DARE and DELLA: torch sums the norms in float32 in its own order (1 to 2 ulp off
#   the exact sum on the larger tensors here, so the factor is 0 to 2 ulp off); ooc-ties sums exactly.
# With the rounding patched, the outputs agree within 4 ulp per element (0 measured). As mergekit is,
# they agree within TERM_ULP ulps of the sum of the magnitudes of the terms the merge adds at each element
# (``_term_scale``; 2 to 4 measured), but not within 4 ulp of the output itself where the terms cancel
# (``base + delta`` or ``sum w_t x_t`` near 0): there an ulp of a term is many ulps of the output (up to
# 2**19 measured, dare_ties' lm_head; 14 to 39% of the elements differ by at least one ulp).

DRIVER = Path(__file__).with_name("mergekit_masked_run.py")
SEED = 0
"""ooc-ties' seed (a configuration has none: 0); also mergekit's ``--random-seed`` for its own drops."""
SIGMAS = 5.0
TERM_ULP = 8
"""mergekit as it is against ooc-ties: the largest difference in ulps of the sum of the magnitudes of the
terms at each element (``_term_scale``). A rescale factor 2 ulp off (torch's float32 L1 norms are up to 2
ulp off the exact sums here) moves a term by about 2 of its ulps, and each rounding after it (product,
sum, lambda, base) may then go the other way: up to about 8 ulp; linear's fused roundings, one per model
and the division, fewer. Measured: 3 and 2 for linear (normalized or not), 4 for dare_ties, dare_linear
and della_linear, 3 for della."""


def _one_hot(method: str, t: int) -> Job:
    """All three fine-tunes with their own densities, model ``t`` weighted 1 and the others 0, no rescale:
    ``out - base`` is model ``t``'s kept task values."""
    densities, epsilons = (0.3, 0.5, 0.7), (0.1, 0.2, 0.25)
    per_model = []
    for i in range(3):
        params = {"weight": 1.0 if i == t else 0.0, "density": densities[i]}
        if method.startswith("della"):
            params["epsilon"] = epsilons[i]
        per_model.append(params)
    return Job(method, (1, 2, 3), tuple(per_model), {"rescale": False, "normalize": False, "lambda": 1.0})


LINEAR_JOBS = {
    "linear": Job("linear", (1, 2, 3), ({"weight": 0.7}, {"weight": 0.2}, {"weight": 0.6}), {}),
    "linear-not-normalized": Job(
        "linear",
        (0, 1, 2, 3),
        ({"weight": 0.5}, {"weight": 0.3}, {"weight": -0.2}, {"weight": 0.4}),
        {"normalize": False},
    ),
}
BREADCRUMBS_JOBS = {  # in every tensor, gamma * n outliers and n - (density + gamma) * n small values dropped
    "breadcrumbs": Job(
        "breadcrumbs",
        (1, 2, 3),
        (
            {"weight": 1.0, "density": 0.5, "gamma": 0.1},
            {"weight": 0.5, "density": 0.3, "gamma": 0.05},
            {"weight": 0.8, "density": 0.7, "gamma": 0.2},
        ),
        {"lambda": 0.9},
    ),
    "breadcrumbs_ties": Job(
        "breadcrumbs_ties",
        (1, 2, 3),
        (
            {"weight": 1.0, "density": 0.4, "gamma": 0.1},
            {"weight": 0.9, "density": 0.6, "gamma": 0.02},
            {"weight": 1.2, "density": 0.2, "gamma": 0.3},
        ),
        {"normalize": True},
    ),
}
MASKED_JOBS = {
    "dare_ties": Job(
        "dare_ties",
        (1, 2, 3),
        ({"weight": 1.0, "density": 0.3}, {"weight": 0.5, "density": 0.5}, {"weight": 0.8, "density": 0.7}),
        {"rescale": True, "normalize": True},
        masks=True,
    ),
    "dare_linear": Job(
        "dare_linear",
        (1, 2, 3),
        ({"weight": 1.0, "density": 0.4}, {"weight": 0.5, "density": 0.4}, {"weight": -0.3, "density": 0.4}),
        {"rescale": True, "lambda": 0.8},
        masks=True,
    ),
    "della": Job(
        "della",
        (1, 2, 3),
        (
            {"weight": 1.0, "density": 0.3, "epsilon": 0.1},
            {"weight": 0.5, "density": 0.5, "epsilon": 0.2},
            {"weight": 0.8, "density": 0.7, "epsilon": 0.25},
        ),
        {"rescale": True},
        masks=True,
    ),
    "della_linear": Job(
        "della_linear",
        (1, 2, 3),
        (
            {"weight": 0.7, "density": 0.4, "epsilon": 0.15},
            {"weight": 0.2, "density": 0.4, "epsilon": 0.15},
            {"weight": 0.6, "density": 0.4, "epsilon": 0.15},
        ),
        {"rescale": True, "lambda": 0.9},
        masks=True,
    ),
}
DROP_METHODS = ("dare_linear", "della_linear")
DROP_JOBS = {f"{method}-model{t + 1}": _one_hot(method, t) for method in DROP_METHODS for t in range(3)}


def _tied(method: str, density: float, gamma: float | None = None) -> Job:
    """The bf16 fine-tune alone, weight 1, lambda 1, not normalized or rescaled: ``out - base`` is exactly
    its kept task values."""
    params = {"weight": 1.0, "density": density} | ({} if gamma is None else {"gamma": gamma})
    return Job(method, (1,), (params,), {"normalize": False, "rescale": False, "lambda": 1.0}, tied=True)


TIED_JOBS = {  # each cut inside a run of equal magnitudes, in every tensor (see tied_models)
    "ties-tied-0.3": _tied("ties", 0.3),
    "ties-tied-0.5": _tied("ties", 0.5),
    "breadcrumbs-tied": _tied("breadcrumbs", 0.4, 0.1),
    "breadcrumbs-tied-fewer-outliers": _tied("breadcrumbs", 0.75, 0.3),  # n_bot < 0: gamma * n cut back
    "breadcrumbs_ties-tied": _tied("breadcrumbs_ties", 0.7, 0.05),
}
EXACTLY = "-exactly"
"""The suffix of a job run with mergekit's rounding patched to ooc-ties' (:attr:`Job.exact`)."""
JOBS = {
    **{name: job for name, (job, _) in CASES.items()},
    **LINEAR_JOBS,
    **{name + EXACTLY: job.exactly() for name, job in LINEAR_JOBS.items()},
    **BREADCRUMBS_JOBS,
    **MASKED_JOBS,
    **{name + EXACTLY: job.exactly() for name, job in MASKED_JOBS.items()},
    **DROP_JOBS,
    **TIED_JOBS,
}


def _oracle_masks(job: Job, tensors: list[dict[str, np.ndarray]]) -> dict[tuple[int, str], np.ndarray]:
    """ooc-ties' keep mask of each (model index, tensor name) of ``job``'s merge, from the oracles of
    ``ooc_ties.kernels.drop``: the model index is the position in the configuration, the seed 0."""
    base = tensors[0]
    masks = {}
    for t, (i, params) in enumerate(zip(job.models, job.per_model, strict=True)):
        for name, b in base.items():
            tau = tensors[i][name] - b
            key = stream_key(SEED, t, tensor_key(name))
            if job.method.startswith("dare"):
                keep = random_keep_oracle(key, 0, tau.size, dare_probability(params["density"]))
            else:
                ncols = row_length(tau.shape)
                keep = della_keep_oracle(key, 0, tau.reshape(-1), ncols, params["density"], params["epsilon"])
            masks[t, name] = keep.reshape(tau.shape)
    return masks


def _digest(tau: np.ndarray) -> str:
    """The driver's key of a task vector: SHA-256 of its float32 bytes, C order."""
    return hashlib.sha256(np.ascontiguousarray(tau, np.float32).tobytes()).hexdigest()


def _write_masks(folder: Path, job: Job, tensors: list[dict[str, np.ndarray]]) -> None:
    folder.mkdir()
    index = {}
    for (t, name), keep in _oracle_masks(job, tensors).items():
        file = f"{t}-{name}.npy"
        np.save(folder / file, keep)
        index[_digest(tensors[job.models[t]][name] - tensors[0][name])] = file
    assert len(index) == len(job.models) * len(tensors[0])  # every task vector told apart
    (folder / "index.json").write_text(json.dumps(index))


@pytest.fixture(scope="module")
def parity_tensors(f32_models: tuple[Path, list[Path]]) -> list[dict[str, np.ndarray]]:
    """The tensors of the base and the three fine-tunes, in their shapes (DELLA ranks rows)."""
    base, fts = f32_models
    return [load_file(str(folder / "model.safetensors")) for folder in (base, *fts)]


@pytest.fixture(scope="module")
def mergekit_runs(
    f32_models: tuple[Path, list[Path]],
    parity_tensors: list[dict[str, np.ndarray]],
    tied_models: tuple[list[Path], list[dict[str, np.ndarray]]],
    tmp_path_factory: pytest.TempPathFactory,
) -> dict[str, tuple[Path, Path]]:
    """Each job's configuration file and mergekit's output, all from one run of the driver."""
    base, fts = f32_models
    root = tmp_path_factory.mktemp("mergekit-runs")
    jobs, runs = [], {}
    for name, job in JOBS.items():
        config = root / f"{name}.yml"
        folders = tied_models[0] if job.tied else [base, *fts]
        models = [folders[i] for i in job.models]
        base_model = folders[0] if job.base else None
        config.write_text(_config(job.method, base_model, models, list(job.per_model), job.shared))
        masks = root / f"{name}-masks" if job.masks else None
        if masks is not None:
            _write_masks(masks, job, parity_tensors)
        jobs.append(job.driver_job(config, root / name, masks))
        runs[name] = (config, root / name)
    (root / "jobs.json").write_text(json.dumps(jobs))
    done = subprocess.run(
        [str(VENV / "bin" / "python"), str(DRIVER), str(root / "jobs.json")],
        capture_output=True,
        text=True,
        env=dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1"),
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return runs


def _ooc_ties(config: Path, out: Path, shapes: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """``ooc-ties merge --config config -o out``: the merged tensors, in the shapes of ``shapes``."""
    from ooc_ties.cli import main

    main(["merge", "-q", "--config", str(config), "-o", str(out)])
    return _shaped(_tensors(out), shapes)


def _shaped(tensors: dict[str, np.ndarray], shapes: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    assert set(tensors) == set(shapes)
    return {name: tensors[name].reshape(shapes[name].shape) for name in shapes}


def _worst_ulps(theirs: dict[str, np.ndarray], ours: dict[str, np.ndarray]) -> list[tuple[str, int]]:
    """Each tensor's largest distance in ulps, largest first."""
    worst = {name: _ulp_distance(theirs[name], ours[name]) for name in ours}
    return sorted(worst.items(), key=lambda kv: -kv[1])


def _term_ulps(theirs: np.ndarray, ours: np.ndarray, scale: np.ndarray) -> float:
    """Largest ``|theirs - ours|`` in float32 ulps of ``scale``, element by element."""
    spacing = np.spacing(np.abs(scale).astype(np.float32)).astype(np.float64)
    return float((np.abs(theirs.astype(np.float64) - ours) / spacing).max()) if ours.size else 0.0


def _term_scale(
    job: Job, tensors: list[dict[str, np.ndarray]], name: str, masks: dict[tuple[int, str], np.ndarray]
) -> np.ndarray:
    """Per element, the sum of the magnitudes of the terms ``job``'s merge adds (float64; a rounding error
    of the sum is at most a few of its ulps, whatever the cancellation): linear's ``|w_t * x_t|`` (divided
    by the sum of the weights if normalized); for the others ``|base|`` and ``|lambda * w_t * v_t|``,
    ``v_t`` model t's task values kept by ``masks`` (ooc-ties' (model, tensor) masks), rescaled
    (``|lambda * v_t|`` if normalized: each weight is at most the sum of the agreeing ones, all positive
    here)."""
    if job.method == "linear":
        weights = [params["weight"] for params in job.per_model]
        terms = [abs(w) * np.abs(tensors[i][name].astype(np.float64)) for w, i in zip(weights, job.models, strict=True)]
        return np.sum(terms, axis=0) / (abs(sum(weights)) if job.normalize else 1.0)
    lam = abs(float(job.shared.get("lambda", 1.0)))  # type: ignore[arg-type]
    normalize = job.normalize
    scale = np.abs(tensors[0][name].astype(np.float64))
    for t, (i, params) in enumerate(zip(job.models, job.per_model, strict=True)):
        tau = np.abs(tensors[i][name].astype(np.float64) - tensors[0][name])
        kept = tau * masks[t, name]
        v = kept * (tau.sum() / kept.sum()) if kept.sum() > 0 else kept
        scale = scale + lam * v * (1.0 if normalize else abs(params["weight"]))
    return scale


@pytest.mark.parametrize("name", list(BREADCRUMBS_JOBS))
def test_breadcrumbs_match_mergekit(
    mergekit_runs: dict[str, tuple[Path, Path]], parity_tensors: list[dict[str, np.ndarray]], tmp_path: Path, name: str
) -> None:
    """breadcrumbs and breadcrumbs_ties (mergekit's ``magnitude_outliers``, both cuts non-trivial) within 4
    ulp per element (0 measured)."""
    config, theirs = mergekit_runs[name]
    ours = _ooc_ties(config, tmp_path / "ooc", parity_tensors[0])
    worst = _worst_ulps(_shaped(_tensors(theirs), parity_tensors[0]), ours)
    assert worst[0][1] <= MAX_ULP, worst[:5]


@pytest.mark.parametrize("name", list(LINEAR_JOBS))
def test_linear_matches_mergekit(
    mergekit_runs: dict[str, tuple[Path, Path]], parity_tensors: list[dict[str, np.ndarray]], tmp_path: Path, name: str
) -> None:
    """linear, the models themselves (no base; the configuration lists the models only, and ooc-ties lays
    the output out as the first). With addcmul_'s product rounded, as ooc-ties rounds it: within 4 ulp
    per element (0 measured). mergekit as it is (addcmul_ fused): within TERM_ULP ulps of the sum of the
    weighted model values' magnitudes (3 and 2 measured, normalized and not); where the weighted values
    cancel, many ulps of the output (2274 and 19010 measured)."""
    config, theirs = mergekit_runs[name]
    ours = _ooc_ties(config, tmp_path / "ooc", parity_tensors[0])
    exactly = _shaped(_tensors(mergekit_runs[name + EXACTLY][1]), parity_tensors[0])
    worst = _worst_ulps(exactly, ours)
    assert worst[0][1] <= MAX_ULP, worst[:5]
    fused = _shaped(_tensors(theirs), parity_tensors[0])
    job = JOBS[name]
    terms = {n: _term_ulps(fused[n], ours[n], _term_scale(job, parity_tensors, n, {})) for n in ours}
    assert max(terms.values()) <= TERM_ULP, sorted(terms.items(), key=lambda kv: -kv[1])[:5]


@pytest.mark.parametrize("name", list(MASKED_JOBS))
def test_given_the_masks_the_values_match_mergekit(
    mergekit_runs: dict[str, tuple[Path, Path]],
    parity_tensors: list[dict[str, np.ndarray]],
    tmp_path: Path,
    name: str,
) -> None:
    """dare_ties, dare_linear, della and della_linear with mergekit's L1 rescale, mergekit given ooc-ties'
    masks (torch.bernoulli returns them). mergekit's keep probabilities are ooc-ties': float32(density)
    for DARE, and DELLA's rank-dependent ones bit for bit. With mergekit's L1 norms summed exactly, as
    ooc-ties sums them: within 4 ulp per element (0 measured). mergekit as it is (float32 sums): within
    TERM_ULP ulps of the sum of the terms' magnitudes (4, 4, 3, 4 measured); where the terms cancel, many
    ulps of the output (524288, 8192, 32768 and 8192 measured)."""
    config, theirs = mergekit_runs[name]
    job = JOBS[name]
    base = parity_tensors[0]
    calls = json.loads((theirs / "drops.json").read_text())
    assert len(calls) == len(job.models) * len(base)
    assert all(call["bernoulli"] == 1 and call["probs_dtype"] == "torch.float32" for call in calls)
    by_digest = {call["digest"]: call for call in calls}
    for t, i in enumerate(job.models):
        params = job.per_model[t]
        for tensor, b in base.items():
            tau = parity_tensors[i][tensor] - b
            call = by_digest[_digest(tau)]
            assert call["density"] == params["density"]
            if job.method.startswith("dare"):
                assert call["probs_values"] == [dare_probability(params["density"])]
            else:
                ncols = row_length(tau.shape)
                ranks = row_ranks_oracle(tau.reshape(-1), ncols)
                expected = della_probability_oracle(ranks, ncols, params["density"], params["epsilon"])
                probs = np.load(theirs / "probs" / f"{call['digest']}.npy")
                assert np.array_equal(probs.reshape(-1), expected), tensor
    ours = _ooc_ties(config, tmp_path / "ooc", base)
    worst = _worst_ulps(_shaped(_tensors(mergekit_runs[name + EXACTLY][1]), base), ours)
    assert worst[0][1] <= MAX_ULP, worst[:5]
    as_is = _shaped(_tensors(theirs), base)
    masks = _oracle_masks(job, parity_tensors)
    terms = {n: _term_ulps(as_is[n], ours[n], _term_scale(job, parity_tensors, n, masks)) for n in ours}
    assert max(terms.values()) <= TERM_ULP, sorted(terms.items(), key=lambda kv: -kv[1])[:5]


def _kept(out: dict[str, np.ndarray], tensors: list[dict[str, np.ndarray]], i: int) -> dict[str, np.ndarray]:
    """Which task values of model ``i`` a merge weighting it alone (by 1, no rescale) kept: ``out - base``
    is exactly each kept value and 0 for each dropped one (no task value is 0, and every sum is exact)."""
    kept = {}
    for name, b in tensors[0].items():
        tau = tensors[i][name].astype(np.float64) - b
        delta = out[name].astype(np.float64) - b
        keep = delta != 0
        assert np.array_equal(delta, np.where(keep, tau, 0.0)), name
        kept[name] = keep
    return kept


def _within(kept: np.ndarray, p: np.ndarray, where: str) -> None:
    """The count of ``kept`` is within :data:`SIGMAS` standard deviations of its expectation, for
    independent keeps with probabilities ``p`` (a binomial, or a sum of unequal Bernoullis)."""
    p = np.broadcast_to(np.asarray(p, np.float64), kept.shape)
    expected, sigma = p.sum(), np.sqrt((p * (1 - p)).sum())
    count = int(kept.sum())
    assert abs(count - expected) <= SIGMAS * sigma, (
        f"{where}: {count} of {kept.size} kept, expected {expected:.1f} +- {sigma:.1f}"
    )


@pytest.mark.parametrize("tool", ["ooc-ties", "mergekit"])
@pytest.mark.parametrize("method", DROP_METHODS)
def test_kept_fractions_are_within_binomial_bounds(
    mergekit_runs: dict[str, tuple[Path, Path]],
    parity_tensors: list[dict[str, np.ndarray]],
    tmp_path: Path,
    method: str,
    tool: str,
) -> None:
    """Per tensor and model, each tool keeps a number of task values within 5 sigma of the expectation:
    ``density * n`` for DARE; for DELLA the sum of the keep probabilities (density on average over every
    row), over the whole tensor and over the larger and the smaller half of each row's magnitudes (kept
    more and less often). ooc-ties' kept values are exactly its drop oracles' masks; mergekit draws its
    own with torch.bernoulli (``--random-seed 0``)."""
    for t in range(3):
        name = f"{method}-model{t + 1}"
        config, theirs = mergekit_runs[name]
        job = JOBS[name]
        params = job.per_model[t]
        base = parity_tensors[0]
        if tool == "ooc-ties":
            out = _ooc_ties(config, tmp_path / name, base)
            oracle = _oracle_masks(job, parity_tensors)
        else:
            out, oracle = _shaped(_tensors(theirs), base), {}
        for tensor, keep in _kept(out, parity_tensors, job.models[t]).items():
            where = f"{tool} {name} {tensor}"
            if oracle:
                assert np.array_equal(keep, oracle[t, tensor]), where
            if method.startswith("dare"):
                _within(keep, np.full(keep.shape, dare_probability(params["density"])), where)
                continue
            tau = parity_tensors[job.models[t]][tensor] - base[tensor]
            ncols = row_length(tau.shape)
            ranks = row_ranks_oracle(tau.reshape(-1), ncols)
            p = della_probability_oracle(ranks, ncols, params["density"], params["epsilon"]).astype(np.float64)
            assert abs(p.sum() - params["density"] * p.size) <= 1e-6 * p.size  # density on average per row
            upper = ranks > ncols / 2
            _within(keep.reshape(-1), p, where)
            _within(keep.reshape(-1)[upper], p[upper], f"{where} (larger half of each row)")
            _within(keep.reshape(-1)[~upper], p[~upper], f"{where} (smaller half of each row)")


# ---------------------------------------------------------------------------------------------------
# Ties at the cut. Where equal magnitudes straddle a cut, which of them are kept is up to each tool:
# ooc-ties' mergekit preset (what ``--config`` uses) keeps exactly the count, ties by the lowest flat index;
# mergekit keeps whichever torch.argsort (ties) or torch.sort (breadcrumbs' magnitude_outliers) puts first.
# So on bf16 models whose task vectors have four distinct magnitudes, the tools keep the same number of
# task values per tensor, and the same number of each magnitude; the kept positions differ only among
# those holding a magnitude at a cut.

TIE_STEP = 2.0**-7
TIE_MAGNITUDES = (5, 3, 2, 1)
"""The task vectors' magnitudes, in TIE_STEP, in every tensor in the shares TIE_SHARES (rounded; 1 takes
the rest), at random places: from the top, the largest 15%, 15-35%, 35-65% and 65-100%, so each cut of
TIED_JOBS (at 5, 10, 25, 30, 50 and 75% from the top) lies inside one magnitude's run, even in the
64-value norms."""
TIE_SHARES = (0.15, 0.2, 0.3)


def _save_bf16(path: Path, tensors: dict[str, np.ndarray]) -> None:
    """Float32 ``tensors``, each value exactly a bf16 value, as a bf16 safetensors file."""
    header: dict[str, object] = {"__metadata__": {"format": "pt"}}
    data, offset = [], 0
    for name, values in tensors.items():
        bits = (np.ascontiguousarray(values, np.float32).view(np.uint32) >> 16).astype("<u2")
        assert np.array_equal((bits.astype(np.uint32) << 16).view(np.float32), values), name
        header[name] = {"dtype": "BF16", "shape": list(values.shape), "data_offsets": [offset, offset + bits.nbytes]}
        data.append(bits.tobytes())
        offset += bits.nbytes
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + b"".join(data))


@pytest.fixture(scope="module")
def tied_models(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[Path], list[dict[str, np.ndarray]]]:
    """A bf16 Llama-shaped base and one fine-tune (their folders), and their values as float32 arrays. The
    base is a multiple of TIE_STEP below 1, a task value +-m * TIE_STEP with m one of TIE_MAGNITUDES (never
    0), and their sum is a bf16 value (below 2**8 steps), so ``ft - base`` in float32 is exactly the task
    value."""
    root = tmp_path_factory.mktemp("tied")
    rng = np.random.default_rng(11)
    base, tuned = {}, {}
    for name, shape in TINY.tensors():
        size = int(np.prod(shape))
        counts = [round(share * size) for share in TIE_SHARES]
        m = rng.permutation(np.repeat(TIE_MAGNITUDES, [*counts, size - sum(counts)])).reshape(shape)
        base[name] = (rng.integers(-120, 121, shape) * TIE_STEP).astype(np.float32)
        tuned[name] = (base[name] + m * rng.choice([-1, 1], shape) * TIE_STEP).astype(np.float32)
    folders = []
    for label, tensors in (("base", base), ("ft", tuned)):
        folder = root / label
        folder.mkdir()
        _save_bf16(folder / "model.safetensors", tensors)
        (folder / "config.json").write_text(json.dumps(TINY.config()))  # torch_dtype bfloat16
        folders.append(folder)
    return folders, [base, tuned]


def _cuts(job: Job, size: int) -> tuple[int, int]:
    """``(lo, hi)``: mergekit 0.1.5 keeps the ``lo`` largest magnitudes less the ``hi`` largest. ties'
    ``magnitude``: ``k = max(1, int(density * n))``; breadcrumbs' ``magnitude_outliers``: ``target =
    int(density * n)``, ``n_bot = max(0, n - target - int(gamma * n))``."""
    params = job.per_model[0]
    density = params["density"]
    if not job.method.startswith("breadcrumbs"):
        return max(1, int(density * size)), 0
    target = int(density * size)
    bottom = max(0, size - target - int(params["gamma"] * size))
    assert band_counts(size, density, params["gamma"]) == (size - bottom, size - bottom - target)
    return size - bottom, size - bottom - target


@pytest.mark.parametrize("name", list(TIED_JOBS))
def test_ties_at_the_cut_keep_mergekits_count(
    mergekit_runs: dict[str, tuple[Path, Path]],
    tied_models: tuple[list[Path], list[dict[str, np.ndarray]]],
    tmp_path: Path,
    name: str,
) -> None:
    """On bf16 models with equal magnitudes across every cut (mergekit's dtype float32), in every tensor:
    both tools keep the expected count (ties: ``max(1, int(density * n))``, breadcrumbs: ``int(density *
    n)``) and the same number of each magnitude; their kept positions differ only where the magnitude is
    the one at a cut; and ooc-ties keeps, among equal magnitudes, the lowest flat indices. (torch does not:
    11058 to 35204 kept positions differ per job, over its 21 tensors, measured.)"""
    config, theirs_folder = mergekit_runs[name]
    job = JOBS[name]
    tensors = tied_models[1]
    base = tensors[0]
    ours = _kept(_ooc_ties(config, tmp_path / "ooc", base), tensors, 1)
    theirs = _kept(_shaped(_tensors(theirs_folder), base), tensors, 1)
    density = job.per_model[0]["density"]
    for tensor, b in base.items():
        mine, other = ours[tensor].reshape(-1), theirs[tensor].reshape(-1)
        magnitude = np.abs(tensors[1][tensor].astype(np.float64) - b).reshape(-1)
        size = magnitude.size
        lo, hi = _cuts(job, size)
        expected = lo - hi
        assert expected == (max(1, int(density * size)) if job.method == "ties" else int(density * size))
        assert (int(mine.sum()), int(other.sum())) == (expected, expected), tensor
        order = np.lexsort((np.arange(size), -magnitude))  # largest first, ties by the lowest index
        descending = magnitude[order]
        at_cuts = [descending[c - 1] for c in (lo, hi) if 0 < c < size]
        assert at_cuts and all(descending[c - 1] == descending[c] for c in (lo, hi) if 0 < c < size), tensor
        assert np.array_equal(np.sort(magnitude[mine]), np.sort(magnitude[other])), tensor
        differ = mine != other
        assert np.isin(magnitude[differ], at_cuts).all(), tensor
        oracle = np.zeros(size, np.bool_)
        oracle[order[hi:lo]] = True
        assert np.array_equal(mine, oracle), tensor
