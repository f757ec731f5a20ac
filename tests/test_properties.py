"""Property tests: random small checkpoints and options, engine against the in-RAM reference.

Hypothesis draws the tensors (shapes, dtypes, values rich in ties and exact cancellations), the
number of fine-tuned models, every merge option and the block size; the out-of-core merge must give the
reference's bytes every time. By default the dtypes, model counts and output dtypes keep to
``conftest.SHARED_LAYOUTS`` (kernels the other tests compile too); ``pytest -m slow`` draws them all.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import pytest
from conftest import LAYOUT_SCOPES, SHARED_LAYOUTS
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.numpy import save_file

from ooc_ties import MergeOptions, Resources, merge
from ooc_ties.io.checkpoint import Checkpoint
from ooc_ties.reference import reference_merge

FLOATS = {"f32": np.float32, "f16": np.float16, "f64": np.float64}


def _kinds(every: bool, n_models: int) -> list[str]:
    """The tensor dtypes drawn for ``n_models`` fine-tuned models."""
    return sorted(k for k in FLOATS if every or (k, n_models) in SHARED_LAYOUTS)


@st.composite
def checkpoints(draw: st.DrawFn, every: bool) -> tuple[list[dict[str, np.ndarray]], int]:
    seed = draw(st.integers(0, 2**31))
    rng = np.random.default_rng(seed)
    n_models = draw(st.integers(1, 4) if every else st.integers(1, 3))
    n_tensors = draw(st.integers(1, 4))
    tensors = {}
    for i in range(n_tensors):
        shape = tuple(draw(st.lists(st.integers(1, 9), min_size=1, max_size=3)))
        kind = draw(st.sampled_from(_kinds(every, n_models)))
        tensors[f"t{i}.weight"] = (shape, kind)
    step = np.float32(2.0**-6)
    models: list[dict[str, np.ndarray]] = [{} for _ in range(n_models + 1)]
    for name, (shape, kind) in tensors.items():
        base = rng.integers(-8, 9, shape).astype(np.float32) * step
        models[0][name] = base.astype(FLOATS[kind])
        for m in range(1, n_models + 1):
            delta = rng.integers(-3, 4, shape).astype(np.float32) * step  # few levels: ties and zero sums
            models[m][name] = (base + delta).astype(FLOATS[kind])
    for model in models:
        model["position_ids"] = np.arange(5, dtype=np.int64)
    return models, seed


def options(every: bool) -> st.SearchStrategy[MergeOptions]:
    """Merge options; the output dtype is each tensor's own (any with ``every``)."""
    return st.builds(
        MergeOptions,
        density=st.sampled_from([0.05, 0.2, 0.5, 0.9, 1.0]),
        lam=st.sampled_from([1.0, 0.6, 1.5]),
        scope=st.sampled_from(["global", "tensor"]),
        trim=st.sampled_from(["threshold", "topk"]),
        zero_sign=st.sampled_from(["majority", "positive"]),
        out_dtype=st.sampled_from([None, "bf16", "f16", "f32"] if every else [None]),
    )


@pytest.mark.parametrize("every", LAYOUT_SCOPES)
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), weighted=st.booleans(), block=st.integers(1, 64), threads=st.integers(1, 2))
def test_engine_equals_reference(
    tmp_path_factory: pytest.TempPathFactory, every: bool, data: st.DataObject, weighted: bool, block: int, threads: int
) -> None:
    models, seed = data.draw(checkpoints(every), label="models")
    merge_options = data.draw(options(every), label="options")
    if weighted:
        rng = np.random.default_rng(seed + 1)
        weights = tuple(float(w) for w in rng.uniform(-0.5, 2.0, len(models) - 1))
        merge_options = merge_options.with_(weights=weights)
    with tempfile.TemporaryDirectory(dir=tmp_path_factory.getbasetemp()) as folder:
        root = Path(folder)
        paths = []
        for i, tensors in enumerate(models):
            paths.append(root / f"m{i}.safetensors")
            save_file(tensors, paths[-1])
        resources = Resources(threads=threads, max_block_elements=block)
        result = merge(paths[0], paths[1:], root / "out", merge_options, resources)
        expected = reference_merge(paths[0], paths[1:], merge_options)
        with Checkpoint(result.output) as merged:
            assert sorted(merged.names) == sorted(expected)
            for name in merged.names:
                assert merged.read(name).tobytes() == expected[name].tobytes(), name
