"""Deterministic synthetic checkpoints with real Llama tensor names and shapes.

No weights can be downloaded for tests, demos or benchmarks, so they are generated: a bf16 base with
Llama's tensors (scaled-down or full shapes) and fine-tuned models made of base + task deltas. The deltas
have what makes TIES interesting and hard to get exactly right:

* a component shared by all fine-tunes and one independent per fine-tune, so signs agree and conflict;
* untouched parameters (exact zeros in the task vector);
* bf16 rounding of base + delta, so many task values are exactly one or two bf16 steps of the base:
  exact ties in magnitude, and exact zero sums between models.

Everything is generated block by block (bounded memory whatever the shape) from a counter-based
generator keyed by (seed, tensor, block), so the bytes do not depend on the machine or on timing.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ooc_ties.chunk_grid import ChunkGrid
from ooc_ties.dtypes import BF16
from ooc_ties.errors import OptionError
from ooc_ties.io.staging import StagedDirectory
from ooc_ties.io.writer import SafetensorsOutput, layout_shards
from ooc_ties.kernels.convert import encode_oracle
from ooc_ties.tensor import Tensor

__all__ = ["SHAPES", "LlamaShape", "generate", "generate_model"]

_BLOCK = 1 << 20


@dataclass(frozen=True, slots=True)
class LlamaShape:
    """The dimensions of a Llama-family model."""

    hidden: int
    """Hidden size."""
    intermediate: int
    """MLP size."""
    layers: int
    """Decoder layers."""
    heads: int
    """Attention heads."""
    kv_heads: int
    """Key/value heads (grouped-query attention)."""
    vocab: int
    """Vocabulary size."""

    def tensors(self) -> list[tuple[str, tuple[int, ...]]]:
        """``(name, shape)`` of every tensor, with Hugging Face Llama names."""
        head_dim = self.hidden // self.heads
        h, q, kv, m = self.hidden, self.heads * head_dim, self.kv_heads * head_dim, self.intermediate
        out: list[tuple[str, tuple[int, ...]]] = [("model.embed_tokens.weight", (self.vocab, h))]
        for i in range(self.layers):
            p = f"model.layers.{i}."
            out += [
                (p + "self_attn.q_proj.weight", (q, h)),
                (p + "self_attn.k_proj.weight", (kv, h)),
                (p + "self_attn.v_proj.weight", (kv, h)),
                (p + "self_attn.o_proj.weight", (h, q)),
                (p + "mlp.gate_proj.weight", (m, h)),
                (p + "mlp.up_proj.weight", (m, h)),
                (p + "mlp.down_proj.weight", (h, m)),
                (p + "input_layernorm.weight", (h,)),
                (p + "post_attention_layernorm.weight", (h,)),
            ]
        out += [("model.norm.weight", (h,)), ("lm_head.weight", (self.vocab, h))]
        return out

    @property
    def parameters(self) -> int:
        return sum(int(np.prod(s)) for _, s in self.tensors())

    def config(self) -> dict[str, object]:
        """A transformers ``config.json`` for this shape."""
        return {
            "architectures": ["LlamaForCausalLM"],
            "model_type": "llama",
            "hidden_size": self.hidden,
            "intermediate_size": self.intermediate,
            "num_hidden_layers": self.layers,
            "num_attention_heads": self.heads,
            "num_key_value_heads": self.kv_heads,
            "vocab_size": self.vocab,
            "max_position_embeddings": 2048,
            "rms_norm_eps": 1e-5,
            "rope_theta": 500000.0,
            "hidden_act": "silu",
            "tie_word_embeddings": False,
            "torch_dtype": "bfloat16",
            "bos_token_id": 1,
            "eos_token_id": 2,
        }


SHAPES: dict[str, LlamaShape] = {
    "tiny": LlamaShape(hidden=64, intermediate=176, layers=2, heads=4, kv_heads=2, vocab=384),
    "demo": LlamaShape(hidden=512, intermediate=1376, layers=4, heads=8, kv_heads=4, vocab=8192),
    "1b": LlamaShape(hidden=2048, intermediate=8192, layers=16, heads=32, kv_heads=8, vocab=128256),
    "3b": LlamaShape(hidden=3072, intermediate=8192, layers=28, heads=24, kv_heads=8, vocab=128256),
    "70b-slice": LlamaShape(hidden=8192, intermediate=28672, layers=1, heads=64, kv_heads=8, vocab=128256),
}
"""``tiny`` and ``demo`` are scaled down; ``1b`` and ``3b`` are Llama-3.2's shapes (with a separate
``lm_head``); ``70b-slice`` is Llama-3-70B's embedding, head and one decoder layer."""


def _rng(seed: int, *key: object) -> np.random.Generator:
    digest = hashlib.sha256(repr((seed, *key)).encode()).digest()
    return np.random.Generator(np.random.Philox(key=int.from_bytes(digest[:16], "little")))


def _bf16(values: np.ndarray) -> np.ndarray:
    return encode_oracle(values.astype(np.float32), np.dtype(np.uint16))


def _f32(bits: np.ndarray) -> np.ndarray:
    return (bits.astype(np.uint32) << 16).view(np.float32)


def _blocks(name: str, shape: tuple[int, ...], seed: int, n_finetuned: int) -> Iterator[tuple[int, list[np.ndarray]]]:
    """``(start, [base, ft_1, ... ft_n])`` bf16 blocks of one tensor."""
    is_norm = len(shape) == 1
    scale = 0.02 if not is_norm else 0.05
    for index, (start, stop) in enumerate(ChunkGrid.for_block_size(shape, _BLOCK).blocks()):
        rng = _rng(seed, name, index)
        n = stop - start
        base = rng.standard_normal(n, np.float32) * np.float32(scale)
        if is_norm:
            base += np.float32(1.0)
        base_bits = _bf16(base)
        base = _f32(base_bits)
        step = np.float32(1.5e-3) * np.abs(base) + np.float32(2e-5)
        shared = rng.standard_normal(n, np.float32) * step
        models = [base_bits]
        for _ in range(n_finetuned):
            own = rng.standard_normal(n, np.float32) * step
            share = np.float32(rng.uniform(0.3, 0.9))
            touched = rng.random(n, np.float32) < np.float32(0.8)
            delta = np.where(touched, share * shared + own, np.float32(0.0)).astype(np.float32)
            models.append(_bf16(base + delta))
        yield start, models


def generate_model(
    shape: LlamaShape,
    folder: str | os.PathLike[str],
    *,
    n_finetuned: int = 3,
    seed: int = 0,
    shard_size: int = 2 * 1000**3,
) -> tuple[Path, list[Path]]:
    """Write ``base/`` and ``ft1/``..``ftN/`` model folders under ``folder``; return their paths."""
    root = Path(folder)
    root.mkdir(parents=True, exist_ok=True)
    names = ["base"] + [f"ft{i + 1}" for i in range(n_finetuned)]
    specs = [Tensor(name, BF16, s) for name, s in shape.tensors()]
    layouts = layout_shards([(s.name, s.nbytes) for s in specs], shard_size)
    stagings: list[StagedDirectory] = []
    try:
        outputs = []
        for name in names:
            stagings.append(StagedDirectory(root / name))
            outputs.append(SafetensorsOutput(stagings[-1], specs, layouts, {"format": "pt"}))
        for name, tensor_shape in shape.tensors():
            for start, blocks in _blocks(name, tensor_shape, seed, n_finetuned):
                for out, values in zip(outputs, blocks, strict=True):
                    out.write(name, start, values)
        for i, out in enumerate(outputs):
            config = dict(shape.config(), _name_or_path=names[i])
            out.finish(
                {
                    "config.json": (json.dumps(config, indent=2) + "\n").encode(),
                    "generation_config.json": (json.dumps({"bos_token_id": 1, "eos_token_id": 2}) + "\n").encode(),
                }
            )
        paths = [staging.commit() for staging in stagings]
    except BaseException:
        for staging in stagings:
            staging.abort()
        raise
    _date_apart(paths)
    return paths[0], paths[1:]


def _date_apart(folders: list[Path]) -> None:
    """Give each model's files its own modification time, a second apart in model order (written in
    one go, they would otherwise share one: real models rarely do)."""
    now = time.time_ns()
    for i, folder in enumerate(folders):
        stamp = now - (len(folders) - i) * 1_000_000_000
        for path in folder.iterdir():
            os.utime(path, ns=(stamp, stamp))


def generate(
    preset: str,
    folder: str | os.PathLike[str],
    *,
    n_finetuned: int = 3,
    seed: int = 0,
    shard_size: int = 2 * 1000**3,
) -> tuple[Path, list[Path]]:
    """:func:`generate_model` for a named shape in :data:`SHAPES`."""
    if preset not in SHAPES:
        allowed = ", ".join(f'"{p}"' for p in SHAPES)
        raise OptionError(f'model preset "{preset}" is invalid (expected one of: {allowed})')
    return generate_model(SHAPES[preset], folder, n_finetuned=n_finetuned, seed=seed, shard_size=shard_size)
