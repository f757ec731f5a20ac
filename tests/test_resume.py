"""Resuming interrupted merges: real processes killed with SIGKILL at random points, then resumed.

Every resumed output must be byte-identical (every file) to an uninterrupted merge, and a resume with
other inputs or options must be refused.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import tree_digest

from ooc_ties import PRESETS, merge, plan_merge
from ooc_ties.config import Resources
from ooc_ties.errors import OptionError, OutputPathError
from ooc_ties.io.staging import STATE_DIR, staging_path
from ooc_ties.synthetic import SHAPES, generate_model

Models = tuple[Path, list[Path]]
BUDGET = ["--block-elements", "65536", "--threads", "2"]  # many small blocks: kills land mid-pass


@pytest.fixture(scope="module")
def demo_models(tmp_path_factory: pytest.TempPathFactory) -> Models:
    """Demo-shaped models (~20M parameters each): a merge takes long enough to be killed mid-pass."""
    return generate_model(SHAPES["demo"], tmp_path_factory.mktemp("demo"), n_finetuned=2, seed=3)


@pytest.fixture(scope="module")
def uninterrupted(demo_models: Models, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("reference")
    digests = {}
    for suffix in ("", ".zarr"):
        out = root / f"out{suffix}"
        subprocess.run(_command(demo_models, out), check=True)
        digests[suffix] = tree_digest(out)
    return digests


def _command(models: Models, out: Path, *extra: str) -> list[str]:
    base, fts = models
    args = ["merge", "--base", str(base), *map(str, fts), "-o", str(out), *BUDGET, *extra]
    return [sys.executable, "-m", "ooc_ties.cli", *args]


def _kill_during(command: list[str], phase: str, delay: float) -> int:
    """Start ``command``, wait until its progress shows ``phase``, wait ``delay`` s, SIGKILL it."""
    process = subprocess.Popen(command, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL)
    assert process.stderr is not None
    seen = b""
    while phase.encode() not in seen:
        chunk = os.read(process.stderr.fileno(), 4096)
        if not chunk:  # it finished (or failed) before the phase showed
            process.wait()
            return process.returncode
        seen += chunk
    time.sleep(delay)
    process.send_signal(signal.SIGKILL)
    process.communicate()
    return process.returncode


@pytest.mark.parametrize("suffix", ["", ".zarr"])
def test_sigkill_at_random_points_then_resume_is_byte_identical(
    demo_models: Models, uninterrupted: dict[str, str], tmp_path: Path, suffix: str
) -> None:
    out = tmp_path / f"out{suffix}"
    rng = random.Random(7)
    kills = [("pass 1/2", rng.uniform(0, 0.2))] + [("pass 2/2", rng.uniform(0, 0.15)) for _ in range(3)]
    partial = 0
    for phase, delay in kills:
        code = _kill_during(_command(demo_models, out, "--resume"), phase, delay)
        assert code in (0, -signal.SIGKILL)
        partial += staging_path(out.absolute()).is_dir()  # killed mid-merge (else: it had finished)
    assert partial >= 2
    done = subprocess.run(_command(demo_models, out, "--resume"), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert tree_digest(out) == uninterrupted[suffix]
    assert not staging_path(out.absolute()).exists()


def test_a_resume_skips_pass_1_and_finished_blocks(demo_models: Models, tmp_path: Path) -> None:
    out = tmp_path / "out"
    code = _kill_during(_command(demo_models, out), "pass 2/2", 0.3)
    assert code == -signal.SIGKILL
    done = subprocess.run(_command(demo_models, out, "--resume"), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "pass 1/2" not in done.stderr
    assert "resumed:" in done.stderr


_KILL_AT_RENAME = """
import os, signal, sys
from pathlib import Path
from ooc_ties.cli import main
when = sys.argv.pop(1)
rename = Path.rename
def killing_rename(self, target):
    if ".ooc-ties-partial" in self.name:
        if when == "before":
            os.kill(os.getpid(), signal.SIGKILL)
        result = rename(self, target)
        os.kill(os.getpid(), signal.SIGKILL)
    return rename(self, target)
Path.rename = killing_rename
main()
"""


@pytest.mark.parametrize("when", ["before", "after"])
def test_sigkill_at_the_final_rename(
    demo_models: Models, uninterrupted: dict[str, str], tmp_path: Path, when: str
) -> None:
    out = tmp_path / "out"
    command = [sys.executable, "-c", _KILL_AT_RENAME, when, *_command(demo_models, out)[3:]]
    killed = subprocess.run(command, capture_output=True)
    assert killed.returncode == -signal.SIGKILL
    assert out.exists() == (when == "after")
    done = subprocess.run(_command(demo_models, out, "--resume"), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert tree_digest(out) == uninterrupted[""]
    assert not (out / STATE_DIR).exists()
    assert not staging_path(out.absolute()).exists()


def _leave_partial(models: Models, out: Path) -> None:
    """A merge killed just before publishing: every block is done, so it cannot finish first."""
    command = [sys.executable, "-c", _KILL_AT_RENAME, "before", *_command(models, out)[3:]]
    assert subprocess.run(command, capture_output=True).returncode == -signal.SIGKILL
    assert staging_path(out.absolute()).is_dir()


def test_a_resume_with_other_options_or_inputs_is_refused(demo_models: Models, tmp_path: Path) -> None:
    out = tmp_path / "out"
    _leave_partial(demo_models, out)
    base, fts = demo_models
    with pytest.raises(OptionError, match=r"other options: density 0.2 \(now 0.3\)"):
        merge(base, fts, out, PRESETS["paper"].with_(density=0.3), resume=True)
    with pytest.raises(OptionError, match=r"other options: .*trim 'threshold' \(now 'topk'\)"):
        merge(base, fts, out, PRESETS["mergekit"], resume=True)
    with pytest.raises(OptionError, match="other models, or the same in another order"):
        merge(base, [fts[1], fts[0]], out, PRESETS["paper"], resume=True)
    with pytest.raises(OptionError, match="shard"):
        merge(base, fts, out, PRESETS["paper"], Resources(shard_size=1_000_000), resume=True)
    # Refusals leave the partial merge as it was, and a matching resume still finishes it.
    assert staging_path(out.absolute()).is_dir()
    result = merge(base, fts, out, PRESETS["paper"], resume=True)  # the first run's block size is kept
    assert result.resumed_blocks > 0


def test_a_touched_input_is_refused(demo_models: Models, tmp_path: Path) -> None:
    out = tmp_path / "out"
    _leave_partial(demo_models, out)
    base, fts = demo_models
    shard = next(fts[0].glob("*.safetensors"))
    stat = shard.stat()
    try:
        os.utime(shard, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
        with pytest.raises(OptionError, match=r"cannot resume the merge left at .*input files changed"):
            merge(base, fts, out, PRESETS["paper"], resume=True)
    finally:
        os.utime(shard, ns=(stat.st_atime_ns, stat.st_mtime_ns))


def test_a_leftover_without_resume_is_refused_and_overwrite_starts_again(demo_models: Models, tmp_path: Path) -> None:
    out = tmp_path / "out"
    _leave_partial(demo_models, out)
    base, fts = demo_models
    with pytest.raises(OutputPathError, match="--resume continues it; --overwrite deletes it"):
        merge(base, fts, out, PRESETS["paper"])
    result = merge(base, fts, out, PRESETS["paper"], overwrite=True)
    assert result.resumed_blocks == 0
    assert not staging_path(out.absolute()).exists()


def test_two_processes_cannot_write_one_output(demo_models: Models, tmp_path: Path) -> None:
    out = tmp_path / "out"
    process = subprocess.Popen(_command(demo_models, out), stderr=subprocess.PIPE, stdout=subprocess.DEVNULL)
    assert process.stderr is not None
    seen = b""
    while b"pass 1/2" not in seen:
        chunk = os.read(process.stderr.fileno(), 4096)
        assert chunk, seen.decode(errors="replace")
        seen += chunk
    base, fts = demo_models
    try:
        with pytest.raises(OutputPathError, match="another ooc-ties process is writing it"):
            merge(base, fts, out, PRESETS["paper"], resume=True)
    finally:
        process.kill()
        process.communicate()


def test_a_resume_needs_only_the_disk_space_still_missing(demo_models: Models, tmp_path: Path) -> None:
    """The partial merge already holds its (preallocated) files: a resume does not count them again."""
    from ooc_ties.io.staging import _allocated_bytes

    out = tmp_path / "out"
    _leave_partial(demo_models, out)
    held = _allocated_bytes(staging_path(out.absolute()))
    base, fts = demo_models
    plan = plan_merge(base, fts)
    assert held >= plan.output_bytes  # so check_disk asks for (at most) nothing more


def test_a_partial_merge_without_a_journal_is_started_again(demo_models: Models, tmp_path: Path) -> None:
    out = tmp_path / "out"
    staging = staging_path(out.absolute())
    (staging / STATE_DIR).mkdir(parents=True)
    (staging / "model-00001-of-00009.safetensors").write_bytes(b"left by a killed convert")
    base, fts = demo_models
    merge(base, fts, out, PRESETS["paper"], resume=True)
    assert not (out / "model-00001-of-00009.safetensors").exists()
    assert (out / "model.safetensors").is_file()


def test_a_full_disk_keeps_the_partial_merge(
    demo_models: Models, uninterrupted: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A merge stopped by the system (here ENOSPC from a write) stays for --resume."""
    import errno

    from ooc_ties.io.writer import SafetensorsOutput

    calls = 0
    write = SafetensorsOutput.write

    def failing(self: SafetensorsOutput, name: str, start: int, values: object) -> None:
        nonlocal calls
        calls += 1
        if calls == 5:
            raise OSError(errno.ENOSPC, "No space left on device")
        write(self, name, start, values)  # type: ignore[arg-type]

    monkeypatch.setattr(SafetensorsOutput, "write", failing)
    out = tmp_path / "out"
    base, fts = demo_models
    with pytest.raises(OSError, match="No space left"):
        merge(base, fts, out, PRESETS["paper"], Resources(max_block_elements=65536, threads=1))
    assert staging_path(out.absolute()).is_dir()
    monkeypatch.setattr(SafetensorsOutput, "write", write)
    result = merge(base, fts, out, PRESETS["paper"], resume=True)
    assert result.resumed_blocks > 0
    assert tree_digest(out) == uninterrupted[""]
