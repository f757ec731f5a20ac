"""The output folder is usable as the base folder was: every side file, sub-folders included, no weights
of the base, and a model card (``README.md``) in place of the base's."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

from ooc_ties import PRESETS, merge
from ooc_ties.convert import convert
from ooc_ties.errors import CheckpointFormatError
from ooc_ties.io import side_files, zarr_format, zarr_output
from ooc_ties.io.arrays import ArraySource
from ooc_ties.io.checkpoint import Checkpoint
from ooc_ties.io.side_files import collect_side_files, skip_reason
from ooc_ties.io.zarr_format import FILES_ATTRIBUTE, INLINE_LIMIT
from ooc_ties.model_card import card_recipe, hub_name, library_name, model_card
from tests.conftest import tree_digest

Models = tuple[Path, list[Path]]

ST_SIDE_FILES = {
    "modules.json": b'[{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},'
    b' {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]\n',
    "sentence_bert_config.json": b'{"max_seq_length": 256, "do_lower_case": false}\n',
    "tokenizer.json": b'{"version": "1.0", "model": {"type": "WordPiece"}}\n',
    "vocab.txt": b"[PAD]\n[UNK]\n[CLS]\n[SEP]\nhello\nworld\n",
    "1_Pooling/config.json": b'{"word_embedding_dimension": 64, "pooling_mode_mean_tokens": true}\n',
    "spiece.model": bytes(range(256)) * (INLINE_LIMIT // 256 + 7),  # binary, and too large for the attribute
}
"""A sentence-transformers model's side files (beside the generated config.json and generation_config.json)."""
ST_NOT_COPIED = {
    "README.md": b"# the base's own card\n",  # replaced by the merge's card
    "pytorch_model.bin": b"weights in another format",
    "onnx/model.onnx": b"weights in another format",
    "original/consolidated.00.pth": b"weights in another format",
    "ooc_ties_recipe.json": b'{"tool": "ooc-ties"}\n',  # the base's own recipe
    ".git/HEAD": b"ref: refs/heads/main\n",
    ".cache/huggingface/download/x.lock": b"",
}
BERT_SIDE_FILES = {
    "vocab.txt": b"[PAD]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\nthe\n",
    "tokenizer_config.json": b'{"do_lower_case": true, "tokenizer_class": "BertTokenizer"}\n',
    "special_tokens_map.json": b'{"cls_token": "[CLS]", "sep_token": "[SEP]", "unk_token": "[UNK]"}\n',
}


def _files(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` by relative POSIX path (links followed)."""
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _write(folder: Path, files: dict[str, bytes]) -> None:
    for name, data in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)


def _front_matter(card: str) -> dict[str, Any]:
    found = re.match(r"---\n(.*?)\n---\n", card, flags=re.S)
    assert found, card[:200]
    parsed = yaml.safe_load(found.group(1))
    assert isinstance(parsed, dict)
    return parsed


def _recipe_block(card: str) -> dict[str, Any]:
    found = re.search(r"^(`{3,})json\n(.*?)^\1$", card, flags=re.S | re.M)
    assert found, card
    parsed = json.loads(found.group(2))
    assert isinstance(parsed, dict)
    return parsed


@pytest.fixture
def st_base(tiny_models: Models, tmp_path: Path) -> Path:
    """A copy of the tiny base laid out as a sentence-transformers model, with weights and hidden entries
    that must not be copied."""
    base = tmp_path / "st-base"
    shutil.copytree(tiny_models[0], base)
    _write(base, {**ST_SIDE_FILES, **ST_NOT_COPIED})
    return base


def test_a_sentence_transformers_base_gives_a_whole_folder(
    st_base: Path, tiny_models: Models, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    _, fts = tiny_models
    before = tree_digest(st_base)
    with caplog.at_level(logging.INFO, logger="ooc_ties.io.side_files"):
        result = merge(st_base, fts, tmp_path / "out", PRESETS["paper"])
    assert result.output is not None
    got = _files(result.output)
    expected = {name: data for name, data in _files(st_base).items() if name in ST_SIDE_FILES}
    expected["config.json"] = (st_base / "config.json").read_bytes()
    expected["generation_config.json"] = (st_base / "generation_config.json").read_bytes()
    assert set(got) == {*expected, "model.safetensors", "ooc_ties_recipe.json", "README.md", "mergekit_config.yml"}
    assert {name: got[name] for name in expected} == expected
    assert not (result.output / "original").exists() and not (result.output / "onnx").exists()
    skipped = [r.getMessage() for r in caplog.records if "weights not copied" in r.getMessage()]
    assert len(skipped) == 1 and "onnx/model.onnx" in skipped[0] and "pytorch_model.bin" in skipped[0]
    assert "model.safetensors" not in skipped[0].split(": ", 1)[1]  # the merged weights are not worth a line

    card = got["README.md"].decode()
    assert card != ST_NOT_COPIED["README.md"].decode()
    front = _front_matter(card)
    assert front["base_model"] == str(st_base)
    assert front["tags"] == ["merge", "ooc-ties"]
    assert front["library_name"] == "sentence-transformers"
    recipe = json.loads(got["ooc_ties_recipe.json"])
    assert _recipe_block(card) == card_recipe(recipe)

    assert _recipe_block(card)["options"] == recipe["options"]
    for model in fts:
        assert f"`{model}`" in card
    assert "TIES" in card and "density: 0.2" in card and "preset `paper`" in card
    assert tree_digest(st_base) == before


def test_sentence_transformers_module_weights_are_copied_from_the_base_with_a_warning(
    st_base: Path, tiny_models: Models, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A module folder listed in modules.json (``2_Dense/``) holds weights the model cannot load without
    and the merge does not cover: they are copied from the base, and a WARNING says they are not merged.
    Weights in folders that are no module (``onnx/``, ``original/``) are still left out."""
    _, fts = tiny_models
    modules = json.loads(ST_SIDE_FILES["modules.json"])
    modules.append({"idx": 2, "name": "2", "path": "2_Dense", "type": "sentence_transformers.models.Dense"})
    dense = {"2_Dense/config.json": b'{"in_features": 64, "out_features": 32}\n', "2_Dense/model.safetensors": b"dense"}
    _write(st_base, {"modules.json": json.dumps(modules).encode(), **dense})
    with caplog.at_level(logging.INFO, logger="ooc_ties.io.side_files"):
        result = merge(st_base, fts, tmp_path / "out", PRESETS["paper"])
    assert result.output is not None
    got = _files(result.output)
    assert {name: got.get(name) for name in dense} == dense
    assert "onnx/model.onnx" not in got and "original/consolidated.00.pth" not in got
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warned) == 1 and "2_Dense/model.safetensors" in warned[0] and "not merged" in warned[0]


def test_a_bert_base_from_the_hub_cache_keeps_its_tokenizer(tiny_models: Models, tmp_path: Path) -> None:
    """A Hugging Face cache snapshot: every file is a link to a blob; the card names the Hub model."""
    _, fts = tiny_models
    hub = tmp_path / "hub" / "models--acme--bert-tiny"
    snapshot = hub / "snapshots" / "0123abcd"
    snapshot.mkdir(parents=True)
    (hub / "blobs").mkdir()
    plain = tmp_path / "plain"
    shutil.copytree(tiny_models[0], plain)
    _write(plain, BERT_SIDE_FILES)
    for number, (name, data) in enumerate(sorted(_files(plain).items())):
        blob = hub / "blobs" / f"blob{number}"
        blob.write_bytes(data)
        (snapshot / name).symlink_to(os.path.relpath(blob, snapshot))
    options = dataclasses.replace(PRESETS["mergekit"], out_dtype="f32")
    result = merge(snapshot, fts, tmp_path / "out", options)
    assert result.output is not None
    got = _files(result.output)
    assert not any(p.is_symlink() for p in result.output.iterdir())
    # the mergekit preset's merge is also written as a mergekit configuration (ooc_ties.from_config)
    assert set(got) == {*_files(plain), "README.md", "ooc_ties_recipe.json", "mergekit_config.yml"}
    for name, data in BERT_SIDE_FILES.items():
        assert got[name] == data
    assert got["generation_config.json"] == (plain / "generation_config.json").read_bytes()
    config = json.loads(got["config.json"])
    assert config["torch_dtype"] == "float32"
    assert {**config, "torch_dtype": "bfloat16"} == json.loads((plain / "config.json").read_bytes())
    front = _front_matter(got["README.md"].decode())
    assert front == {"base_model": "acme/bert-tiny", "library_name": "transformers", "tags": ["merge", "ooc-ties"]}
    card = got["README.md"].decode()
    recipe = json.loads(got["ooc_ties_recipe.json"])
    tensor = "model.layers.0.mlp.up_proj.weight"
    assert recipe["options"]["scope"] == "tensor" and tensor in recipe["thresholds"]["groups"]
    assert tensor not in card  # the per-tensor thresholds are summarised
    assert _recipe_block(card)["thresholds"]["groups"] == len(recipe["thresholds"]["groups"])


@pytest.mark.parametrize("piece", [None, 4096], ids=["pieces-8MiB", "pieces-4KiB"])
def test_a_zarr_output_converts_back_to_the_whole_folder(
    piece: int | None, st_base: Path, tiny_models: Models, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Side files travel through a Zarr group (a large one as a chunked array) and come back whole."""
    if piece is not None:  # many chunks per array-held file, and arrays for smaller files too
        for module in (side_files, zarr_format, zarr_output):
            monkeypatch.setattr(module, "PIECE", piece)
        monkeypatch.setattr(zarr_format, "INLINE_LIMIT", 3 * piece)
    _, fts = tiny_models
    stored = merge(st_base, fts, tmp_path / "out.zarr", PRESETS["paper"]).output
    folder = merge(st_base, fts, tmp_path / "out", PRESETS["paper"]).output
    assert stored is not None and folder is not None
    listed = json.loads((stored / "zarr.json").read_text())["attributes"][FILES_ATTRIBUTE]
    assert listed["1_Pooling/config.json"] == ST_SIDE_FILES["1_Pooling/config.json"].decode()
    assert listed["spiece.model"] == {"array": "huggingface_files/0"}  # too large for the attribute
    source = ArraySource.open(stored)
    try:  # the arrays of the side files are no tensors
        with Checkpoint(st_base) as base:
            assert source.names == base.names
    finally:
        source.close()
    back = convert(stored, tmp_path / "back").output
    assert back is not None
    got = _files(back)
    want = _files(folder)
    del got["model.safetensors"], want["model.safetensors"]  # (their metadata differ; test_zarr_api checks the bits)
    del want["ooc_ties_recipe.json"]  # a Zarr group holds its recipe as an attribute, which convert leaves out
    assert got == want
    assert got["spiece.model"] == ST_SIDE_FILES["spiece.model"]
    assert _front_matter(got["README.md"].decode())["base_model"] == str(st_base)


def test_convert_copies_every_side_file_and_writes_no_card(st_base: Path, tmp_path: Path) -> None:
    result = convert(st_base, tmp_path / "copy")
    assert result.output is not None
    got = _files(result.output)
    kept = ["config.json", "generation_config.json", "model.safetensors"]
    wanted = {**ST_SIDE_FILES, "README.md": ST_NOT_COPIED["README.md"], **{n: (st_base / n).read_bytes() for n in kept}}
    assert got == wanted  # the base's own README.md, not a card; no other weights, nothing hidden


def test_what_is_a_side_file() -> None:
    for name in [
        "config.json",
        "vocab.txt",
        "1_Pooling/config.json",
        "README.md",
        "a/b/c.jinja",
        "x/ooc_ties_recipe.json",
    ]:
        assert skip_reason(name) is None, name
    for name in [
        "model.safetensors",
        "2_Dense/model.safetensors",
        "pytorch_model.bin",
        "MODEL.BIN",
        "m.pt",
        "m.pth",
        "onnx/model.onnx",
        "onnx/model.onnx_data",
        "m.gguf",
        "tf_model.h5",
        "flax_model.msgpack",
        "m.ckpt",
        "model.safetensors.index.json",
        "pytorch_model.bin.index.json",
    ]:
        assert skip_reason(name) == "weights", name
    for name in [".git/HEAD", ".gitattributes", "a/.cache/x", "", "/etc/passwd", "../x", "a//b", "a/./b"]:
        assert skip_reason(name) == "hidden", name
    assert skip_reason("ooc_ties_recipe.json") == "recipe"


def test_side_files_follow_links_once_and_skip_broken_ones(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    folder = tmp_path / "m"
    _write(folder, {"config.json": b"{}", "sub/a.txt": b"a"})
    (tmp_path / "outside.txt").write_bytes(b"outside")
    (folder / "linked.txt").symlink_to(tmp_path / "outside.txt")
    (folder / "sub" / "loop").symlink_to(folder)  # a cycle
    (folder / "broken.txt").symlink_to(tmp_path / "missing")
    with caplog.at_level(logging.WARNING):
        files = collect_side_files(folder)
    assert {name: file.read() for name, file in files.items()} == {
        "config.json": b"{}",
        "linked.txt": b"outside",
        "sub/a.txt": b"a",
    }
    assert "broken.txt: not copied" in caplog.text and "loop: not copied" in caplog.text


def _recipe(scope: str, groups: int, models: int = 2) -> dict[str, Any]:
    return {
        "tool": "ooc-ties",
        "version": "0.1.0",
        "base": "models/base",
        "models": [f"models/ft{i + 1}" for i in range(models)],
        "options": {
            "method": "ties",
            "density": 0.2,
            "lambda": 1.0,
            "scope": scope,
            "trim": "topk",
            "zero_sign": "positive",
            "weights": [0.7, 0.3][:models],
            "dtype": "BF16",
        },
        "thresholds": {
            "format": "ooc-ties-thresholds/2",
            "basis": {},
            "inputs": {"files": [{"path": "/abs/models/base/model.safetensors", "digest": "0" * 32}]},
            "groups": {
                ("" if scope == "global" else f"layer.{g}.weight"): [
                    {"size": 100, "threshold": 0.5, "pattern": 1056964608, "keep_equal": -1, "kept": 20 + m}
                    for m in range(models)
                ]
                for g in range(groups)
            },
            "majority": {},
        },
        "merged_parameters": 100 * groups,
    }


def test_the_card_summarises_per_tensor_thresholds() -> None:
    card = model_card(_recipe("tensor", 5000), library="transformers")
    assert len(card) < 4000 and "layer.17.weight" not in card and "/abs/models" not in card
    shown = _recipe_block(card)
    assert shown["thresholds"] == {"groups": 5000, "kept": [100_000, 105_000], "of": [500_000, 500_000]}
    assert shown["options"]["weights"] == [0.7, 0.3] and "weights: 0.7, 0.3" in card and "dtype: BF16" in card
    assert _front_matter(card) == {
        "base_model": "models/base",
        "library_name": "transformers",
        "tags": ["merge", "ooc-ties"],
    }
    global_card = model_card(_recipe("global", 1))
    assert _recipe_block(global_card)["thresholds"]["threshold"] == [0.5, 0.5]
    assert "library_name" not in _front_matter(global_card)


def test_the_card_survives_awkward_labels() -> None:
    recipe = {**_recipe("global", 1), "base": 'a: b #c "q" \\ ü', "models": ["x ```json y", "`z`"]}
    card = model_card(recipe)
    assert _front_matter(card)["base_model"] == 'a: b #c "q" \\ ü'
    assert _recipe_block(card)["models"] == ["x ```json y", "`z`"]
    assert model_card(recipe) == card  # a pure function


def test_hub_names_and_libraries() -> None:
    assert hub_name("/h/.cache/huggingface/hub/models--org--name/snapshots/abc123") == "org/name"
    assert hub_name("/h/.cache/huggingface/hub/models--gpt2/snapshots/abc123/") == "gpt2"
    assert hub_name("models/base") == "models/base"
    assert library_name(["modules.json", "config.json"], b'{"model_type": "bert"}') == "sentence-transformers"
    assert library_name(["config.json"], b'{"architectures": ["BertModel"]}') == "transformers"
    assert library_name(["config.json"], b"not json") is None
    assert library_name([], None) is None


@pytest.mark.parametrize(
    "entry", [{"array": "huggingface_files/7"}, {"array": "w"}, {"array": "huggingface_files/x/0"}]
)
def test_a_side_file_entry_must_name_one_of_the_side_file_arrays(entry: dict[str, str], tmp_path: Path) -> None:
    import zarr
    import zarr.storage

    group = zarr.open_group(zarr.storage.MemoryStore(), mode="w")
    group.create_array("w", shape=(4,), dtype="uint8")
    group.create_array("huggingface_files/0", shape=(4,), dtype="float32")
    group.attrs[FILES_ATTRIBUTE] = {"tokenizer.json": entry}
    with pytest.raises(CheckpointFormatError, match=r"side file 'tokenizer\.json': .* is not a 1-D uint8 array"):
        convert(group, tmp_path / "out")
    group.attrs[FILES_ATTRIBUTE] = {"tokenizer.json": {"array": "huggingface_files/0"}}  # float32
    with pytest.raises(CheckpointFormatError, match=r"is not a 1-D uint8 array"):
        convert(group, tmp_path / "out")
    assert not (tmp_path / "out").exists()
