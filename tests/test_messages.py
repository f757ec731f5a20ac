"""What ooc-ties tells its user: PyTorch files met where safetensors were expected, Hugging Face Hub IDs
(found in the local cache, never downloaded), the reads a dry run expects, pass 1's progress total, and
the CLI's summary (after a resume, rates of small merges, no blank lines, ``python -m ooc_ties``).
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import pty
import shlex
import shutil
import socket
import subprocess
import sys
import time
import types
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from safetensors.numpy import save_file

from ooc_ties import PRESETS, Resources, merge, plan_merge
from ooc_ties.blocks import plan_blocks
from ooc_ties.cli import _throughput, main
from ooc_ties.errors import CheckpointFormatError, CheckpointNotFoundError
from ooc_ties.inputs import MergeInputs
from ooc_ties.io.arrays import ArraySource
from ooc_ties.io.hub import HubId, hub_cache, parse_hub_id
from ooc_ties.io.safetensors import SafetensorsFile
from ooc_ties.pass1.costs import SAMPLE_STRIDE, VOTE_STRIDE, plan_reads
from ooc_ties.pass1.run import compute_thresholds
from ooc_ties.plan import make_plan
from ooc_ties.sources import open_source

Models = tuple[Path, list[Path]]
PREFIX = "ooc-ties: error: "
ST = "model.safetensors"


def _fail(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """Run the CLI, expect exit code 1 and one error line; return that line."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as info:
        main(argv)
    stderr = capsys.readouterr().err
    assert info.value.code == 1, stderr
    lines = [line for line in stderr.strip().splitlines() if not line.startswith(("WARNING ", "INFO "))]
    assert len(lines) == 1 and lines[0].startswith(PREFIX), stderr
    return lines[0]


# ---------------------------------------------------------------------------------------------------
# 1. PyTorch weights where safetensors were expected


def _torch_pickle(path: Path, protocol: int) -> Path:
    """A file shaped like ``torch.save(..., _use_new_zipfile_serialization=False)``: a pickle stream."""
    path.write_bytes(pickle.dumps({"model.norm.weight": list(range(64))}, protocol=protocol) * 4)
    return path


def _torch_zip(path: Path) -> Path:
    """A file shaped like ``torch.save``'s default output: a zip archive holding ``data.pkl``."""
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/data.pkl", pickle.dumps({"w": 1}, protocol=2))
        archive.writestr("archive/data/0", b"\0" * 4096)
    return path


def _run_conversion(command: str, monkeypatch: pytest.MonkeyPatch) -> tuple[list[str], str]:
    """Run the ``python -c`` command of a message against stand-ins for torch and safetensors.torch;
    return the files it loaded and the file it saved."""
    argv = shlex.split(command)
    assert argv[:2] == ["python", "-c"] and len(argv) == 3, command
    loaded: list[str] = []
    saved: list[str] = []

    class Tensor:
        def contiguous(self) -> Tensor:
            return self

        def clone(self) -> Tensor:
            return Tensor()

    def load(f: str, map_location: str, weights_only: bool) -> dict[str, Tensor]:
        assert map_location == "cpu" and weights_only
        loaded.append(f)
        return {f"t{len(loaded)}": Tensor()}

    def save_file(tensors: dict[str, Tensor], out: str) -> None:
        assert len(tensors) == len(loaded)
        saved.append(out)

    monkeypatch.setitem(sys.modules, "torch", types.SimpleNamespace(load=load))
    monkeypatch.setitem(sys.modules, "safetensors.torch", types.SimpleNamespace(save_file=save_file))
    exec(compile(argv[2], "conversion", "exec"), {})
    assert len(saved) == 1
    return loaded, saved[0]


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
def test_a_pytorch_pickle_given_as_a_model_says_how_to_convert_it(
    tiny_models: Models,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    protocol: int,
) -> None:
    path = _torch_pickle(tmp_path / "pytorch_model.bin", protocol)
    message = _fail(["merge", "--base", str(path), *map(str, tiny_models[1]), "-o", str(tmp_path / "out")], capsys)
    assert message.startswith(f"{PREFIX}{path}: not a safetensors file (a PyTorch pickle")
    assert "header length" not in message
    command = message.split("convert it first: ", 1)[1]
    loaded, saved = _run_conversion(command, monkeypatch)
    assert loaded == [str(path)] and saved == str(tmp_path / ST)  # the folder is then a model folder
    assert not (tmp_path / "out").exists()


def test_a_torch_save_zip_archive_given_as_a_model_says_how_to_convert_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = _torch_zip(tmp_path / "weights.pt")
    with pytest.raises(CheckpointFormatError) as info:
        open_source(str(path))
    message = str(info.value)
    assert message.startswith(f"{path}: not a safetensors file (a PyTorch zip archive")
    assert "\n" not in message
    loaded, saved = _run_conversion(message.split("convert it first: ", 1)[1], monkeypatch)
    assert loaded == [str(path)] and saved == str(tmp_path / "weights.safetensors")


def test_a_safetensors_header_that_starts_like_a_pickle_still_opens(tmp_path: Path) -> None:
    """A 640-byte header has the length prefix ``80 02 00 ..``, a pickle's first two bytes."""
    path = tmp_path / "m.safetensors"
    save_file({"w": np.arange(6, dtype=np.float32)}, path)
    raw = path.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    header = raw[8 : 8 + n].rstrip() + b" " * (640 - len(raw[8 : 8 + n].rstrip()))
    path.write_bytes((640).to_bytes(8, "little") + header + raw[8 + n :])
    assert path.read_bytes()[:2] == b"\x80\x02"
    with SafetensorsFile(path) as f:
        assert f.read(f.tensors["w"]).tolist() == list(range(6))


@pytest.mark.parametrize(
    ("name", "shards"),
    [("pytorch_model.bin", False), ("pytorch_model.bin.index.json", True), ("model.pt", False)],
)
def test_a_folder_of_pytorch_weights_says_how_to_convert_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str, shards: bool
) -> None:
    folder = tmp_path / "torch model"
    folder.mkdir()
    if shards:
        (folder / name).write_text(json.dumps({"weight_map": {"a": "pytorch_model-00001-of-00002.bin"}}))
        for i in (1, 2):
            _torch_zip(folder / f"pytorch_model-0000{i}-of-00002.bin")
    else:
        _torch_zip(folder / name)
    with pytest.raises(CheckpointNotFoundError) as info:
        open_source(str(folder))
    message = str(info.value)
    assert f"found {name}; convert it first: python -c " in message and "only safetensors" in message
    loaded, saved = _run_conversion(message.split("convert it first: ", 1)[1].removesuffix(")"), monkeypatch)
    if shards:
        assert saved == str(folder / ST) and len(loaded) == 2  # (the glob runs on the real folder)
    else:
        assert loaded == [str(folder / name)] and saved == str(folder / ST)


# ---------------------------------------------------------------------------------------------------
# 2. Hugging Face Hub IDs, from the local cache only


def _commit(text: str) -> str:
    return hashlib.sha1(text.encode()).hexdigest()


def _cache_model(cache: Path, repo: str, folder: Path, revision: str = "main") -> Path:
    """Lay ``folder``'s files out as the Hugging Face tools do: blobs named by their hash, a snapshot of
    relative symlinks into them, and a ref naming the snapshot's commit. Returns the snapshot."""
    repo_folder = cache / ("models--" + repo.replace("/", "--"))
    commit = _commit(f"{repo}@{revision}")
    snapshot = repo_folder / "snapshots" / commit
    snapshot.mkdir(parents=True)
    (repo_folder / "blobs").mkdir(exist_ok=True)
    for file in sorted(folder.iterdir()):
        data = file.read_bytes()
        blob = repo_folder / "blobs" / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        (snapshot / file.name).symlink_to(Path("..", "..", "blobs", blob.name))
    ref = repo_folder / "refs" / revision
    ref.parent.mkdir(parents=True, exist_ok=True)
    ref.write_text(commit)  # (the Hugging Face tools write it without a newline)
    return snapshot


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("ooc-ties tried to reach the network")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)


@pytest.fixture
def hub(tiny_models: Models, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_network: None) -> Path:
    """A Hugging Face cache holding the tiny models as ``org/base`` and ``org/ft1``..``org/ft3``, found
    through ``HF_HUB_CACHE``; the working directory holds no folder of those names."""
    cache = tmp_path / "hf-cache"
    base, fts = tiny_models
    for repo, folder in [("org/base", base), *((f"org/ft{i + 1}", ft) for i, ft in enumerate(fts))]:
        _cache_model(cache, repo, folder)
    for name in ("HF_HOME", "XDG_CACHE_HOME"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    return cache


def test_hub_ids_merge_end_to_end_from_the_local_cache(
    tiny_models: Models, hub: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base, fts = tiny_models
    expected = merge(base, fts, tmp_path / "from-folders")
    capsys.readouterr()
    main(["merge", "--base", "org/base", "org/ft1", "org/ft2", "org/ft3", "-o", str(tmp_path / "from-hub"), "-v"])
    stderr = capsys.readouterr().err
    assert (tmp_path / "from-hub" / ST).read_bytes() == (expected.output / ST).read_bytes()  # type: ignore[operator]
    assert (tmp_path / "from-hub" / "config.json").read_bytes() == (base / "config.json").read_bytes()
    snapshot = hub / "models--org--ft2" / "snapshots" / _commit("org/ft2@main")
    assert f"org/ft2: the local Hugging Face cache's snapshot {snapshot}" in stderr


def test_a_hub_revision_names_a_ref_or_a_commit(tiny_models: Models, hub: Path, tmp_path: Path) -> None:
    base, fts = tiny_models
    _cache_model(hub, "org/ft1", fts[1], revision="v2")  # ft1@v2 holds ft2's weights
    expected = merge(base, [fts[1], fts[2]], tmp_path / "expected")
    for spec in ("org/ft1@v2", f"org/ft1@{_commit('org/ft1@v2')}"):
        out = tmp_path / spec.replace("/", "_").replace("@", "_")
        merge("org/base", [spec, "org/ft3"], out)
        assert (out / ST).read_bytes() == (expected.output / ST).read_bytes()  # type: ignore[operator]


@pytest.mark.parametrize("where", ["HF_HOME", "XDG_CACHE_HOME", "HOME"])
def test_the_cache_folder_follows_the_hugging_face_variables(
    tiny_models: Models, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_network: None, where: str
) -> None:
    root = tmp_path / "root"
    cache = {"HF_HOME": root / "hub", "XDG_CACHE_HOME": root / "huggingface" / "hub"}.get(
        where, root / ".cache" / "huggingface" / "hub"
    )
    snapshot = _cache_model(cache, "org/base", tiny_models[0])
    for name in ("HF_HUB_CACHE", "HF_HOME", "XDG_CACHE_HOME"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv(where, str(root))
    monkeypatch.chdir(tmp_path)
    assert hub_cache() == cache
    source = open_source("org/base")
    try:
        assert source.local_paths() == [snapshot]
    finally:
        source.close()


def test_a_local_path_wins_over_the_cache(tiny_models: Models, hub: Path) -> None:
    shutil.copytree(tiny_models[1][0], Path("org") / "base")  # ./org/base is ft1, the cache's org/base the base
    source = open_source("org/base")
    try:
        assert source.local_paths() == [Path("org") / "base"]
    finally:
        source.close()


@pytest.mark.parametrize("revision", [None, "v9"])
def test_a_hub_id_not_in_the_cache_says_how_to_download_it(
    tiny_models: Models, hub: Path, capsys: pytest.CaptureFixture[str], revision: str | None
) -> None:
    spec = "org/missing" + (f"@{revision}" if revision else "")
    message = _fail(["merge", "--base", "org/base", spec, "-o", "out"], capsys)
    download = "org/missing" + (f" --revision {revision}" if revision else "")
    for needle in (
        f"{PREFIX}{spec}: no such file or folder",
        "it looks like a Hugging Face Hub ID, but it is not in the local cache",
        f"searched {hub / 'models--org--missing'}",
        "ooc-ties does not download",
        f"`hf download {download}`",
        f"`huggingface-cli download {download}`",
        "or pass a local folder",
    ):
        assert needle in message, (needle, message)
    assert not Path("out").exists()


def test_a_cached_repo_without_the_revision_is_not_found(hub: Path) -> None:
    with pytest.raises(CheckpointNotFoundError, match="not in the local cache"):
        open_source("org/base@no-such-branch")
    with pytest.raises(CheckpointNotFoundError, match="not in the local cache"):
        open_source("org/base@" + "0" * 40)


@pytest.mark.parametrize(
    ("text", "parsed"),
    [
        ("org/name", HubId("org/name", None)),
        ("meta-llama/Llama-3.2-1B", HubId("meta-llama/Llama-3.2-1B", None)),
        ("org/name@v1.0", HubId("org/name", "v1.0")),
        ("org/name@refs/pr/1", HubId("org/name", "refs/pr/1")),
        ("name", None),
        ("./org/name", None),
        ("/org/name", None),
        ("~/name", None),
        ("a/b/c", None),
        ("org/model.safetensors", None),
        ("org--x/name", None),
        ("org/name@../../x", None),
        ("org/name-", None),
        ("s3://bucket/x", None),
    ],
)
def test_what_looks_like_a_hub_id(text: str, parsed: HubId | None) -> None:
    assert parse_hub_id(text) == parsed


# ---------------------------------------------------------------------------------------------------
# 3. The dry run's reads


def _samples_and_full(models: Models, preset: str) -> tuple[int, int, int]:
    """The bytes of the threshold sample, of the sign-vote sample, and of one read."""
    plan = plan_merge(*models, PRESETS[preset])
    blocks = plan_blocks(plan.merged)
    sample = sum(b.in_nbytes for b in blocks[::SAMPLE_STRIDE])
    return sample, sum(b.in_nbytes for b in blocks[::VOTE_STRIDE]), plan.merge_input_bytes


def _dry_run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> dict[str, str]:
    capsys.readouterr()
    main(["merge", *argv, "-o", "never", "--dry-run"])
    return dict(line.split(": ", 1) for line in capsys.readouterr().out.splitlines())


def test_the_dry_run_states_the_expected_and_the_most_reads(
    tiny_models: Models, capsys: pytest.CaptureFixture[str]
) -> None:
    base, fts = tiny_models
    lines = _dry_run(["--base", str(base), *map(str, fts), "--threads", "1"], capsys)
    sample, votes, full = _samples_and_full(tiny_models, "paper")
    expected = (sample + full + votes + full) / full  # threshold sample, one read, vote sample, merge
    most = (sample + 3 * full + votes + full) / full  # two more threshold reads; pass 2 settles the vote
    assert lines["reads"] == (
        f"{expected:.3g} passes over {full / 2**20:.1f} MiB expected (threshold sample, one-read thresholds, "
        f"sign-vote sample, merge), at most {most:.3g} if a threshold falls outside its sampled bracket"
    )
    assert lines["blocks"].endswith(" 1 thread")


def test_the_dry_run_counts_one_block_tensors_and_skipped_reads(
    tiny_models: Models, capsys: pytest.CaptureFixture[str]
) -> None:
    base, fts = tiny_models
    argv = ["--base", str(base), *map(str, fts), "--preset", "mergekit"]
    # every tiny tensor is one block: its sample is the whole tensor, so the two-read select, no more
    assert _dry_run(argv, capsys)["reads"].startswith(
        "4 passes over 1.1 MiB expected (two-read thresholds, tie counts, merge)"
    )
    assert "at most" not in _dry_run(argv, capsys)["reads"]
    assert _dry_run([*argv, "--density", "1"], capsys)["reads"] == "1 pass over 1.1 MiB expected (merge)"
    assert _dry_run([*argv, "--threads", "3"], capsys)["blocks"].endswith(" 3 threads")


# ---------------------------------------------------------------------------------------------------
# 4. Pass 1's progress: the expected total, grown when a read beyond it starts


class Recorder:
    """A :class:`~ooc_ties.progress.ProgressFactory` that records every bar's events."""

    def __init__(self) -> None:
        self.bars: list[tuple[str, int, list[tuple[str, int]]]] = []

    def __call__(self, description: str, total: int) -> Recorder.Bar:
        events: list[tuple[str, int]] = []
        self.bars.append((description, total, events))
        return Recorder.Bar(events)

    class Bar:
        def __init__(self, events: list[tuple[str, int]]) -> None:
            self.events = events

        def advance(self, nbytes: int) -> None:
            self.events.append(("advance", nbytes))

        def grow(self, nbytes: int) -> None:
            self.events.append(("grow", nbytes))

        def close(self) -> None:
            self.events.append(("close", 0))

    def check_exact(self, description: str) -> tuple[int, int]:
        """The bar's starting total and what it grew by; it never runs past its total and ends at it."""
        ((total, events),) = [(t, e) for d, t, e in self.bars if d == description]
        done, grown = 0, 0
        for kind, nbytes in events:
            assert nbytes >= 0
            done += nbytes if kind == "advance" else 0
            grown += nbytes if kind == "grow" else 0
            assert done <= total + grown
        assert done == total + grown and events[-1] == ("close", 0)
        return total, grown


def _expected_pass1(plan: Any) -> tuple[int, int]:
    reads = plan_reads(plan)
    return sum(r.nbytes for r in reads if r.expected), sum(r.nbytes for r in reads)


def test_pass1_progress_starts_at_the_expected_reads_and_grows_for_more(tmp_path: Path) -> None:
    """A sample whose blocks are unlike the others: the thresholds take three reads, not one."""
    rng = np.random.default_rng(1)
    n_blocks, block = 64, 256
    base = np.zeros(n_blocks * block, np.float32)
    sampled = (np.arange(base.size) // block) % SAMPLE_STRIDE == 0
    misleading = np.where(sampled, rng.uniform(1.0, 2.0, base.size), rng.uniform(1e-3, 2e-3, base.size))
    inputs = MergeInputs(
        ArraySource({"w": base}, "<base>"), (ArraySource({"w": misleading.astype(np.float32)}, "<ft>"),)
    )
    options = PRESETS["paper"].with_(zero_sign="positive")
    plan = make_plan(inputs.base, inputs.fts, options, Resources(threads=2, max_block_elements=block))
    recorder = Recorder()
    result = compute_thresholds(plan, inputs, recorder)
    total, grown = recorder.check_exact("pass 1/2: thresholds")
    expected, most = _expected_pass1(plan)
    full = plan.merge_input_bytes
    assert total == expected == full + full // SAMPLE_STRIDE  # the sample and the one read
    assert grown == 2 * full and total + grown == most == result.bytes_read
    assert [kind for kind, _ in recorder.bars[0][2]].count("grow") == 2  # at the second and third read


@pytest.mark.parametrize("block", [None, 4096])
@pytest.mark.parametrize("preset", ["paper", "mergekit"])
def test_pass1_progress_is_exact_on_a_merge(
    tiny_models: Models, tmp_path: Path, preset: str, block: int | None
) -> None:
    resources = Resources(threads=2, max_block_elements=block)
    recorder = Recorder()
    result = merge(*tiny_models, tmp_path / "out", PRESETS[preset], resources, progress=recorder)
    total, grown = recorder.check_exact("pass 1/2: thresholds")
    expected, most = _expected_pass1(result.plan)
    assert total == expected and total + grown <= most
    if preset == "paper":  # pass 2 records every open element: pass 1 never has every block vote
        assert result.bytes_read - result.plan.merge_input_bytes <= total


# ---------------------------------------------------------------------------------------------------
# 5. The CLI's summary


class Interrupt(Recorder):
    """Stops pass 2 (as Ctrl-C would) after ``blocks`` blocks, once its writer has caught up."""

    def __init__(self, blocks: int) -> None:
        super().__init__()
        self.blocks = blocks

    def __call__(self, description: str, total: int) -> Recorder.Bar:
        bar = super().__call__(description, total)
        if description.startswith("pass 2/2"):
            left = [self.blocks]
            advance = bar.advance

            def interrupting(nbytes: int) -> None:
                advance(nbytes)
                left[0] -= 1
                if left[0] == 0:
                    time.sleep(0.3)
                    raise KeyboardInterrupt

            bar.advance = interrupting  # type: ignore[method-assign]
        return bar


def test_a_resumed_merge_counts_only_what_it_read(tiny_models: Models, tmp_path: Path) -> None:
    out = tmp_path / "out"
    options = PRESETS["mergekit"]  # no majority sign: nothing is merged again after pass 2
    resources = Resources(threads=1, max_block_elements=4096)
    with pytest.raises(KeyboardInterrupt):
        merge(*tiny_models, out, options, resources, progress=Interrupt(10))
    recorder = Recorder()
    result = merge(*tiny_models, out, options, resources, progress=recorder, resume=True)
    assert result.resumed_blocks > 0
    assert [d for d, _, _ in recorder.bars] == ["pass 2/2: merge"]  # pass 1 was done
    merged_here = recorder.bars[0][1]
    assert merged_here < result.plan.merge_input_bytes
    assert result.bytes_read == merged_here


def test_rates_below_one_gigabyte_per_second_are_in_megabytes() -> None:
    assert _throughput(1_500_000, 1.0) == "1.5 MB/s"
    assert _throughput(20_000, 1.0) == "0.02 MB/s"
    assert _throughput(456_700_000, 1.0) == "457 MB/s"
    assert _throughput(2_345_000_000, 1.0) == "2.35 GB/s"


def test_a_small_merge_reports_its_rate_in_megabytes(
    tiny_models: Models, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base, fts = tiny_models
    main(["merge", "--base", str(base), *map(str, fts), "-o", str(tmp_path / "out")])
    summary = capsys.readouterr().err.strip().splitlines()[-1]
    assert summary.startswith("merged 21 tensors") and summary.endswith(" MB/s of input read"), summary
    assert "GB/s" not in summary


def _read_all(fd: int) -> Iterator[bytes]:
    while True:
        try:
            chunk = os.read(fd, 65536)
        except OSError:  # the other end closed
            return
        if not chunk:
            return
        yield chunk


def test_the_cli_on_a_terminal_without_a_size_prints_no_blank_lines(tiny_models: Models, tmp_path: Path) -> None:
    """A pseudo-terminal nobody sized (``script``, some containers) reports 0 columns and 0 rows; the
    bars must still show, and leave no blank lines before the summary. Run as ``python -m ooc_ties``."""
    base, fts = tiny_models
    controller, terminal = pty.openpty()
    command = [
        sys.executable,
        "-m",
        "ooc_ties",
        "merge",
        "--base",
        str(base),
        *map(str, fts),
        "-o",
        str(tmp_path / "o"),
    ]
    process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=terminal, stderr=terminal)
    os.close(terminal)
    try:
        output = b"".join(_read_all(controller)).decode()
    finally:
        os.close(controller)
    assert process.wait() == 0, output
    lines = [segment for line in output.replace("\r\n", "\n").split("\n") for segment in line.split("\r")[-1:]]
    summary = next(i for i, line in enumerate(lines) if line.startswith("merged 21 tensors"))
    assert all(line.strip() for line in lines[:summary]), lines
    assert "pass 1/2: thresholds: 100%" in output and "pass 2/2: merge: 100%" in output


def test_python_dash_m_runs_the_cli() -> None:
    done = subprocess.run([sys.executable, "-m", "ooc_ties", "--version"], capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout.startswith("ooc-ties, version "), done
