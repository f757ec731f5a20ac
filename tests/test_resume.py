"""Resuming interrupted merges: real processes killed with SIGKILL at chosen points, then resumed.

A merge runs in a child process whose progress bars SIGKILL it once a given share of a pass's bytes is
done (or as a pass starts), or whose final rename does: the points are set by the work done, not by
timers. Every resumed output must be byte-identical (every file) to an uninterrupted merge, and a resume
with other inputs or options must be refused.

By default the models are tiny (about 150k parameters, some 25 blocks); ``pytest -m slow`` runs every
test again on demo-sized ones (about 20M parameters, some 1300 blocks).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import tree_digest

from ooc_ties import PRESETS, merge, plan_merge
from ooc_ties.errors import OptionError, OutputPathError
from ooc_ties.io.staging import STATE_DIR, staging_path
from ooc_ties.resources import Resources
from ooc_ties.synthetic import SHAPES, generate_model

Models = tuple[Path, list[Path]]
BLOCK, THREADS = 16384, 2
BUDGET = ["--block-elements", str(BLOCK), "--threads", str(THREADS)]  # many blocks: kills land between them


@pytest.fixture(scope="module", params=["tiny", pytest.param("demo", marks=pytest.mark.slow)])
def models(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Models:
    """A bf16 base and two fine-tunes of a shape in ``SHAPES``: tiny by default, demo with ``-m slow``."""
    shape: str = request.param
    return generate_model(SHAPES[shape], tmp_path_factory.mktemp(shape), n_finetuned=2, seed=3)


@pytest.fixture(scope="module")
def uninterrupted(models: Models, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("reference")
    digests = {}
    for suffix in ("", ".zarr"):
        out = root / f"out{suffix}"
        subprocess.run(_command(models, out), check=True)
        digests[suffix] = tree_digest(out)
    return digests


def _command(models: Models, out: Path, *extra: str) -> list[str]:
    base, fts = models
    args = ["merge", "--base", str(base), *map(str, fts), "-o", str(out), *BUDGET, *extra]
    return [sys.executable, "-m", "ooc_ties.cli", *args]


_KILLED_AT = """
import json, os, signal, sys
from ooc_ties import PRESETS, Resources, merge
options, resources, phase, share, out, base, *fts = sys.argv[1:]
options = PRESETS["paper"].with_(**json.loads(options))

class KillingProgress:
    # SIGKILLs this process once `share` of the bytes of the pass named `phase` are done (0: as it starts)

    def __init__(self, description, total):
        self.done = 0
        self.at = float(share) * total if description.startswith(phase) else None
        self.advance(0)

    def advance(self, nbytes):
        self.done += nbytes
        if self.at is not None and self.done >= self.at:
            os.kill(os.getpid(), signal.SIGKILL)

    def grow(self, nbytes):
        pass

    def close(self):
        pass

merge(base, fts, out, options, Resources(**json.loads(resources)), progress=KillingProgress, resume=True)
raise SystemExit(phase + " never reached " + share + " of its bytes")
"""


def _kill_at(
    models: Models, out: Path, phase: str, share: float, options: str = "{}", resources: str | None = None
) -> None:
    """Run a resumable merge into ``out`` in a child process that is SIGKILLed once ``share`` of the bytes
    of pass ``phase`` are done; the partial merge must stay. ``options``: changes to the ``paper`` preset
    (JSON, ``MergeOptions`` fields); ``resources``: its ``Resources`` (JSON; default: ``BUDGET``'s)."""
    base, fts = models
    resources = resources or json.dumps({"threads": THREADS, "max_block_elements": BLOCK})
    args = [options, resources, phase, str(share), str(out), str(base), *map(str, fts)]
    command = [sys.executable, "-c", _KILLED_AT, *args]
    killed = subprocess.run(command, capture_output=True, text=True)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert staging_path(out.absolute()).is_dir()
    assert not out.exists()


@pytest.mark.parametrize("suffix", ["", ".zarr"])
def test_sigkill_at_chosen_points_then_resume_is_byte_identical(
    models: Models, uninterrupted: dict[str, str], tmp_path: Path, suffix: str
) -> None:
    out = tmp_path / f"out{suffix}"
    _kill_at(models, out, "pass 1/2", 0.5)  # pass 1 not finished: it runs again
    _kill_at(models, out, "pass 2/2", 0.0)  # pass 1 finished and saved, no block merged
    _kill_at(models, out, "pass 2/2", 0.3)  # some blocks merged (of those left each time)
    _kill_at(models, out, "pass 2/2", 0.5)
    done = subprocess.run(_command(models, out, "--resume"), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "pass 1/2" not in done.stderr and "resumed:" in done.stderr
    assert tree_digest(out) == uninterrupted[suffix]
    assert not staging_path(out.absolute()).exists()


@pytest.mark.parametrize(
    ("options", "flags"),
    [
        (
            '{"method": "dare_ties", "density": 0.3, "seed": 4}',
            ["--method", "dare_ties", "--density", "0.3", "--seed", "4"],
        ),
        (
            '{"method": "breadcrumbs_ties", "density": 0.4, "gamma": 0.05, "rescale": true}',
            ["--method", "breadcrumbs_ties", "--density", "0.4", "--gamma", "0.05", "--rescale"],
        ),
        (
            '{"method": "della", "density": 0.5, "epsilon": 0.2}',
            ["--method", "della", "--density", "0.5", "--epsilon", "0.2"],
        ),
    ],
)
def test_a_resume_keeps_every_methods_statistics(
    models: Models, tmp_path: Path, options: str, flags: list[str]
) -> None:
    """The band's cuts and quotas, the rescale factors and the drops (drawn again) survive a resume."""
    whole = tmp_path / "whole"
    subprocess.run(_command(models, whole, *flags), check=True)
    out = tmp_path / "out"
    _kill_at(models, out, "pass 2/2", 0.5, options)
    done = subprocess.run(_command(models, out, "--resume", *flags), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "pass 1/2" not in done.stderr and "resumed:" in done.stderr
    assert tree_digest(out) == tree_digest(whole)


def test_a_resume_skips_pass_1_and_finished_blocks(models: Models, tmp_path: Path) -> None:
    out = tmp_path / "out"
    _kill_at(models, out, "pass 2/2", 0.5)
    base, fts = models
    result = merge(base, fts, out, PRESETS["paper"], resume=True)
    assert 0 < result.resumed_blocks < result.plan.total_blocks


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
def test_sigkill_at_the_final_rename(models: Models, uninterrupted: dict[str, str], tmp_path: Path, when: str) -> None:
    out = tmp_path / "out"
    command = [sys.executable, "-c", _KILL_AT_RENAME, when, *_command(models, out)[3:]]
    killed = subprocess.run(command, capture_output=True)
    assert killed.returncode == -signal.SIGKILL
    assert out.exists() == (when == "after")
    done = subprocess.run(_command(models, out, "--resume"), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert tree_digest(out) == uninterrupted[""]
    assert not (out / STATE_DIR).exists()
    assert not staging_path(out.absolute()).exists()


def _leave_partial(models: Models, out: Path) -> None:
    """A merge killed just before publishing: every block is done, so it cannot finish first."""
    command = [sys.executable, "-c", _KILL_AT_RENAME, "before", *_command(models, out)[3:]]
    assert subprocess.run(command, capture_output=True).returncode == -signal.SIGKILL
    assert staging_path(out.absolute()).is_dir()


def test_a_resume_with_other_options_or_inputs_is_refused(models: Models, tmp_path: Path) -> None:
    out = tmp_path / "out"
    _leave_partial(models, out)
    base, fts = models
    with pytest.raises(OptionError, match=r"other options: density 0.2 \(now 0.3\)"):
        merge(base, fts, out, PRESETS["paper"].with_(density=0.3), resume=True)
    with pytest.raises(OptionError, match=r"other options: .*trim 'threshold' \(now 'topk'\)"):
        merge(base, fts, out, PRESETS["mergekit"], resume=True)
    with pytest.raises(OptionError, match=r"other inputs: fine-tuned model 1 \(.*ft2\): it is .*ft2/.*, not .*ft1/"):
        merge(base, [fts[1], fts[0]], out, PRESETS["paper"], resume=True)
    with pytest.raises(OptionError, match="shard"):
        merge(base, fts, out, PRESETS["paper"], Resources(shard_size=100_000), resume=True)
    # Refusals leave the partial merge as it was, and a matching resume still finishes it.
    assert staging_path(out.absolute()).is_dir()
    result = merge(base, fts, out, PRESETS["paper"], resume=True)  # the first run's block size is kept
    assert result.resumed_blocks > 0


def test_a_touched_input_is_refused(models: Models, tmp_path: Path) -> None:
    out = tmp_path / "out"
    _leave_partial(models, out)
    base, fts = models
    shard = next(fts[0].glob("*.safetensors"))
    stat = shard.stat()
    try:
        os.utime(shard, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
        changed = rf"cannot resume the merge left at .*other inputs: .*{re.escape(str(shard))} changed since"
        changed += r" \(modification time differs\)"
        with pytest.raises(OptionError, match=changed):
            merge(base, fts, out, PRESETS["paper"], resume=True)
    finally:
        os.utime(shard, ns=(stat.st_atime_ns, stat.st_mtime_ns))


def test_a_leftover_without_resume_is_refused_and_overwrite_starts_again(models: Models, tmp_path: Path) -> None:
    out = tmp_path / "out"
    _leave_partial(models, out)
    base, fts = models
    with pytest.raises(OutputPathError, match="--resume continues it; --overwrite deletes it"):
        merge(base, fts, out, PRESETS["paper"])
    result = merge(base, fts, out, PRESETS["paper"], overwrite=True)
    assert result.resumed_blocks == 0
    assert not staging_path(out.absolute()).exists()


_HOLDING_AT_PASS_1 = """
import sys
from ooc_ties import PRESETS, merge
out, base, *fts = sys.argv[1:]

def hold(description, total):
    print(description, flush=True)
    sys.stdin.read()  # until the test closes our stdin
    raise SystemExit(3)

merge(base, fts, out, PRESETS["paper"], progress=hold)
"""


def test_two_processes_cannot_write_one_output(models: Models, tmp_path: Path) -> None:
    out = tmp_path / "out"
    base, fts = models
    command = [sys.executable, "-c", _HOLDING_AT_PASS_1, str(out), str(base), *map(str, fts)]
    process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert process.stdin is not None and process.stdout is not None
    try:
        assert process.stdout.readline().startswith("pass 1/2")  # it holds the output, in pass 1
        with pytest.raises(OutputPathError, match="another ooc-ties process is writing it"):
            merge(base, fts, out, PRESETS["paper"], resume=True)
    finally:
        process.stdin.close()
        assert process.wait(timeout=60) == 3
    assert not out.exists()


def test_a_resume_needs_only_the_disk_space_still_missing(models: Models, tmp_path: Path) -> None:
    """The partial merge already holds its (preallocated) files: a resume does not count them again."""
    from ooc_ties.io.staging import _allocated_bytes

    out = tmp_path / "out"
    _leave_partial(models, out)
    held = _allocated_bytes(staging_path(out.absolute()))
    base, fts = models
    plan = plan_merge(base, fts)
    assert held >= plan.output_bytes  # so check_disk asks for (at most) nothing more


def test_a_partial_merge_without_a_journal_is_started_again(models: Models, tmp_path: Path) -> None:
    out = tmp_path / "out"
    staging = staging_path(out.absolute())
    (staging / STATE_DIR).mkdir(parents=True)
    (staging / "model-00001-of-00009.safetensors").write_bytes(b"left by a killed convert")
    base, fts = models
    merge(base, fts, out, PRESETS["paper"], resume=True)
    assert not (out / "model-00001-of-00009.safetensors").exists()
    assert (out / "model.safetensors").is_file()


def test_a_full_disk_keeps_the_partial_merge(
    models: Models, uninterrupted: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
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
    base, fts = models
    with pytest.raises(OSError, match="No space left"):
        merge(base, fts, out, PRESETS["paper"], Resources(max_block_elements=65536, threads=1))
    assert staging_path(out.absolute()).is_dir()
    monkeypatch.setattr(SafetensorsOutput, "write", write)
    result = merge(base, fts, out, PRESETS["paper"], resume=True)
    assert result.resumed_blocks > 0
    assert tree_digest(out) == uninterrupted[""]
