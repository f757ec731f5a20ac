"""Bad input: every case fails with a non-zero exit, one line naming the culprit, and no side effects.

For each case the CLI (``ooc_ties.cli.main``) must:

* exit non-zero (1 for ooc-ties errors, 2 for click usage errors);
* print exactly one line ``ooc-ties: error: ...`` on stderr (no traceback) naming the file, tensor or
  option at fault;
* leave nothing at OUT, and no ``.<OUT>.ooc-ties-partial-*`` staging folder beside it;
* leave every input folder byte-for-byte untouched.

Inputs are copies of the session fixtures, corrupted in ``tmp_path``.
"""

from __future__ import annotations

import collections
import errno
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from conftest import tree_digest

from ooc_ties.cli import main
from ooc_ties.io.direct import DirectWriter
from ooc_ties.io.writer import INDEX_NAME

ST = "model.safetensors"
PREFIX = "ooc-ties: error: "
TENSOR = "model.layers.1.mlp.up_proj.weight"  # a bf16 [176, 64] tensor in the middle of the file
NORM_A = "model.layers.0.input_layernorm.weight"  # two bf16 [64] tensors
NORM_B = "model.layers.1.input_layernorm.weight"

BF16_NAN = 0x7FC0
BF16_POS_INF = 0x7F80


# ---------------------------------------------------------------------------------------------------
# safetensors surgery


def read_safetensors(path: Path) -> tuple[dict[str, Any], bytes]:
    """The parsed JSON header and the data buffer of a (well-formed) safetensors file."""
    raw = path.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    return json.loads(raw[8 : 8 + n]), raw[8 + n :]


def write_safetensors(path: Path, header: Any, data: bytes) -> None:
    """Write ``length + header + data``; the header is padded with spaces to a multiple of 8 bytes."""
    text = json.dumps(header, separators=(",", ":")).encode("utf-8")
    text += b" " * (-len(text) % 8)
    path.write_bytes(len(text).to_bytes(8, "little") + text + data)


def edit_header(path: Path, edit: Callable[[dict[str, Any]], Any]) -> None:
    """Rewrite ``path`` with ``edit(header)`` applied in place (its return value is ignored)."""
    header, data = read_safetensors(path)
    edit(header)
    write_safetensors(path, header, data)


def replace_header(path: Path, header: Any) -> None:
    """Rewrite ``path`` with another JSON header (any JSON value) and the same data buffer."""
    _, data = read_safetensors(path)
    write_safetensors(path, header, data)


def set_bf16(path: Path, tensor: str, index: int, bits: int) -> None:
    """Overwrite flat element ``index`` of bf16 tensor ``tensor`` with the bit pattern ``bits``."""
    raw = path.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8 : 8 + n])
    assert header[tensor]["dtype"] == "BF16"
    offset = 8 + n + header[tensor]["data_offsets"][0] + 2 * index
    with path.open("r+b") as f:
        f.seek(offset)
        f.write(bits.to_bytes(2, "little"))


# ---------------------------------------------------------------------------------------------------
# the harness


@dataclass
class Env:
    """Private copies of a base and three fine-tuned model folders, and an output path."""

    root: Path
    base: Path
    fts: list[Path]
    out: Path
    extra_inputs: list[Path] = field(default_factory=list)

    @property
    def inputs(self) -> list[Path]:
        return [self.base, *self.fts, *self.extra_inputs]

    def argv(
        self, *extra: str, base: Path | None = None, fts: Sequence[Path] | None = None, out: Path | None = None
    ) -> list[str]:
        return [
            "merge",
            *(str(f) for f in (self.fts if fts is None else fts)),
            "--base",
            str(self.base if base is None else base),
            "-o",
            str(self.out if out is None else out),
            "-q",
            *extra,
        ]


def _copy_models(base: Path, fts: Sequence[Path], tmp_path: Path) -> Env:
    root = tmp_path / "in"
    new_base = Path(shutil.copytree(base, root / "base"))
    new_fts = [Path(shutil.copytree(f, root / f.name)) for f in fts]
    return Env(root, new_base, new_fts, tmp_path / "out" / "merged")


@pytest.fixture
def env(tiny_models: tuple[Path, list[Path]], tmp_path: Path) -> Env:
    return _copy_models(*tiny_models, tmp_path)


@pytest.fixture
def sharded_env(sharded_models: tuple[Path, list[Path]], tmp_path: Path) -> Env:
    return _copy_models(*sharded_models, tmp_path)


def leftovers(out: Path) -> list[Path]:
    """Staging or trash folders of an output beside it."""
    if not out.parent.exists():
        return []
    return sorted(out.parent.glob(f".{out.name}.ooc-ties-*"))


def digests(folders: Sequence[Path]) -> dict[Path, str]:
    return {f: tree_digest(f) if f.is_dir() else f.read_bytes().hex() for f in folders if f.exists()}


def expect_failure(
    env: Env,
    argv: list[str],
    capsys: pytest.CaptureFixture[str],
    *needles: str,
    out: Path | None = None,
    out_absent: bool = True,
    code: int = 1,
) -> str:
    """Run ``main(argv)``; check the exit code, the one-line message, OUT and the inputs; return stderr."""
    out = env.out if out is None else out
    before = digests(env.inputs)
    capsys.readouterr()
    with pytest.raises(SystemExit) as info:
        main(argv)
    stdout, stderr = capsys.readouterr()
    assert info.value.code == code, stderr
    assert stdout == ""
    assert "Traceback" not in stderr
    if code == 1:
        # warnings about suspicious but legal inputs (``ooc_ties.lint``) may come first, each on a line
        lines = [line for line in stderr.strip().splitlines() if not line.startswith("WARNING ")]
        assert len(lines) == 1, stderr
        assert lines[0].startswith(PREFIX), stderr
        message = lines[0]
    else:
        message = stderr
    for needle in needles:
        assert needle in message, f"{needle!r} not in {message!r}"
    if out_absent:
        assert not out.exists()
    assert leftovers(out) == []
    assert digests(env.inputs) == before
    return message


# ---------------------------------------------------------------------------------------------------
# corrupted safetensors files


@pytest.mark.parametrize("which", [0, 2], ids=["ft1", "ft3"])
def test_truncated_in_data_area(env: Env, capsys: pytest.CaptureFixture[str], which: int) -> None:
    path = env.fts[which] / ST
    header, _ = read_safetensors(path)
    last = max((k for k in header if k != "__metadata__"), key=lambda k: header[k]["data_offsets"][1])
    path.write_bytes(path.read_bytes()[:-10])  # only the last tensor is cut
    message = expect_failure(env, env.argv(), capsys, str(path), repr(last), "truncated")
    assert str(env.base / ST) not in message


def test_truncated_base(env: Env, capsys: pytest.CaptureFixture[str]) -> None:
    path = env.base / ST
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    expect_failure(env, env.argv(), capsys, str(path), "truncated")


@pytest.mark.parametrize("size", [0, 1, 7])
def test_shorter_than_length_prefix(env: Env, capsys: pytest.CaptureFixture[str], size: int) -> None:
    path = env.fts[1] / ST
    path.write_bytes(path.read_bytes()[:size])
    expect_failure(env, env.argv(), capsys, str(path), "truncated")


@pytest.mark.parametrize("length", [10**9, 2**63, 2**64 - 1])
def test_header_length_past_end(env: Env, capsys: pytest.CaptureFixture[str], length: int) -> None:
    path = env.fts[1] / ST
    raw = path.read_bytes()
    path.write_bytes(length.to_bytes(8, "little") + raw[8:])
    expect_failure(env, env.argv(), capsys, str(path), "header length")


def test_header_only_length_prefix(env: Env, capsys: pytest.CaptureFixture[str]) -> None:
    """Exactly 8 bytes: a length of 8 runs past the end."""
    path = env.fts[0] / ST
    path.write_bytes((8).to_bytes(8, "little"))
    expect_failure(env, env.argv(), capsys, str(path))


@pytest.mark.parametrize(
    "header",
    [b"not json at all!", b'{"a": {"dtype": "BF16", ', b"\xff\xfe\x00\x01garbage!", b"        "],
    ids=["text", "cut-json", "not-utf8", "blank"],
)
def test_header_not_json(env: Env, capsys: pytest.CaptureFixture[str], header: bytes) -> None:
    path = env.fts[2] / ST
    _, data = read_safetensors(path)
    path.write_bytes(len(header).to_bytes(8, "little") + header + data)
    expect_failure(env, env.argv(), capsys, str(path), "JSON")


@pytest.mark.parametrize("value", [[1, 2, 3], "a string", 42, None], ids=["list", "string", "number", "null"])
def test_header_json_not_object(env: Env, capsys: pytest.CaptureFixture[str], value: Any) -> None:
    path = env.base / ST
    replace_header(path, [value] if value is None else value)
    expect_failure(env, env.argv(), capsys, str(path), "object")


def _shift_offsets(by: int) -> Callable[[dict[str, Any]], None]:
    def edit(h: dict[str, Any]) -> None:
        begin, end = h[TENSOR]["data_offsets"]
        h[TENSOR]["data_offsets"] = [begin + by, end + by]

    return edit


@pytest.mark.parametrize("by", [300_000, 10**15], ids=["past-end", "far-past-end"])
def test_offsets_outside_file(env: Env, capsys: pytest.CaptureFixture[str], by: int) -> None:
    path = env.fts[0] / ST
    edit_header(path, _shift_offsets(by))
    expect_failure(env, env.argv(), capsys, str(path), repr(TENSOR))


@pytest.mark.parametrize(
    "offsets", [[-2, 126], [0, 128.0], [0], "0-128", [True, 129]], ids=["negative", "float", "one", "string", "bool"]
)
def test_offsets_malformed(env: Env, capsys: pytest.CaptureFixture[str], offsets: Any) -> None:
    path = env.fts[0] / ST
    edit_header(path, lambda h: h[NORM_A].__setitem__("data_offsets", offsets))
    expect_failure(env, env.argv(), capsys, str(path), repr(NORM_A), "data_offsets")


def test_offsets_overlap_identical(env: Env, capsys: pytest.CaptureFixture[str]) -> None:
    path = env.fts[1] / ST
    edit_header(path, lambda h: h[NORM_B].__setitem__("data_offsets", list(h[NORM_A]["data_offsets"])))
    expect_failure(env, env.argv(), capsys, str(path), repr(NORM_A), repr(NORM_B), "overlap")


def test_offsets_overlap_partially(env: Env, capsys: pytest.CaptureFixture[str]) -> None:
    """Shift one tensor 2 bytes back into the one before it (its span still matches its size)."""
    path = env.fts[1] / ST
    edit_header(path, _shift_offsets(-2))
    message = expect_failure(env, env.argv(), capsys, str(path), repr(TENSOR), "overlap")
    assert "model.layers.1.mlp.gate_proj.weight" in message


@pytest.mark.parametrize("delta", [2, -2, 1], ids=["longer", "shorter", "odd"])
def test_offsets_span_not_dtype_times_shape(env: Env, capsys: pytest.CaptureFixture[str], delta: int) -> None:
    path = env.fts[2] / ST

    def edit(h: dict[str, Any]) -> None:
        begin, end = h[NORM_A]["data_offsets"]
        h[NORM_A]["data_offsets"] = [begin, end + delta]

    edit_header(path, edit)
    expect_failure(env, env.argv(), capsys, str(path), repr(NORM_A), "data_offsets")


def test_shape_disagrees_with_span(env: Env, capsys: pytest.CaptureFixture[str]) -> None:
    path = env.base / ST
    edit_header(path, lambda h: h[TENSOR].__setitem__("shape", [176, 65]))
    expect_failure(env, env.argv(), capsys, str(path), repr(TENSOR))


@pytest.mark.parametrize("shape", [[-64], [64.0], "64", [True] * 64], ids=["negative", "float", "string", "bool"])
def test_shape_malformed(env: Env, capsys: pytest.CaptureFixture[str], shape: Any) -> None:
    path = env.fts[1] / ST
    edit_header(path, lambda h: h[NORM_A].__setitem__("shape", shape))
    expect_failure(env, env.argv(), capsys, str(path), repr(NORM_A), "shape")


@pytest.mark.parametrize("key", ["dtype", "shape", "data_offsets"])
def test_header_entry_lacks_key(env: Env, capsys: pytest.CaptureFixture[str], key: str) -> None:
    path = env.fts[0] / ST
    edit_header(path, lambda h: h[TENSOR].pop(key))
    expect_failure(env, env.argv(), capsys, str(path), repr(TENSOR), key)


def test_header_entry_not_object(env: Env, capsys: pytest.CaptureFixture[str]) -> None:
    path = env.fts[0] / ST
    edit_header(path, lambda h: h.__setitem__(TENSOR, [1, 2]))
    expect_failure(env, env.argv(), capsys, str(path), repr(TENSOR))


@pytest.mark.parametrize("metadata", [["a"], {"format": 1}, "pt"], ids=["list", "non-string-value", "string"])
def test_metadata_malformed(env: Env, capsys: pytest.CaptureFixture[str], metadata: Any) -> None:
    path = env.fts[0] / ST
    edit_header(path, lambda h: h.__setitem__("__metadata__", metadata))
    expect_failure(env, env.argv(), capsys, str(path), "__metadata__")


# ---------------------------------------------------------------------------------------------------
# checkpoints that do not line up


def test_tensor_missing_in_finetuned(env: Env, capsys: pytest.CaptureFixture[str]) -> None:
    path = env.fts[1] / ST
    edit_header(path, lambda h: h.pop(TENSOR))
    expect_failure(env, env.argv(), capsys, str(env.fts[1]), repr(TENSOR), "missing")


def test_extra_tensor_simple(env: Env, capsys: pytest.CaptureFixture[str]) -> None:
    """A tensor appended at the end of the data buffer of one fine-tuned model."""
    path = env.fts[0] / ST
    header, data = read_safetensors(path)
    extra = "zzz.extra.bias"
    header[extra] = {"dtype": "BF16", "shape": [4], "data_offsets": [len(data), len(data) + 8]}
    write_safetensors(path, header, data + b"\x00" * 8)
    expect_failure(env, env.argv(), capsys, str(path), repr(extra))


@pytest.mark.parametrize("which", ["base", "ft2"])
def test_shape_mismatch(env: Env, capsys: pytest.CaptureFixture[str], which: str) -> None:
    folder = env.base if which == "base" else env.fts[1]
    edit_header(folder / ST, lambda h: h[TENSOR].__setitem__("shape", [64, 176]))  # same bytes, other shape
    message = expect_failure(env, env.argv(), capsys, repr(TENSOR), "shape")
    assert "[64, 176]" in message and "[176, 64]" in message


def test_shape_mismatch_same_numel_rank(env: Env, capsys: pytest.CaptureFixture[str]) -> None:
    edit_header(env.fts[2] / ST, lambda h: h[NORM_A].__setitem__("shape", [8, 8]))
    expect_failure(env, env.argv(), capsys, str(env.fts[2] / ST), repr(NORM_A), "shape")


def test_float_vs_integer_dtype(env: Env, capsys: pytest.CaptureFixture[str]) -> None:
    edit_header(env.fts[0] / ST, lambda h: h[NORM_A].__setitem__("dtype", "I16"))
    expect_failure(env, env.argv(), capsys, str(env.fts[0] / ST), repr(NORM_A), "dtype")


@pytest.mark.parametrize("dtype", ["F8_E4M3", "F8_E5M2", "Q4_K", "bf16", "", 16, None])
@pytest.mark.parametrize("which", ["base", "ft3"])
def test_unsupported_dtype(env: Env, capsys: pytest.CaptureFixture[str], dtype: Any, which: str) -> None:
    path = (env.base if which == "base" else env.fts[2]) / ST
    edit_header(path, lambda h: h[NORM_A].__setitem__("dtype", dtype))
    expect_failure(env, env.argv(), capsys, str(path), repr(NORM_A), "dtype", repr(dtype))


# ---------------------------------------------------------------------------------------------------
# non-finite values


# With one thread the first bad block is the one reported; with several see test_nonfinite_named_with_threads.


def test_nan_in_finetuned(env: Env, capsys: pytest.CaptureFixture[str]) -> None:
    path = env.fts[1] / ST
    set_bf16(path, TENSOR, 5, BF16_NAN)
    message = expect_failure(env, env.argv("--threads", "1"), capsys, str(path), repr(TENSOR), "nan")
    assert message.endswith(f"{path}: tensor {TENSOR!r} holds nan at element 5")


def test_inf_in_base(env: Env, capsys: pytest.CaptureFixture[str]) -> None:
    path = env.base / ST
    set_bf16(path, TENSOR, 1000, BF16_POS_INF)
    message = expect_failure(env, env.argv("--threads", "1"), capsys, str(path), repr(TENSOR), "inf")
    assert message.endswith(f"{path}: tensor {TENSOR!r} holds inf at element 1000")
    for ft in env.fts:
        assert str(ft) not in message


@pytest.mark.parametrize("which", ["ft2", "base"])
def test_nonfinite_named_with_threads(env: Env, capsys: pytest.CaptureFixture[str], which: str) -> None:
    """With several threads (the default) the message must still name the right tensor and element.

    The failure is a race, so the merge is repeated: each run reports a wrong tensor (with a made-up
    "task vector overflows float32 ... (fine-tuned 1.03 minus base 1.03)") about a third of the time.
    """
    path = (env.fts[1] if which == "ft2" else env.base) / ST
    set_bf16(path, TENSOR, 5, BF16_NAN if which == "ft2" else BF16_POS_INF)
    expected = f"{path}: tensor {TENSOR!r} holds {'nan' if which == 'ft2' else 'inf'} at element 5"
    wrong = []
    for _ in range(40):
        message = expect_failure(env, env.argv("--threads", "8"), capsys)
        if not message.endswith(expected):
            wrong.append(message)
    assert wrong == []


@pytest.mark.parametrize(
    "extra",
    [["--density", "1", "--zero-sign", "positive"], ["--density", "1"], ["--preset", "mergekit"]],
    ids=["no-pass1", "vote-only", "mergekit"],
)
def test_nan_in_finetuned_other_passes(env: Env, capsys: pytest.CaptureFixture[str], extra: list[str]) -> None:
    """Where pass 1 is skipped or partial, the NaN is found in pass 2, after the output was opened."""
    path = env.fts[2] / ST
    set_bf16(path, NORM_B, 3, BF16_NAN)
    expect_failure(env, env.argv(*extra), capsys, str(path), repr(NORM_B), "nan")


def test_inf_in_base_density_one(env: Env, capsys: pytest.CaptureFixture[str]) -> None:
    path = env.base / ST
    set_bf16(path, TENSOR, 7, BF16_POS_INF)
    expect_failure(env, env.argv("--density", "1", "--zero-sign", "positive"), capsys, str(path), repr(TENSOR), "inf")


# ---------------------------------------------------------------------------------------------------
# failures in pass 2 (the output folder is already being written)


def test_pass2_overflow_leaves_nothing(env: Env, capsys: pytest.CaptureFixture[str]) -> None:
    """The merged values overflow f16: the staging folder must go, and so must created parents."""
    out = env.root.parent / "new1" / "new2" / "merged"
    message = expect_failure(env, env.argv("--lambda", "1e38", "--dtype", "f16", out=out), capsys, out=out)
    assert "not finite" in message and "lambda" in message
    assert not (env.root.parent / "new1").exists()


def test_pass2_overflow_bf16(env: Env, capsys: pytest.CaptureFixture[str]) -> None:
    """The largest float32 lambda with weights that blow num up: bf16 output overflows."""
    set_bf16(env.fts[0] / ST, TENSOR, 0, 0x7F00)  # a huge fine-tuned value: tau ~ 1.7e38
    message = expect_failure(env, env.argv("--lambda", "3e38", "--density", "1"), capsys)
    assert "not finite" in message


def test_pass2_failure_keeps_existing_output_with_overwrite(env: Env, capsys: pytest.CaptureFixture[str]) -> None:
    env.out.mkdir(parents=True)
    (env.out / "keep.txt").write_text("old merge\n")
    before = tree_digest(env.out)
    expect_failure(env, env.argv("--overwrite", "--lambda", "1e38", "--dtype", "f16"), capsys, out_absent=False)
    assert tree_digest(env.out) == before


def test_pass2_failure_keeps_existing_empty_output(env: Env, capsys: pytest.CaptureFixture[str]) -> None:
    """An existing empty OUT may be used; after a failure it is still there, still empty."""
    env.out.mkdir(parents=True)
    expect_failure(env, env.argv("--lambda", "1e38", "--dtype", "f16"), capsys, out_absent=False)
    assert env.out.is_dir() and list(env.out.iterdir()) == []


def test_pass2_failure_multithreaded_sharded_output(env: Env, capsys: pytest.CaptureFixture[str]) -> None:
    """Several output shards open at once, several threads: still nothing left."""
    path = env.fts[0] / ST
    set_bf16(path, "model.norm.weight", 1, BF16_NAN)
    expect_failure(
        env,
        env.argv("--density", "1", "--zero-sign", "positive", "--threads", "4", "--shard-size", "20000"),
        capsys,
        str(path),
        "'model.norm.weight'",
    )


# ---------------------------------------------------------------------------------------------------
# output paths


def test_out_equal_to_finetuned(env: Env, capsys: pytest.CaptureFixture[str]) -> None:
    out = env.fts[1]
    expect_failure(env, env.argv(out=out), capsys, str(out), out=out, out_absent=False)


def test_out_equal_to_base(env: Env, capsys: pytest.CaptureFixture[str]) -> None:
    out = env.base
    expect_failure(env, env.argv("--overwrite", out=out), capsys, str(out), out=out, out_absent=False)


def test_out_equal_to_input_relative_spelling(
    env: Env, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(env.root)
    out = Path("ft2") / ".." / "ft2"
    expect_failure(env, env.argv("--overwrite", out=out), capsys, "ft2", out=env.fts[1], out_absent=False)


@pytest.mark.parametrize("which", ["base", "ft1"])
def test_out_inside_input(env: Env, capsys: pytest.CaptureFixture[str], which: str) -> None:
    folder = env.base if which == "base" else env.fts[0]
    out = folder / "merged"
    expect_failure(env, env.argv(out=out), capsys, str(out), out=out)


def test_out_deep_inside_input(env: Env, capsys: pytest.CaptureFixture[str]) -> None:
    out = env.fts[2] / "a" / "b" / "merged"
    expect_failure(env, env.argv(out=out), capsys, str(out), out=out)
    assert not (env.fts[2] / "a").exists()


def test_out_containing_input(env: Env, capsys: pytest.CaptureFixture[str]) -> None:
    out = env.root
    expect_failure(env, env.argv("--overwrite", out=out), capsys, str(out), out=out, out_absent=False)


def test_out_exists_non_empty(env: Env, capsys: pytest.CaptureFixture[str]) -> None:
    env.out.mkdir(parents=True)
    (env.out / "something.txt").write_text("precious\n")
    before = tree_digest(env.out)
    expect_failure(env, env.argv(), capsys, str(env.out), "exists", out_absent=False)
    assert tree_digest(env.out) == before


def test_out_exists_as_file(env: Env, capsys: pytest.CaptureFixture[str]) -> None:
    env.out.parent.mkdir(parents=True)
    env.out.write_text("a file\n")
    expect_failure(env, env.argv(), capsys, str(env.out), out_absent=False)
    assert env.out.read_text() == "a file\n"


# ---------------------------------------------------------------------------------------------------
# missing paths and folders without safetensors


@pytest.mark.parametrize("which", ["base", "ft2"])
def test_missing_path(env: Env, capsys: pytest.CaptureFixture[str], which: str) -> None:
    missing = env.root / "no-such-model"
    argv = env.argv(base=missing) if which == "base" else env.argv(fts=[env.fts[0], missing, env.fts[2]])
    expect_failure(env, argv, capsys, str(missing))


def test_missing_single_file(env: Env, capsys: pytest.CaptureFixture[str]) -> None:
    missing = env.fts[0] / "nope.safetensors"
    expect_failure(env, env.argv(fts=[missing, env.fts[1]]), capsys, str(missing))


@pytest.mark.parametrize("which", ["base", "ft1"])
def test_empty_folder(env: Env, capsys: pytest.CaptureFixture[str], which: str) -> None:
    empty = env.root / "empty"
    empty.mkdir()
    env.extra_inputs.append(empty)
    argv = env.argv(base=empty) if which == "base" else env.argv(fts=[empty, *env.fts[1:]])
    expect_failure(env, argv, capsys, str(empty), "safetensors")


@pytest.mark.parametrize("name", ["pytorch_model.bin", "pytorch_model.bin.index.json", "model.pt"])
def test_folder_with_only_pytorch_weights(env: Env, capsys: pytest.CaptureFixture[str], name: str) -> None:
    folder = env.root / "torch"
    folder.mkdir()
    (folder / name).write_bytes(b"PK\x03\x04 not really a pickle")
    shutil.copy(env.base / "config.json", folder / "config.json")
    env.extra_inputs.append(folder)
    message = expect_failure(env, env.argv(fts=[env.fts[0], folder]), capsys, str(folder), name)
    assert "only safetensors" in message


def test_folder_with_two_safetensors_and_no_index(env: Env, capsys: pytest.CaptureFixture[str]) -> None:
    shutil.copy(env.fts[0] / ST, env.fts[0] / "extra.safetensors")
    expect_failure(env, env.argv(), capsys, str(env.fts[0]), INDEX_NAME)


def test_safetensors_name_that_is_a_folder(env: Env, capsys: pytest.CaptureFixture[str]) -> None:
    """A model folder whose only *.safetensors entry is a sub-folder holds no safetensors file."""
    folder = env.root / "odd"
    (folder / ST).mkdir(parents=True)
    env.extra_inputs.append(folder)
    expect_failure(env, env.argv(fts=[folder, env.fts[1]]), capsys, str(folder))


def test_input_is_a_non_safetensors_file(env: Env, capsys: pytest.CaptureFixture[str]) -> None:
    """A single-file input that is not safetensors (here a config.json)."""
    path = env.fts[0] / "config.json"
    expect_failure(env, env.argv(fts=[path, env.fts[1]]), capsys, str(path))


# ---------------------------------------------------------------------------------------------------
# options


@pytest.mark.parametrize("value", ["0", "1.5", "-0.1", "nan", "inf", "-inf", "1e-400"])
def test_density_out_of_range(env: Env, capsys: pytest.CaptureFixture[str], value: str) -> None:
    expect_failure(env, env.argv(f"--density={value}"), capsys, "density")


@pytest.mark.parametrize("value", ["abc", "", "0.2.3", "20%"])
def test_density_not_a_number(env: Env, capsys: pytest.CaptureFixture[str], value: str) -> None:
    expect_failure(env, env.argv(f"--density={value}"), capsys, "--density", code=2)


@pytest.mark.parametrize("value", ["nan", "inf", "1e39", "-1e39"])
def test_lambda_not_finite(env: Env, capsys: pytest.CaptureFixture[str], value: str) -> None:
    expect_failure(env, env.argv(f"--lambda={value}"), capsys, "lambda")


def test_lambda_not_a_number(env: Env, capsys: pytest.CaptureFixture[str]) -> None:
    expect_failure(env, env.argv("--lambda", "big"), capsys, "--lambda", code=2)


@pytest.mark.parametrize("weights", [["1", "2"], ["1", "1", "1", "1"], ["1"]], ids=["two", "four", "one"])
def test_weights_count_mismatch(env: Env, capsys: pytest.CaptureFixture[str], weights: list[str]) -> None:
    message = expect_failure(env, env.argv("--weights", *weights), capsys, "weights")
    assert f"{len(weights)} weights" in message and "3 fine-tuned" in message


@pytest.mark.parametrize("weights", ["1,2,x", "1,nan,1", "1,inf,1", ","], ids=["word", "nan", "inf", "empty"])
def test_weights_malformed(env: Env, capsys: pytest.CaptureFixture[str], weights: str) -> None:
    expect_failure(env, env.argv("--weights", weights), capsys, "weights")


@pytest.mark.parametrize("value", ["garbage", "2 potatoes", "-1GiB", "0", "GiB", "1.5.3MB"])
def test_memory_budget_garbage(env: Env, capsys: pytest.CaptureFixture[str], value: str) -> None:
    expect_failure(env, env.argv(f"--memory-budget={value}"), capsys, "memory budget")


def test_memory_budget_too_small(env: Env, capsys: pytest.CaptureFixture[str]) -> None:
    expect_failure(env, env.argv("--memory-budget", "1KiB"), capsys, "memory budget")


@pytest.mark.parametrize("value", ["lots", "0MB"])
def test_shard_size_garbage(env: Env, capsys: pytest.CaptureFixture[str], value: str) -> None:
    expect_failure(env, env.argv(f"--shard-size={value}"), capsys, "shard size")


@pytest.mark.parametrize("value", ["0", "-3"])
def test_threads_not_positive(env: Env, capsys: pytest.CaptureFixture[str], value: str) -> None:
    expect_failure(env, env.argv(f"--threads={value}"), capsys, "threads")


def test_no_finetuned_model(env: Env, capsys: pytest.CaptureFixture[str]) -> None:
    expect_failure(env, env.argv(fts=[]), capsys, "FINETUNED", code=2)


def test_no_base(env: Env, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["merge", *(str(f) for f in env.fts), "-o", str(env.out), "-q"]
    expect_failure(env, argv, capsys, "--base", code=2)


@pytest.mark.parametrize("option,value", [("--dtype", "f8"), ("--scope", "layer"), ("--preset", "magic")])
def test_bad_choice(env: Env, capsys: pytest.CaptureFixture[str], option: str, value: str) -> None:
    expect_failure(env, env.argv(option, value), capsys, option, code=2)


# ---------------------------------------------------------------------------------------------------
# sharded inputs


def test_index_lists_missing_shard(sharded_env: Env, capsys: pytest.CaptureFixture[str]) -> None:
    env = sharded_env
    folder = env.fts[1]
    index = json.loads((folder / INDEX_NAME).read_text())
    shard = sorted(set(index["weight_map"].values()))[1]
    (folder / shard).unlink()
    expect_failure(env, env.argv(), capsys, str(folder / INDEX_NAME), shard)


def test_index_points_to_unknown_shard(sharded_env: Env, capsys: pytest.CaptureFixture[str]) -> None:
    env = sharded_env
    folder = env.base
    index = json.loads((folder / INDEX_NAME).read_text())
    index["weight_map"]["ghost.weight"] = "model-00099-of-00099.safetensors"
    (folder / INDEX_NAME).write_text(json.dumps(index))
    expect_failure(env, env.argv(), capsys, str(folder / INDEX_NAME), "model-00099-of-00099.safetensors")


@pytest.mark.parametrize(
    "text",
    ["{not json", "", "\xff\xfe", '["weight_map"]', '{"weight_map": []}', '{"weight_map": {"a": 1}}'],
    ids=["broken", "empty", "not-utf8", "list", "map-is-list", "non-string-shard"],
)
def test_index_not_json_or_malformed(sharded_env: Env, capsys: pytest.CaptureFixture[str], text: str) -> None:
    env = sharded_env
    path = env.fts[2] / INDEX_NAME
    path.write_bytes(text.encode("latin-1"))
    expect_failure(env, env.argv(), capsys, str(path))


def test_index_points_outside_folder(sharded_env: Env, capsys: pytest.CaptureFixture[str]) -> None:
    env = sharded_env
    path = env.fts[0] / INDEX_NAME
    index = json.loads(path.read_text())
    name = sorted(index["weight_map"])[0]
    index["weight_map"][name] = f"../{env.base.name}/{index['weight_map'][name]}"
    path.write_text(json.dumps(index))
    expect_failure(env, env.argv(), capsys, str(path), repr(name))


def test_corrupt_shard(sharded_env: Env, capsys: pytest.CaptureFixture[str]) -> None:
    env = sharded_env
    folder = env.fts[0]
    shard = sorted(folder.glob("*.safetensors"))[-1]
    shard.write_bytes(shard.read_bytes()[:-10])
    expect_failure(env, env.argv(), capsys, str(shard), "truncated")


# ---------------------------------------------------------------------------------------------------
# disk space


@pytest.mark.parametrize(
    ("code", "needle"), [(errno.EIO, "Input/output error (writing tensor '"), (errno.ENOSPC, "the disk is full")]
)
def test_a_write_error_in_pass_2_is_one_line_and_the_merge_can_be_resumed(
    env: Env, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, code: int, needle: str
) -> None:
    """The disk fails during pass 2 (after a few blocks): a one-line error naming the shard, no
    traceback, no hang, nothing at OUT, the partial merge kept; --resume then finishes it."""
    real = DirectWriter.pwrite
    calls = 0

    def failing(self: DirectWriter, data: Any, offset: int) -> None:
        nonlocal calls
        calls += 1
        if calls > 5:
            raise OSError(code, os.strerror(code))
        real(self, data, offset)

    monkeypatch.setattr(DirectWriter, "pwrite", failing)
    capsys.readouterr()
    with pytest.raises(SystemExit) as info:
        main(env.argv("--threads", "2", "--block-elements", "3000"))
    err = capsys.readouterr().err
    assert info.value.code == 1 and "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert last.startswith(PREFIX) and needle in last and "model.safetensors" in last, err
    assert not env.out.exists() and len(leftovers(env.out)) == 1
    monkeypatch.undo()
    before = digests(env.inputs)
    main(env.argv("--threads", "2", "--block-elements", "3000", "--resume"))
    main(env.argv("--threads", "2", out=env.root / "fresh"))
    assert tree_digest(env.out) == tree_digest(env.root / "fresh")
    assert leftovers(env.out) == [] and digests(env.inputs) == before


def test_not_enough_disk(env: Env, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    usage = collections.namedtuple("usage", "total used free")
    seen: list[Path] = []

    def fake_disk_usage(path: os.PathLike[str] | str) -> Any:
        seen.append(Path(path))
        return usage(10**12, 10**12, 0)

    monkeypatch.setattr(shutil, "disk_usage", fake_disk_usage)
    message = expect_failure(env, env.argv(), capsys, "disk")
    assert seen
    assert str(seen[0]) in message
    assert not env.out.parent.exists()  # a missing parent of OUT is not created either


def test_just_too_little_disk(env: Env, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """Free space for the tensors but not the margin: still refused up front."""
    usage = collections.namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10**12, 0, 300_000))
    expect_failure(env, env.argv(), capsys, "disk", "300,000")


# ---------------------------------------------------------------------------------------------------
# real processes: no traceback


def _run(argv: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ooc_ties.cli", *argv],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONWARNINGS": "default"},
    )


def test_subprocess_bad_header(env: Env) -> None:
    path = env.fts[1] / ST
    path.write_bytes((10**9).to_bytes(8, "little") + path.read_bytes()[8:])
    before = digests(env.inputs)
    proc = _run(env.argv())
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(PREFIX) and str(path) in lines[0], proc.stderr
    assert proc.stdout == ""
    assert not env.out.exists() and leftovers(env.out) == []
    assert digests(env.inputs) == before


def test_subprocess_nan_with_progress_bars(env: Env) -> None:
    """Without -q the bars are printed, but the error is still one line, last, with no traceback."""
    path = env.fts[0] / ST
    set_bf16(path, TENSOR, 9, BF16_NAN)
    before = digests(env.inputs)
    argv = [a for a in env.argv("--density", "1", "--zero-sign", "positive") if a != "-q"]
    proc = _run(argv)
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if "ooc-ties: error" in line]
    assert len(errors) == 1 and errors[0].startswith(PREFIX), proc.stderr
    assert proc.stderr.rstrip().endswith(errors[0])
    assert str(path) in errors[0] and repr(TENSOR) in errors[0]
    assert not env.out.exists() and leftovers(env.out) == []
    assert digests(env.inputs) == before
