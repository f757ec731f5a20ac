"""Shared fixtures: tiny real-shaped models, generated once per session; the kernel layouts the tests
keep to; and one Numba cache for the test process and the ``ooc-ties`` processes it starts."""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest


def _numba_cache_for_the_session() -> str | None:
    """Numba keeps the kernels it compiles beside their module (``ooc_ties/kernels/__pycache__``), where
    every process finds them, unless that folder is not writable (a read-only install): then it uses a
    per-user folder, or none, and each merge process the tests start would compile its kernels again.
    In that case this session gets a cache folder of its own, which those processes inherit through the
    environment; returns it (to remove at the end), or ``None`` where nothing was needed."""
    if os.environ.get("NUMBA_CACHE_DIR"):
        return None
    spec = importlib.util.find_spec("ooc_ties")  # finds the package without importing it (or Numba)
    if spec is None or not spec.submodule_search_locations:
        return None
    kernels = Path(next(iter(spec.submodule_search_locations)), "kernels")
    pycache = kernels / "__pycache__"
    if os.access(pycache if pycache.is_dir() else kernels, os.W_OK):
        return None
    folder = tempfile.mkdtemp(prefix="ooc-ties-numba-cache-")
    os.environ["NUMBA_CACHE_DIR"] = folder
    return folder


SESSION_NUMBA_CACHE = _numba_cache_for_the_session()  # before anything imports Numba

from ooc_ties.synthetic import LlamaShape, generate_model  # noqa: E402


def pytest_unconfigure(config: pytest.Config) -> None:
    if SESSION_NUMBA_CACHE is not None:
        shutil.rmtree(SESSION_NUMBA_CACHE, ignore_errors=True)


TINY = LlamaShape(hidden=64, intermediate=176, layers=2, heads=4, kv_heads=2, vocab=384)

# Numba compiles a kernel once per argument types: the input dtype, the number of fine-tuned models (a
# tuple's length is part of its type), the output dtype, and whether the arrays are read-only. Each
# costs 0.3 to 1.5 s of compiling, so the default tests keep to a few layouts, most of which the
# end-to-end tests compile anyway (read-only inputs, like the engine's memory maps); ``-m slow`` runs
# every layout.
SHARED_LAYOUTS: dict[tuple[str, int], tuple[str, ...]] = {
    ("bf16", 2): ("bf16",),
    ("bf16", 3): ("bf16", "f16", "f32"),
    ("f16", 2): ("f16",),
    ("f32", 1): ("f32",),
    ("f32", 2): ("f32",),
    ("f32", 3): ("f32",),
    ("f64", 1): ("f32",),
}
"""``(input storage, fine-tuned models) -> output storages`` of the default kernel and property tests: every
input dtype, one to three models, every output dtype (from bf16, as the tiny models' merges have it), and
otherwise each dtype's own output (float32 for float64), as a merge without ``--dtype`` writes."""
INPUT_KINDS = ("bf16", "f16", "f32", "f64")
OUTPUT_KINDS = ("bf16", "f16", "f32")
EVERY_LAYOUT = [(kind, m) for kind in INPUT_KINDS for m in range(1, 6)]
LAYOUT_SCOPES = [
    pytest.param(False, id="shared-layouts"),
    pytest.param(True, id="every-layout", marks=pytest.mark.slow),
]
"""Parametrize a test's ``every`` argument: the shared layouts by default, every layout with ``-m slow``."""


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Path]]:
    """A bf16 base and three fine-tuned models (single-file folders), read-only for tests."""
    return generate_model(TINY, tmp_path_factory.mktemp("tiny"), n_finetuned=3, seed=1)


@pytest.fixture(scope="session")
def sharded_models(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Path]]:
    """The same shapes as ``tiny_models`` (another seed), each model in several shards with an index."""
    return generate_model(TINY, tmp_path_factory.mktemp("sharded"), n_finetuned=3, seed=2, shard_size=60_000)


def tree_digest(folder: Path) -> str:
    """A digest of every file's path and bytes under ``folder`` (to prove inputs are untouched)."""
    h = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        h.update(str(path.relative_to(folder)).encode())
        h.update(path.read_bytes())
    return h.hexdigest()


def read_only(*arrays: np.ndarray) -> tuple[np.ndarray, ...]:
    """Read-only copies, like the engine's memory maps (Numba types a read-only array apart from a
    writable one, so kernel tests feed what the engine feeds)."""
    out = tuple(np.array(a) for a in arrays)
    for a in out:
        a.flags.writeable = False
    return out
