"""The Zarr view of a safetensors checkpoint: every tensor bit for bit, zero-copy, read-only, copyable."""

from __future__ import annotations

import asyncio
import json
import pickle
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest
import zarr
from safetensors import safe_open
from zarr.abc.buffer import Buffer
from zarr.abc.store import ByteRequest, OffsetByteRequest, RangeByteRequest, Store, SuffixByteRequest
from zarr.buffer import default_buffer_prototype
from zarr.storage import LocalStore, MemoryStore, ZipStore

from ooc_ties.chunk_grid import ChunkGrid
from ooc_ties.errors import CheckpointFormatError, CheckpointNotFoundError, OptionError
from ooc_ties.io import zarr_view
from ooc_ties.io.arrays import ArraySource
from ooc_ties.io.checkpoint import Checkpoint
from ooc_ties.io.zarr_view import SafetensorsStore, open_zarr

# Every safetensors dtype, the shapes that need care (scalar, 1-D, 3-D, zero-size), dotted names.
MIXED: dict[str, tuple[str, np.ndarray]] = {
    "model.layers.0.mlp.up_proj.weight": ("F32", (np.arange(15, dtype=np.float32) / 7).reshape(5, 3)),
    "model.layers.0.self_attn.q_proj.weight": ("F16", (np.arange(120, dtype=np.float16) - 60).reshape(4, 6, 5)),
    "model.norm.weight": (
        "BF16",
        np.array([0x3F80, 0xBF80, 0x4000, 0x7F80, 0xFFC1, 0, 1, 0x8000, 0x4049, 0x3E80], np.uint16),
    ),
    "f64": ("F64", np.linspace(-1, 1, 10)),
    "i64": ("I64", np.array([-(2**62), 0, 2**62 + 5], np.int64)),
    "i32": ("I32", np.arange(-4, 4, dtype=np.int32).reshape(2, 4)),
    "i16": ("I16", np.array([-300, 300], np.int16)),
    "i8": ("I8", np.arange(-4, 5, dtype=np.int8)),
    "u8": ("U8", np.arange(250, 261, dtype=np.int64).astype(np.uint8)),
    "u16": ("U16", np.array([1, 65535], np.uint16)),
    "u32": ("U32", np.array([7, 2**32 - 1, 9], np.uint32)),
    "u64": ("U64", np.array([2**64 - 1], np.uint64)),
    "mask": ("BOOL", np.arange(13) % 3 == 0),
    "scalar": ("F32", np.array(2.5, np.float32)),
    "empty": ("F32", np.zeros((0, 4), np.float32)),
    "empty.ints": ("I64", np.zeros((3, 0), np.int64)),
}
METADATA = {"format": "pt", "note": "mixed"}


def _write_safetensors(path: Path, tensors: dict[str, tuple[str, np.ndarray]], metadata: dict[str, str]) -> None:
    """A safetensors file written by hand (the format is 8 bytes, a JSON header, the bytes)."""
    header: dict[str, object] = {"__metadata__": metadata}
    offset, payload = 0, []
    for name, (code, array) in tensors.items():
        data = np.ascontiguousarray(array).astype(array.dtype.newbyteorder("<")).tobytes()
        header[name] = {"dtype": code, "shape": list(array.shape), "data_offsets": [offset, offset + len(data)]}
        payload.append(data)
        offset += len(data)
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    path.write_bytes(len(raw).to_bytes(8, "little") + raw + b"".join(payload))


def _raw_tensors(path: Path) -> dict[str, tuple[str, tuple[int, ...], bytes]]:
    """``name -> (dtype code, shape, bytes)`` parsed straight from a file or a (sharded) folder."""
    if path.is_dir():
        index = path / "model.safetensors.index.json"
        files = sorted(set(json.loads(index.read_text())["weight_map"].values())) if index.exists() else None
        paths = [path / f for f in files] if files else sorted(path.glob("*.safetensors"))
        return {k: v for p in paths for k, v in _raw_tensors(p).items()}
    raw = path.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8 : 8 + n])
    header.pop("__metadata__", None)
    return {
        name: (e["dtype"], tuple(e["shape"]), raw[8 + n + e["data_offsets"][0] : 8 + n + e["data_offsets"][1]])
        for name, e in header.items()
    }


def _load_with_safetensors(path: Path) -> dict[str, np.ndarray]:
    """Every non-BF16 tensor, read by the ``safetensors`` package (its NumPy backend has no bfloat16)."""
    with safe_open(path, framework="np") as f:
        codes = {name: code for name, (code, _, _) in _raw_tensors(path).items()}
        return {name: f.get_tensor(name) for name in f.keys() if codes[name] != "BF16"}


def _bytes(array: np.ndarray) -> bytes:
    """The little-endian C-order bytes of an array (what safetensors stores)."""
    return np.ascontiguousarray(array).astype(array.dtype.newbyteorder("<")).tobytes()


def _assert_matches_file(group: zarr.Group, path: Path) -> None:
    expected = _raw_tensors(path)
    assert sorted(group.array_keys()) == sorted(expected)
    for name, (code, shape, data) in expected.items():
        array = group[name]
        assert isinstance(array, zarr.Array)
        assert array.shape == shape
        assert array.attrs["safetensors_dtype"] == code
        values = array[...]
        assert _bytes(np.asarray(values)) == data, name


def _array(group: zarr.Group, name: str) -> zarr.Array[Any]:
    node = group[name]
    assert isinstance(node, zarr.Array)
    return node


def _run(generator: AsyncIterator[str]) -> list[str]:
    async def collect() -> list[str]:
        return [key async for key in generator]

    return asyncio.run(collect())


@pytest.fixture(scope="module")
def mixed_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("mixed") / "mixed.safetensors"
    _write_safetensors(path, MIXED, METADATA)
    return path


def test_the_hand_written_file_is_what_the_safetensors_package_reads(mixed_file: Path) -> None:
    loaded = _load_with_safetensors(mixed_file)
    for name, (code, array) in MIXED.items():
        if code != "BF16":
            assert loaded[name].dtype == array.dtype and _bytes(loaded[name]) == _bytes(array), name


@pytest.mark.parametrize("chunk_elements", [1, 7, 64, 1 << 22])
def test_every_tensor_of_every_dtype_reads_back_bit_exactly(mixed_file: Path, chunk_elements: int) -> None:
    group = open_zarr(mixed_file, chunk_elements=chunk_elements)
    try:
        _assert_matches_file(group, mixed_file)
        assert group.attrs["safetensors_metadata"] == METADATA
        loaded = _load_with_safetensors(mixed_file)
        for name, (code, source) in MIXED.items():
            array = group[name]
            assert isinstance(array, zarr.Array)
            assert array.chunks == ChunkGrid.for_block_size(source.shape, chunk_elements).chunks
            values = np.asarray(array[...])
            if code == "BF16":  # bit patterns, decoded as the docs say
                assert array.dtype == np.uint16
                np.testing.assert_array_equal(values, source)
                floats = (values.astype(np.uint32) << 16).view(np.float32)
                assert floats[:3].tolist() == [1.0, -1.0, 2.0]
            else:
                assert array.dtype == loaded[name].dtype
                np.testing.assert_array_equal(values, loaded[name])
    finally:
        group.store.close()


def test_a_bf16_model_folder_matches_its_file_bits(tiny_models: tuple[Path, list[Path]]) -> None:
    base, _ = tiny_models
    group = open_zarr(base, chunk_elements=64)
    try:
        _assert_matches_file(group, base)
        assert group.attrs["safetensors_metadata"] == {"format": "pt"}
        array = group["model.layers.0.mlp.up_proj.weight"]
        assert isinstance(array, zarr.Array)
        assert array.dtype == np.uint16 and array.attrs["safetensors_dtype"] == "BF16"
        # (176, 64) in chunks of 64 elements is one row a chunk; (64, 176) has short edge chunks.
        assert array.chunks == (1, 64)
        down = group["model.layers.0.mlp.down_proj.weight"]
        assert isinstance(down, zarr.Array)
        assert down.shape == (64, 176) and down.chunks == (1, 64)
    finally:
        group.store.close()


def test_the_view_reads_back_as_a_merge_input(tiny_models: tuple[Path, list[Path]], mixed_file: Path) -> None:
    for path in (tiny_models[0], mixed_file):
        group = open_zarr(path, chunk_elements=64)
        source = ArraySource.from_zarr(group, closer=group.store.close)
        try:
            with Checkpoint(path) as checkpoint:
                assert source.names == checkpoint.names
                for name in checkpoint.names:
                    assert source.info(name).dtype == checkpoint.info(name).dtype  # BF16 from the attribute
                    np.testing.assert_array_equal(source.read(name), checkpoint.read(name))
        finally:
            source.close()


def test_a_sharded_folder_is_one_group(sharded_models: tuple[Path, list[Path]]) -> None:
    base, _ = sharded_models
    assert len(list(base.glob("*.safetensors"))) > 1
    group = open_zarr(base)
    try:
        _assert_matches_file(group, base)
    finally:
        group.store.close()


def test_edge_chunks_are_padded_with_zeros_and_full_chunks_are_not(mixed_file: Path) -> None:
    with SafetensorsStore(mixed_file, chunk_elements=7) as store:
        name = "model.layers.0.mlp.up_proj.weight"  # (5, 3) in chunks of (2, 3): the last holds one row
        source = MIXED[name][1]
        chunk = store.get_sync(f"{name}/c/2/0")
        assert chunk is not None
        np.testing.assert_array_equal(chunk.as_numpy_array().view(np.float32), [*source[4], 0, 0, 0])
        full = store.get_sync(f"{name}/c/1/0")
        assert full is not None
        np.testing.assert_array_equal(full.as_numpy_array().view(np.float32), source[2:4].reshape(-1))
        mask = store.get_sync("mask/c/1")  # 13 booleans in chunks of 7
        assert mask is not None
        assert mask.as_numpy_array().view(np.bool_).tolist() == [*MIXED["mask"][1][7:].tolist(), False]


def test_scalar_and_zero_size_keys(mixed_file: Path) -> None:
    with SafetensorsStore(mixed_file, chunk_elements=7) as store:
        scalar = store.get_sync("scalar/c")  # zarr's chunk key for a 0-d array
        assert scalar is not None and scalar.as_numpy_array().view(np.float32).tolist() == [2.5]
        assert _run(store.list_prefix("scalar/")) == ["scalar/zarr.json", "scalar/c"]
        assert _run(store.list_prefix("empty/")) == ["empty/zarr.json"]  # a zero-size array has no chunks
        assert _run(store.list_dir("empty")) == ["zarr.json"]
        assert store.get_sync("empty/c/0/0") is None
    group = open_zarr(mixed_file)
    try:
        assert _array(group, "scalar")[()] == np.float32(2.5)
        assert np.asarray(_array(group, "empty.ints")[...]).shape == (3, 0)
    finally:
        group.store.close()


def test_open_array_of_one_tensor(mixed_file: Path) -> None:
    with SafetensorsStore(mixed_file, chunk_elements=7) as store:
        name = "model.layers.0.self_attn.q_proj.weight"
        array = zarr.open_array(store=store, path=name, mode="r")
        np.testing.assert_array_equal(array[...], MIXED[name][1])
        np.testing.assert_array_equal(array[2, 1:4, ::2], MIXED[name][1][2, 1:4, ::2])


class _SpyStore(SafetensorsStore):
    """Records every key asked for."""

    requested: ClassVar[list[str]] = []

    def get_sync(self, key: str, **kwargs: Any) -> Buffer | None:
        self.requested.append(key)
        return super().get_sync(key, **kwargs)


def test_opening_the_group_and_its_arrays_reads_no_chunk(
    tiny_models: tuple[Path, list[Path]], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(zarr_view, "SafetensorsStore", _SpyStore)
    monkeypatch.setattr(_SpyStore, "requested", [])
    group = zarr_view.open_zarr(tiny_models[0], chunk_elements=4096)
    try:
        described = {name: (a.shape, a.dtype, a.chunks, dict(a.attrs)) for name, a in group.arrays()}
        assert len(described) == len(_SpyStore.requested) - 1  # the root and each array's zarr.json, once
        assert all(key.rpartition("/")[2] == "zarr.json" for key in _SpyStore.requested)
        name = "model.embed_tokens.weight"
        first = np.asarray(_array(group, name)[0, :5])  # reads exactly one chunk
        assert [k for k in _SpyStore.requested if not k.endswith("zarr.json")] == [f"{name}/c/0/0"]
        assert first.shape == (5,)
    finally:
        group.store.close()


def test_a_full_chunk_is_a_view_of_the_memory_map(tiny_models: tuple[Path, list[Path]]) -> None:
    with SafetensorsStore(tiny_models[0], chunk_elements=4096) as store:
        name = "model.embed_tokens.weight"  # (384, 64): chunks of (64, 64)
        mapped = store.checkpoint.read(name)
        chunk = store.get_sync(f"{name}/c/1/0")
        assert chunk is not None
        data = chunk.as_numpy_array()
        assert np.shares_memory(data, mapped)
        assert data.ctypes.data == mapped.ctypes.data + 64 * 64 * 2
        assert not data.flags.writeable
        part = store.get_sync(f"{name}/c/1/0", byte_range=RangeByteRequest(10, 20))
        assert part is not None and np.shares_memory(part.as_numpy_array(), mapped)


def test_byte_ranges(mixed_file: Path) -> None:
    with SafetensorsStore(mixed_file, chunk_elements=7) as store:
        for key in ("zarr.json", "f64/zarr.json", "f64/c/0", "f64/c/1", "scalar/c"):
            whole = store.get_sync(key)
            assert whole is not None
            data = whole.to_bytes()
            n = len(data)
            cases: dict[ByteRequest, bytes] = {
                RangeByteRequest(2, 5): data[2:5],
                RangeByteRequest(3, n + 100): data[3:],
                RangeByteRequest(n + 1, n + 5): b"",
                OffsetByteRequest(4): data[4:],
                SuffixByteRequest(3): data[-3:],
                SuffixByteRequest(n + 10): data,
            }
            for request, expected in cases.items():
                got = store.get_sync(key, byte_range=request)
                assert got is not None and got.to_bytes() == expected, (key, request)
            requests = [(key, OffsetByteRequest(1)), ("no", None)]
            partial = asyncio.run(store.get_partial_values(default_buffer_prototype(), requests))
            assert partial[0] is not None and partial[0].to_bytes() == data[1:]
            assert partial[1] is None


def test_missing_keys(mixed_file: Path) -> None:
    with SafetensorsStore(mixed_file, chunk_elements=7) as store:
        for key in (
            "",
            "nope/zarr.json",
            "f64/c/2",
            "f64/c/00",
            "f64/c/-1",
            "f64/c/x",
            "f64/c",
            "f64/c/0/0",
            "i32/c/0",
            "f64",
            "f64/zarr.jsonx",
            "c/0",
            "scalar/c/0",
            "zarr.json/zarr.json",
        ):
            assert store.get_sync(key) is None, key
            assert not asyncio.run(store.exists(key)), key
            with pytest.raises(FileNotFoundError):
                asyncio.run(store.getsize(key))


def test_listing_is_consistent_with_get(mixed_file: Path) -> None:
    with SafetensorsStore(mixed_file, chunk_elements=7) as store:
        keys = _run(store.list())
        assert len(keys) == len(set(keys)) and keys[0] == "zarr.json"
        for key in keys:
            value = store.get_sync(key)
            assert value is not None and asyncio.run(store.exists(key))
            assert asyncio.run(store.getsize(key)) == len(value)
        dirs = {""} | {key.rsplit("/", i)[0] for key in keys for i in range(1, key.count("/") + 1)}
        for node in dirs:
            below = [k[len(node) + 1 :] if node else k for k in keys if not node or k.startswith(node + "/")]
            assert sorted(_run(store.list_dir(node))) == sorted({k.split("/")[0] for k in below}), node
        for prefix in ("", "f", "f64", "f64/", "f64/c", "f64/c/1", "i32/c/1/", "model.", "zz"):
            assert _run(store.list_prefix(prefix)) == [k for k in keys if k.startswith(prefix)], prefix
        assert _run(store.list_dir("f64/c/0")) == []  # a chunk, not a folder


def test_writes_are_refused(mixed_file: Path) -> None:
    with SafetensorsStore(mixed_file) as store:
        value = default_buffer_prototype().buffer.from_bytes(b"{}")
        assert store.read_only and not store.supports_writes and not store.supports_deletes
        for attempt in (
            store.set("x/zarr.json", value),
            store.set_if_not_exists("zarr.json", value),
            store.delete("zarr.json"),
        ):
            with pytest.raises(ValueError, match="read-only"):
                asyncio.run(attempt)
        with pytest.raises(ValueError, match="read-only"):
            zarr.open_group(store=store, mode="a")
        with pytest.raises(ValueError):
            store.with_read_only(False)
        group = zarr.open_group(store=store, mode="r")
        with pytest.raises(ValueError, match="read-only"):
            _array(group, "f64")[0] = 1.0
        with pytest.raises(ValueError, match="read-only"):
            group.create_array("new", shape=(1,), dtype="int8")
    assert _load_with_safetensors(mixed_file)["f64"][0] == -1.0


@pytest.mark.parametrize("kind", ["memory", "local", "zip"])
def test_copies_into_other_zarr_stores_round_trip(mixed_file: Path, tmp_path: Path, kind: str) -> None:
    source = open_zarr(mixed_file, chunk_elements=7)
    try:
        if kind == "memory":
            destination: Store = MemoryStore()
        elif kind == "local":
            destination = LocalStore(tmp_path / "copy.zarr")
        else:
            destination = ZipStore(tmp_path / "copy.zip", mode="w")
        copy = zarr.create_group(destination, attributes=source.attrs.asdict())
        for name, array in source.arrays():
            copy.create_array(name, data=np.asarray(array[...]), chunks=array.chunks, attributes=array.attrs.asdict())
        destination.close()
        if kind == "zip":
            destination = ZipStore(tmp_path / "copy.zip", mode="r")
        elif kind == "local":
            destination = LocalStore(tmp_path / "copy.zarr", read_only=True)
        reopened = zarr.open_group(destination, mode="r")
        _assert_matches_file(reopened, mixed_file)
        assert reopened.attrs["safetensors_metadata"] == METADATA
        destination.close()
    finally:
        source.store.close()


def test_a_key_by_key_copy_is_a_valid_zarr_hierarchy(mixed_file: Path) -> None:
    with SafetensorsStore(mixed_file, chunk_elements=7) as store:
        keys = _run(store.list())
        copied = MemoryStore({key: store.get_sync(key) for key in keys})  # type: ignore[misc]
        _assert_matches_file(zarr.open_group(copied, mode="r"), mixed_file)


def test_names_with_slashes_make_groups(tmp_path: Path) -> None:
    path = tmp_path / "nested.safetensors"
    _write_safetensors(path, {"a/b.weight": ("F32", np.ones(3, np.float32)), "a/c": ("I8", np.zeros(2, np.int8))}, {})
    group = open_zarr(path)
    try:
        assert sorted(group.group_keys()) == ["a"]
        np.testing.assert_array_equal(_array(group, "a/b.weight")[...], np.ones(3))
        assert group.attrs["safetensors_metadata"] == {}
    finally:
        group.store.close()


@pytest.mark.parametrize(
    ("names", "match"),
    [
        (["x", "x/y"], "both a tensor and the parent"),
        (["a//b"], "segment ''"),
        (["../up"], "segment '..'"),
        (["zarr.json"], "segment 'zarr.json'"),
    ],
)
def test_names_zarr_cannot_hold_are_refused(tmp_path: Path, names: list[str], match: str) -> None:
    path = tmp_path / "bad.safetensors"
    _write_safetensors(path, {n: ("U8", np.zeros(1, np.uint8)) for n in names}, {})
    with pytest.raises(CheckpointFormatError, match=match):
        SafetensorsStore(path)


def test_bad_input_raises_the_ooc_ties_errors(tmp_path: Path, mixed_file: Path) -> None:
    with pytest.raises(CheckpointNotFoundError):
        open_zarr(tmp_path / "missing.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"\x05" + bytes(20))
    with pytest.raises(CheckpointFormatError):
        open_zarr(tmp_path / "junk.safetensors")
    for bad in (0, -3, 2.5, True):
        with pytest.raises(OptionError, match="chunk elements must be a positive integer"):
            open_zarr(mixed_file, chunk_elements=bad)  # type: ignore[arg-type]


def test_close_equality_and_pickling(mixed_file: Path) -> None:
    store = SafetensorsStore(mixed_file, chunk_elements=7)
    assert store == SafetensorsStore(mixed_file, chunk_elements=7)
    assert store != SafetensorsStore(mixed_file, chunk_elements=8)
    again = store.with_read_only(True)
    assert again == store and again.checkpoint is not store.checkpoint
    again.close()
    clone = pickle.loads(pickle.dumps(store))
    assert clone == store
    assert clone._get_bytes_sync("f64/c/0", prototype=default_buffer_prototype()) == _bytes(MIXED["f64"][1][:7])
    clone.close()
    kept = store.get_sync("f64/c/0")
    assert kept is not None
    with store:
        pass
    with pytest.raises(ValueError, match="closed"):
        store.get_sync("zarr.json")
    np.testing.assert_array_equal(kept.as_numpy_array().view(np.float64), MIXED["f64"][1][:7])  # still mapped
