"""The ``paper`` preset against the TIES reference algorithm run in torch (skipped without torch).

The reference code flattens every model into one vector, trims with ``kthvalue``, elects signs with
``sign(sum)`` and the majority rule, and takes the disjoint mean, all in torch float32. This file
restates those steps in torch (same operations, same order) and demands the same bytes from ooc-ties,
in float32 and after torch's own bf16 rounding.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ooc_ties import PRESETS, Resources, merge
from ooc_ties.io.checkpoint import Checkpoint

torch = pytest.importorskip("torch")


def _flat(checkpoint: Checkpoint) -> tuple[list[str], list[int], torch.Tensor]:
    names = list(checkpoint.names)
    parts = []
    for name in names:
        raw = np.array(checkpoint.read(name))
        parts.append(torch.from_numpy(raw.view(np.int16)).view(torch.bfloat16).float())
    return names, [p.numel() for p in parts], torch.cat(parts)


def paper_ties(finetuned: torch.Tensor, base: torch.Tensor, density: float, lam: float) -> torch.Tensor:
    """TIES as the reference code computes it: (models x params) float32 -> merged float32 vector."""
    task = finetuned - base
    d = task.shape[1]
    k = d - int(d * density)  # keep the top int(d * density): threshold at the k-th smallest
    kth = task.abs().kthvalue(k, dim=1, keepdim=True).values
    trimmed = task * (task.abs() >= kth)
    sign = torch.sign(trimmed.sum(dim=0))
    sign[sign == 0] = torch.sign(sign.sum())
    rows = torch.where(sign.unsqueeze(0) > 0, trimmed > 0, trimmed < 0)
    selected = trimmed * rows
    counts = (selected != 0).sum(dim=0).float()
    merged = selected.sum(dim=0) / torch.clamp(counts, min=1)
    return base + lam * merged


@pytest.mark.parametrize(("density", "lam", "models"), [(0.2, 1.0, 3), (0.5, 0.7, 2), (0.05, 1.3, 4)])
def test_paper_preset_equals_the_reference_algorithm_in_torch(
    tmp_path: Path, density: float, lam: float, models: int
) -> None:
    from conftest import TINY

    from ooc_ties.synthetic import generate_model

    base_path, ft_paths = generate_model(TINY, tmp_path / "m", n_finetuned=models, seed=11)
    options = PRESETS["paper"].with_(density=density, lam=lam)
    f32 = merge(
        base_path, ft_paths, tmp_path / "f32", options.with_(out_dtype="f32"), Resources(max_block_elements=3000)
    )
    bf16 = merge(base_path, ft_paths, tmp_path / "bf16", options, Resources(max_block_elements=5000))

    with Checkpoint(base_path) as b:
        names, sizes, base = _flat(b)
    fts = []
    for path in ft_paths:
        with Checkpoint(path) as c:
            fts.append(_flat(c)[2])
    expected = paper_ties(torch.stack(fts), base, density, lam)
    expected_bf16 = expected.to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)
    expected_f32 = expected.numpy()

    offset = 0
    with Checkpoint(f32.output) as got32, Checkpoint(bf16.output) as got16:
        for name, size in zip(names, sizes, strict=True):
            want32 = expected_f32[offset : offset + size]
            np.testing.assert_array_equal(np.asarray(got32.read(name)).view(np.uint32), want32.view(np.uint32), name)
            np.testing.assert_array_equal(np.asarray(got16.read(name)), expected_bf16[offset : offset + size], name)
            offset += size
