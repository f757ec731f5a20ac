"""The safetensors reader and writer, the chunk grid, and option parsing."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import safetensors.numpy as stnp
from hypothesis import given, settings
from hypothesis import strategies as st

from ooc_ties.chunk_grid import ChunkGrid
from ooc_ties.config import MergeOptions
from ooc_ties.dtypes import DTYPES
from ooc_ties.errors import OptionError
from ooc_ties.io.checkpoint import Checkpoint
from ooc_ties.io.safetensors import SafetensorsFile
from ooc_ties.io.writer import ShardWriter, layout_shards
from ooc_ties.resources import Resources, parse_size
from ooc_ties.tensor import Tensor

CODES = {np.dtype(v.storage): k for k, v in DTYPES.items() if k != "BF16"}

SAMPLE = {
    "b": np.arange(3, dtype=np.int64),
    "a": np.arange(5, dtype=np.float32) / 3,
    "c": np.ones((2, 2), np.float16),
    "mask": np.array([True, False, True]),
}


def _write(path: Path, tensors: dict[str, np.ndarray], metadata: dict[str, str]) -> None:
    writer = ShardWriter(path, [Tensor(n, DTYPES[CODES[a.dtype]], a.shape) for n, a in tensors.items()], metadata)
    for name, array in reversed(list(tensors.items())):  # any order: offsets are fixed up front
        writer.write(name, 0, array.reshape(-1))
    writer.close()


def test_writer_output_is_byte_identical_to_the_safetensors_package(tmp_path: Path) -> None:
    _write(tmp_path / "mine.safetensors", SAMPLE, {"format": "pt"})
    assert (tmp_path / "mine.safetensors").read_bytes() == stnp.save(SAMPLE, metadata={"format": "pt"})


def test_writer_golden_header(tmp_path: Path) -> None:
    _write(tmp_path / "g.safetensors", {"x": np.zeros(2, np.float32)}, {})
    raw = (tmp_path / "g.safetensors").read_bytes()
    header = b'{"x":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}'
    padded = header + b" " * (-len(header) % 8)
    assert raw == len(padded).to_bytes(8, "little") + padded + bytes(8)


def test_writer_accepts_blocks_out_of_order(tmp_path: Path) -> None:
    values = np.arange(100, dtype=np.float32)
    writer = ShardWriter(tmp_path / "o.safetensors", [Tensor("v", DTYPES["F32"], (10, 10))], {})
    for start in (70, 0, 30, 90, 10):
        stop = {70: 90, 0: 10, 30: 70, 90: 100, 10: 30}[start]
        writer.write("v", start, values[start:stop])
    writer.close()
    np.testing.assert_array_equal(stnp.load_file(tmp_path / "o.safetensors")["v"], values.reshape(10, 10))


@pytest.mark.parametrize("count", [3, 40, 5000])  # one element written at a time; the span rewritten
@pytest.mark.parametrize("direct", [False, True])
def test_a_patch_writes_exactly_its_elements(tmp_path: Path, count: int, direct: bool) -> None:
    from ooc_ties.io.direct import BounceBuffer

    rng = np.random.default_rng(count)
    values = rng.integers(0, 1 << 16, 1 << 16, dtype=np.uint16)
    path = tmp_path / "o.safetensors"
    bounce = BounceBuffer() if direct else None
    writer = ShardWriter(path, [Tensor("w", DTYPES["BF16"], (1 << 16,))], {}, bounce=bounce)
    writer.write("w", 0, values)
    start = 1000
    at = np.sort(rng.choice(np.arange(20_000), count, replace=False)).astype(np.int64)
    new = rng.integers(0, 1 << 16, count, dtype=np.uint16)
    writer.patch("w", start, at, new)
    writer.close()
    expected = values.copy()
    expected[start + at] = new
    with SafetensorsFile(path) as f:
        np.testing.assert_array_equal(np.asarray(f.read(f.tensors["w"])), expected)


def test_reader_matches_the_safetensors_package_and_is_zero_copy(tmp_path: Path) -> None:
    path = tmp_path / "s.safetensors"
    stnp.save_file(SAMPLE, path, metadata={"k": "v"})
    with SafetensorsFile(path) as f:
        assert f.metadata == {"k": "v"}
        for name, expected in SAMPLE.items():
            info = f.tensors[name]
            view = f.read(info)
            assert info.shape == expected.shape
            np.testing.assert_array_equal(view.reshape(expected.shape), expected)
            assert not view.flags.owndata and not view.flags.writeable  # a view of the map, not a copy
        np.testing.assert_array_equal(f.read(f.tensors["a"], 2, 4), SAMPLE["a"][2:4])


def test_bf16_is_read_as_bit_patterns(tmp_path: Path) -> None:
    path = tmp_path / "bf.safetensors"
    bits = np.array([0x3F80, 0xBF80, 0x4000], np.uint16)  # 1.0, -1.0, 2.0
    writer = ShardWriter(path, [Tensor("w", DTYPES["BF16"], (3,))], {})
    writer.write("w", 0, bits)
    writer.close()
    with SafetensorsFile(path) as f:
        assert f.read(f.tensors["w"]).tolist() == bits.tolist()


def test_checkpoint_reads_a_bare_file_and_lists_names_sorted(tmp_path: Path) -> None:
    path = tmp_path / "m.safetensors"
    stnp.save_file(SAMPLE, path)
    with Checkpoint(path) as c:
        assert c.names == ("a", "b", "c", "mask")
        assert c.side_files() == {}
        assert c.nbytes == sum(a.nbytes for a in SAMPLE.values())


@settings(max_examples=200, deadline=None)
@given(
    shape=st.lists(st.integers(0, 9), min_size=0, max_size=4).map(tuple),
    block=st.integers(1, 200),
)
def test_grid_blocks_tile_the_array_in_order(shape: tuple[int, ...], block: int) -> None:
    grid = ChunkGrid.for_block_size(shape, block)
    blocks = list(grid.blocks())
    n = math.prod(shape)
    assert len(blocks) == grid.nblocks
    covered = [i for start, stop in blocks for i in range(start, stop)]
    assert covered == list(range(n))
    assert all(stop - start <= max(block, 1) for start, stop in blocks) or not shape
    # Every block is exactly one Zarr chunk (C-order contiguous), so the shapes agree with zarr's grid.
    if n:
        assert all(stop - start <= grid.chunk_elements for start, stop in blocks)


def test_grid_rejects_non_contiguous_chunks() -> None:
    with pytest.raises(ValueError, match="not contiguous"):
        ChunkGrid((4, 6), (2, 3))


def test_layout_shards_packs_in_order() -> None:
    layout = layout_shards([("a", 40), ("b", 40), ("c", 100), ("d", 10)], 90)
    assert [s.tensors for s in layout] == [("a", "b"), ("c",), ("d",)]
    assert layout[0].file_name == "model-00001-of-00003.safetensors"
    assert layout_shards([("a", 1)], 90)[0].file_name == "model.safetensors"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2GiB", 2 * 1024**3),
        ("256MiB", 256 * 1024**2),
        ("5GB", 5 * 10**9),
        ("500M", 500 * 10**6),
        (123, 123),
        ("1.5GiB", int(1.5 * 1024**3)),
    ],
)
def test_parse_size(text: str | int, expected: int) -> None:
    assert parse_size(text) == expected


@pytest.mark.parametrize("bad", ["", "lots", "-1GB", "0", "1XB"])
def test_parse_size_rejects_garbage(bad: str) -> None:
    with pytest.raises(OptionError, match=r"size|positive"):
        parse_size(bad)


@pytest.mark.parametrize("density", [0.0, -0.1, 1.5, float("nan"), "x"])
def test_density_outside_range_is_rejected(density: float) -> None:
    with pytest.raises(OptionError, match="density"):
        MergeOptions(density=density)


def test_options_reject_unknown_choices_and_bad_values() -> None:
    with pytest.raises(OptionError, match='scope "row" is invalid'):
        MergeOptions(scope="row")  # type: ignore[arg-type]
    with pytest.raises(OptionError, match="lambda"):
        MergeOptions(lam=1e39)
    with pytest.raises(OptionError, match="weights"):
        MergeOptions(weights=(1.0, float("inf")))
    with pytest.raises(OptionError, match="threads"):
        Resources(threads=0)
    with pytest.raises(OptionError, match="2 weights given for 3"):
        MergeOptions(weights=(1.0, 2.0)).model_weights(3)


@pytest.mark.parametrize(("shape", "block"), [((7, 5), 10), ((3, 4, 5), 7), ((10,), 3), ((6, 4), 24), ((2, 3, 4), 1)])
def test_grid_blocks_are_the_chunks_zarr_makes(shape: tuple[int, ...], block: int) -> None:
    import itertools

    import zarr

    grid = ChunkGrid.for_block_size(shape, block)
    values = np.arange(math.prod(shape), dtype=np.int64)
    array = zarr.create_array(store=zarr.storage.MemoryStore(), shape=shape, chunks=grid.chunks, dtype="int64")
    array[...] = values.reshape(shape)
    chunk_counts = [-(-s // c) for s, c in zip(shape, grid.chunks, strict=True)]
    zarr_chunks = [
        np.asarray(array.blocks[index]).reshape(-1) for index in itertools.product(*map(range, chunk_counts))
    ]
    ours = [values[start:stop] for start, stop in grid.blocks()]
    assert len(ours) == len(zarr_chunks)
    for mine, theirs in zip(ours, zarr_chunks, strict=True):
        np.testing.assert_array_equal(mine, theirs)
