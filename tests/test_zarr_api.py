"""Zarr and NumPy inputs and outputs: the same bytes as the safetensors path, on every offline store."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import safetensors.numpy as stnp
import zarr
import zarr.storage
from conftest import tree_digest

from ooc_ties import PRESETS, merge
from ooc_ties.convert import convert
from ooc_ties.errors import CheckpointFormatError, OutputPathError, UnsupportedDtypeError
from ooc_ties.io.arrays import ArraySource
from ooc_ties.io.checkpoint import Checkpoint
from ooc_ties.io.zarr_format import DTYPE_ATTRIBUTE, FILES_ATTRIBUTE, RECIPE_ATTRIBUTE
from ooc_ties.resources import Resources

Models = tuple[Path, list[Path]]
SMALL = Resources(max_block_elements=1000)


def _tensors(folder: Path) -> dict[str, bytes]:
    with Checkpoint(folder) as c:
        return {n: c.info(n).dtype.code.encode() + c.read(n).tobytes() for n in c.names}


def _group_tensors(group: zarr.Group) -> dict[str, bytes]:
    return {
        name: str(array.attrs[DTYPE_ATTRIBUTE]).encode() + np.asarray(array[...]).reshape(-1).tobytes()
        for name, array in group.arrays()
    }


@pytest.fixture(scope="module")
def expected(tiny_models: Models, tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    base, fts = tiny_models
    out = tmp_path_factory.mktemp("expected") / "merged"
    merge(base, fts, out, PRESETS["paper"])
    return _tensors(out)


@pytest.fixture(scope="module")
def zarr_models(tiny_models: Models, tmp_path_factory: pytest.TempPathFactory) -> Models:
    """The tiny models converted to local Zarr groups with chunks unlike the engine's."""
    base, fts = tiny_models
    root = tmp_path_factory.mktemp("zarr")
    paths = []
    for model in [base, *fts]:
        result = convert(model, root / f"{model.name}.zarr", block_elements=777)
        assert result.output is not None
        paths.append(result.output)
    return paths[0], paths[1:]


def test_convert_round_trips_bits_and_side_files(tiny_models: Models, tmp_path: Path) -> None:
    base, _ = tiny_models
    before = tree_digest(base)
    convert(base, tmp_path / "m.zarr", block_elements=100)
    group = zarr.open_group(tmp_path / "m.zarr", mode="r")
    assert group["model.embed_tokens.weight"].attrs[DTYPE_ATTRIBUTE] == "BF16"
    assert group["model.embed_tokens.weight"].dtype == np.uint16
    assert "config.json" in group.attrs[FILES_ATTRIBUTE]
    convert(tmp_path / "m.zarr", tmp_path / "back")
    assert _tensors(tmp_path / "back") == _tensors(base)
    for name in ("config.json", "generation_config.json"):
        assert (tmp_path / "back" / name).read_bytes() == (base / name).read_bytes()
    assert tree_digest(base) == before


def test_zarr_inputs_give_the_same_bytes_as_safetensors(
    zarr_models: Models, expected: dict[str, bytes], tmp_path: Path
) -> None:
    base, fts = zarr_models
    merge(base, fts, tmp_path / "out", PRESETS["paper"], SMALL)
    assert _tensors(tmp_path / "out") == expected


def test_zarr_output_holds_the_same_bytes_and_the_recipe(
    tiny_models: Models, expected: dict[str, bytes], tmp_path: Path
) -> None:
    base, fts = tiny_models
    result = merge(base, fts, tmp_path / "out.zarr", PRESETS["paper"])
    assert result.output == (tmp_path / "out.zarr").absolute()
    group = zarr.open_group(tmp_path / "out.zarr", mode="r")
    assert _group_tensors(group) == expected
    assert group.attrs[RECIPE_ATTRIBUTE]["options"]["density"] == 0.2
    assert not any(p.name.startswith(".") for p in (tmp_path / "out.zarr").iterdir())
    # The output is chunked on the engine's grid and reads back as an input.
    assert _tensors_of_source(ArraySource.open(tmp_path / "out.zarr")) == expected


def _tensors_of_source(source: ArraySource) -> dict[str, bytes]:
    return {n: source.info(n).dtype.code.encode() + source.read(n).tobytes() for n in source.names}


# A ZipStore cannot replace an entry: the group's zarr.json is written twice (docs/zarr.md).
@pytest.mark.filterwarnings("ignore:Duplicate name:UserWarning")
@pytest.mark.parametrize("kind", ["memory", "zip", "local"])
def test_every_offline_store_works_both_ways(
    kind: str, zarr_models: Models, expected: dict[str, bytes], tmp_path: Path
) -> None:
    base, fts = zarr_models

    def store(name: str, mode: str) -> Any:
        if kind == "memory":
            return zarr.storage.MemoryStore()
        if kind == "zip":
            return zarr.storage.ZipStore(tmp_path / f"{name}.zip", mode=mode)
        return zarr.storage.LocalStore(tmp_path / name)

    inputs = []
    for model in [base, *fts]:
        group = zarr.open_group(store(model.stem, "w"), mode="w")
        convert(model, group)
        if kind == "zip":
            group.store.close()
            group = zarr.open_group(zarr.storage.ZipStore(tmp_path / f"{model.stem}.zip", mode="r"), mode="r")
        inputs.append(group)
    out = zarr.open_group(store("out", "w"), mode="w")
    result = merge(inputs[0], inputs[1:], out, PRESETS["paper"], SMALL)
    assert result.output is None
    assert _group_tensors(out) == expected


@pytest.mark.filterwarnings("ignore:Duplicate name:UserWarning")
def test_zip_path_input(zarr_models: Models, expected: dict[str, bytes], tmp_path: Path) -> None:
    base, fts = zarr_models
    zipped = []
    for model in [base, *fts]:
        store = zarr.storage.ZipStore(tmp_path / f"{model.stem}.zip", mode="w")
        convert(model, zarr.open_group(store, mode="w"))
        store.close()
        zipped.append(tmp_path / f"{model.stem}.zip")
    merge(zipped[0], zipped[1:], tmp_path / "out", PRESETS["paper"])
    assert _tensors(tmp_path / "out") == expected


def test_numpy_inputs_match_safetensors_files(tiny_models: Models, tmp_path: Path) -> None:
    """Float32 NumPy arrays by name give the bytes of the same arrays saved as safetensors files."""
    base, fts = tiny_models
    arrays = []
    for model in [base, *fts]:
        with Checkpoint(model) as c:
            arrays.append(
                {n: (c.read(n).astype(np.uint32) << 16).view(np.float32).reshape(c.info(n).shape) for n in c.names}
            )
    files = []
    for i, a in enumerate(arrays):
        stnp.save_file(a, tmp_path / f"m{i}.safetensors")
        files.append(tmp_path / f"m{i}.safetensors")
    merge(files[0], files[1:], tmp_path / "from_files", PRESETS["mergekit"])
    merge(arrays[0], arrays[1:], tmp_path / "from_numpy", PRESETS["mergekit"], SMALL)
    assert _tensors(tmp_path / "from_numpy") == _tensors(tmp_path / "from_files")


def test_cli_zarr_in_and_out_matches_the_library(
    zarr_models: Models, expected: dict[str, bytes], tmp_path: Path
) -> None:
    base, fts = zarr_models
    out = tmp_path / "cli.zarr"
    command = [sys.executable, "-m", "ooc_ties.cli", "merge", "-q", "--base", str(base), *map(str, fts), "-o", str(out)]
    subprocess.run(command, check=True)
    assert _group_tensors(zarr.open_group(out, mode="r")) == expected
    subprocess.run(
        [sys.executable, "-m", "ooc_ties.cli", "convert", "-q", str(out), str(tmp_path / "back")], check=True
    )
    assert _tensors(tmp_path / "back") == expected


def test_zarr_output_refuses_an_existing_array(tiny_models: Models) -> None:
    base, fts = tiny_models
    group = zarr.open_group(zarr.storage.MemoryStore(), mode="w")
    group.create_array("lm_head.weight", shape=(1,), dtype="float32")
    with pytest.raises(OutputPathError, match=r"lm_head\.weight"):
        merge(base, fts, group)


def test_bad_arrays_are_named(tmp_path: Path) -> None:
    good = {"w": np.zeros((2, 3), np.float32)}
    with pytest.raises(UnsupportedDtypeError, match=r"<base>: tensor 'w'.*complex64"):
        merge({"w": np.zeros((2, 3), np.complex64)}, [good], tmp_path / "out")
    with pytest.raises(CheckpointFormatError, match=r"<model 1>: tensor 'w' is a list"):
        merge(good, [{"w": [1.0, 2.0]}], tmp_path / "out")  # type: ignore[dict-item]
    group = zarr.open_group(zarr.storage.MemoryStore(), mode="w")
    group.create_array("w", shape=(2, 3), dtype="float32", attributes={DTYPE_ATTRIBUTE: "I64"})
    with pytest.raises(CheckpointFormatError, match="does not match the array's data type float32"):
        merge(good, [group], tmp_path / "out")
    assert not tmp_path.joinpath("out").exists()
    assert not list(tmp_path.iterdir())


def test_not_a_zarr_group(tmp_path: Path) -> None:
    (tmp_path / "x.zarr").mkdir()
    (tmp_path / "x.zarr" / "zarr.json").write_text(json.dumps({"zarr_format": 3, "node_type": "array"}))
    with pytest.raises(CheckpointFormatError, match=r"x\.zarr"):
        merge(tmp_path / "x.zarr", [tmp_path / "x.zarr"], tmp_path / "out")


@pytest.mark.parametrize("dtype", ["f16", "f32"])
def test_zarr_output_keeps_every_output_dtype(tiny_models: Models, tmp_path: Path, dtype: str) -> None:
    base, fts = tiny_models
    options = PRESETS["paper"].with_(out_dtype=dtype)
    merge(base, fts, tmp_path / "out", options)
    merge(base, fts, tmp_path / "out.zarr", options)
    convert(tmp_path / "out.zarr", tmp_path / "back")
    assert _tensors(tmp_path / "back") == _tensors(tmp_path / "out")


def test_corrupt_zarr_inputs_are_one_line_errors(zarr_models: Models, tmp_path: Path) -> None:
    import shutil

    base, fts = zarr_models
    broken = tmp_path / "broken.zarr"
    shutil.copytree(fts[0], broken)
    (broken / "lm_head.weight" / "zarr.json").write_text("{not json")
    with pytest.raises(CheckpointFormatError, match=r"broken\.zarr: cannot read the group's arrays"):
        merge(base, [broken, fts[1]], tmp_path / "out")
    shutil.rmtree(broken)
    shutil.copytree(fts[0], broken)
    chunk = next(p for p in (broken / "lm_head.weight").rglob("*") if p.is_file() and p.name != "zarr.json")
    chunk.write_bytes(chunk.read_bytes()[:10])  # a truncated chunk
    with pytest.raises(CheckpointFormatError, match=r"broken\.zarr: tensor 'lm_head\.weight': cannot read elements"):
        merge(base, [broken, fts[1]], tmp_path / "out")
    assert not list(tmp_path.glob("*out*"))


@pytest.mark.parametrize(
    "name",
    [
        "model.safetensors",
        "model.safetensors.index.json",
        ".ooc-ties-resume",
        "../b",
        "/etc/x",
        "a//b",
        "model-00001-of-00002.safetensors",
    ],
)
def test_side_files_cannot_overwrite_the_output(name: str, tmp_path: Path) -> None:
    group = zarr.open_group(zarr.storage.MemoryStore(), mode="w")
    group.create_array("w", shape=(4,), dtype="float32")
    group.attrs[FILES_ATTRIBUTE] = {name: "x"}
    with pytest.raises(CheckpointFormatError, match="names a bad file"):
        merge(group, [group], tmp_path / "out")
    group.attrs[FILES_ATTRIBUTE] = {"tokenizer.model": {"base64": "not base64!"}}
    with pytest.raises(CheckpointFormatError, match="not valid base64"):
        merge(group, [group], tmp_path / "out")


def test_ml_dtypes_bfloat16_arrays_are_bf16_inputs(tiny_models: Models, tmp_path: Path) -> None:
    """NumPy has no bfloat16; ``ml_dtypes``' is taken as BF16 (skipped where ml_dtypes is not installed)."""
    ml_dtypes = pytest.importorskip("ml_dtypes")
    base, fts = tiny_models
    models = []
    for model in [base, *fts]:
        with Checkpoint(model) as c:
            models.append({n: c.read(n).view(ml_dtypes.bfloat16).reshape(c.info(n).shape) for n in c.names})
    merge(models[0], models[1:], tmp_path / "out", PRESETS["paper"])
    merge(base, fts, tmp_path / "files", PRESETS["paper"])
    assert _tensors(tmp_path / "out") == _tensors(tmp_path / "files")


def test_a_safetensors_merge_does_not_import_zarr(tiny_models: tuple[Path, list[Path]], tmp_path: Path) -> None:
    # zarr takes 0.2 s to import (a third of the start-up); only Zarr inputs and outputs need it.
    base, fts = tiny_models
    script = (
        "import sys; from ooc_ties.cli import main\n"
        f"main(['merge', '--base', {str(base)!r}, *{[str(f) for f in fts]!r}, '-o', {str(tmp_path / 'out')!r}, '-q'])\n"
    )
    probe = "import atexit, sys; atexit.register(lambda: print('zarr' in sys.modules))\n"
    done = subprocess.run([sys.executable, "-c", probe + script], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"
    assert (tmp_path / "out" / "model.safetensors").is_file()
