"""Shared fixtures: tiny real-shaped models, generated once per session."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from ooc_ties.synthetic import LlamaShape, generate_model

TINY = LlamaShape(hidden=64, intermediate=176, layers=2, heads=4, kv_heads=2, vocab=384)


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
