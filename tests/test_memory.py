"""Peak anonymous memory of a real merge process stays within the budget plus the runtime's own, for
every method.

Slow (it writes 2 GiB of inputs under the temp dir, 4 GiB with the DELLA cases, and one 512 MiB output at
a time; about 2.5 minutes on two cores): run with ``pytest -m slow``.
"""

from __future__ import annotations

import functools
import math
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from ooc_ties.dtypes import BF16
from ooc_ties.io.safetensors import SafetensorsFile
from ooc_ties.io.staging import StagedDirectory
from ooc_ties.io.writer import SafetensorsOutput, ShardLayout, TensorSpec
from ooc_ties.kernels.convert import encode_oracle

RUNTIME_ALLOWANCE = 300 * 1024**2
"""Python, NumPy, Numba and LLVM: a fixed cost the budget does not cover (docs/memory.md). The
requirement: peak private memory within the budget plus 300 MiB, for every method."""

NAME = "model.embed_tokens.weight"
NUMEL = 1 << 28
SIDE = 1 << 14
"""DELLA ranks whole rows, so its blocks hold whole rows: its merges read the same 2**28 values as a
``SIDE`` x ``SIDE`` matrix (rows of 16,384 values); the 1-D tensor is one row, which it refuses."""


def _folders(root: Path, n_finetuned: int) -> list[StagedDirectory]:
    return [StagedDirectory(root / name) for name in ["base"] + [f"ft{i}" for i in range(n_finetuned)]]


def _outputs(folders: list[StagedDirectory], shape: tuple[int, ...]) -> list[SafetensorsOutput]:
    spec = TensorSpec(NAME, BF16, shape)
    layout = ShardLayout("model.safetensors", (spec.name,), spec.nbytes)
    return [SafetensorsOutput(f, [spec], [layout], {}) for f in folders]


def _write_models(root: Path, numel: int, n_finetuned: int) -> list[Path]:
    rng = np.random.default_rng(0)
    folders = _folders(root, n_finetuned)
    writers = _outputs(folders, (numel,))
    step = 1 << 22
    for start in range(0, numel, step):
        n = min(step, numel - start)
        base = (rng.standard_normal(n, np.float32) * np.float32(0.02)).astype(np.float32)
        bits = encode_oracle(base, np.dtype(np.uint16))
        writers[0].write("model.embed_tokens.weight", start, bits)
        base = (bits.astype(np.uint32) << 16).view(np.float32)
        for w in writers[1:]:
            delta = rng.standard_normal(n, np.float32) * np.float32(3e-4)
            w.write("model.embed_tokens.weight", start, encode_oracle(base + delta, np.dtype(np.uint16)))
    for w in writers:
        w.finish({})
    return [f.commit() for f in folders]


def _reshaped(models: list[Path], root: Path, shape: tuple[int, ...]) -> list[Path]:
    """The same models with their tensor's bytes under another ``shape`` (copied: seconds, where drawing
    them again takes most of a minute)."""
    folders = _folders(root, len(models) - 1)
    writers = _outputs(folders, shape)
    step = 1 << 24
    for model, w in zip(models, writers, strict=True):
        with SafetensorsFile(model / "model.safetensors") as source:
            info = source.tensors[NAME]
            assert math.prod(shape) == info.numel
            for start in range(0, info.numel, step):
                w.write(NAME, start, source.read(info, start, min(start + step, info.numel)))
        w.finish({})
    return [f.commit() for f in folders]


def _peak_rss_anon(command: list[str]) -> tuple[int, int]:
    """Run ``command``; return (exit code, peak RssAnon in bytes sampled every 10 ms)."""
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    peak = 0

    def sample() -> None:
        nonlocal peak
        status = Path(f"/proc/{process.pid}/status")
        while process.poll() is None:
            try:
                for line in status.read_text().splitlines():
                    if line.startswith("RssAnon:"):
                        peak = max(peak, int(line.split()[1]) * 1024)
            except (FileNotFoundError, ProcessLookupError):
                break
            time.sleep(0.01)

    sampler = threading.Thread(target=sample)
    sampler.start()
    _, err = process.communicate()
    sampler.join()
    assert process.returncode == 0, err.decode()
    return process.returncode, peak


@pytest.fixture(scope="session")
def big_models(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """A base and three fine-tunes of one 2**28-element bf16 tensor (512 MiB each), 1-D."""
    return _write_models(tmp_path_factory.mktemp("big"), NUMEL, 3)


@pytest.fixture(scope="session")
def big_matrices(big_models: list[Path], tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """``big_models``' values as ``SIDE`` x ``SIDE`` matrices, for DELLA."""
    return _reshaped(big_models, tmp_path_factory.mktemp("big-2d"), (SIDE, SIDE))


def _merge_command(models: list[Path], out: Path, *extra: str) -> list[str]:
    base, *fts = models
    return [sys.executable, "-m", "ooc_ties.cli", "merge", "--base", str(base), *map(str, fts), "-o", str(out), *extra]


MEMORY_CASES = [
    pytest.param("big_models", ("--preset", "paper"), id="paper"),
    pytest.param("big_models", ("--preset", "mergekit"), id="mergekit"),
    pytest.param("big_models", ("--method", "linear"), id="linear"),
    pytest.param("big_models", ("--method", "task_arithmetic"), id="task_arithmetic"),
    pytest.param(
        "big_models", ("--method", "ties", "--preset", "mergekit", "--density", "0.3", "--rescale"), id="ties-rescale"
    ),
    pytest.param("big_models", ("--method", "dare_ties", "--density", "0.3"), id="dare_ties"),
    pytest.param("big_models", ("--method", "dare_linear", "--density", "0.3"), id="dare_linear"),
    pytest.param("big_models", ("--method", "breadcrumbs", "--density", "0.5", "--gamma", "0.05"), id="breadcrumbs"),
    pytest.param(
        "big_models",
        ("--method", "breadcrumbs_ties", "--density", "0.5", "--gamma", "0.05", "--preset", "mergekit"),
        id="breadcrumbs_ties",
    ),
    pytest.param("big_matrices", ("--method", "della", "--density", "0.4", "--epsilon", "0.1"), id="della"),
    pytest.param(
        "big_matrices", ("--method", "della_linear", "--density", "0.4", "--epsilon", "0.1"), id="della_linear"
    ),
]
"""Every method, with the options that change its reads: the two TIES presets (the default method), the
rescale read of TIES, random drops with their rescale read (DARE, DELLA), the band's two cuts
(breadcrumbs)."""


@pytest.fixture
def models(request: pytest.FixtureRequest) -> list[Path]:
    """The session fixture a case names (``big_models`` or ``big_matrices``), set up before the test's call
    so that ``--durations`` counts writing it apart from the merge."""
    return request.getfixturevalue(request.param)  # type: ignore[no-any-return]


@pytest.mark.slow
@pytest.mark.parametrize(("models", "options"), MEMORY_CASES, indirect=["models"])
def test_a_2_pow_28_tensor_merges_in_256_mib(models: list[Path], tmp_path: Path, options: tuple[str, ...]) -> None:
    budget = 256 * 1024**2
    out = tmp_path / "out"
    command = _merge_command(models, out, "--memory-budget", "256MiB", *options, "-q")
    start = time.monotonic()
    _, peak = _peak_rss_anon(command)
    seconds = time.monotonic() - start
    measured = f"peak RssAnon {peak / 2**20:.1f} MiB, merge {seconds:.1f} s"
    print(measured)  # (shown with -s or -rP)
    assert peak < budget + RUNTIME_ALLOWANCE, measured
    assert (out / "model.safetensors").stat().st_size > (1 << 29)
    shutil.rmtree(out)  # 512 MiB each: the session's temp dir keeps only the inputs


@pytest.mark.slow
def test_a_grid_of_four_merges_shares_the_256_mib(big_models: list[Path], tmp_path: Path) -> None:
    """The merges of a grid divide the budget: four at once, in one batch, within the same 256 MiB."""
    budget = 256 * 1024**2
    out = tmp_path / "grid"
    grid = ("--density", "0.1,0.2", "--lambda", "0.8,1.0", "--memory-budget", "256MiB", "-q")
    _, peak = _peak_rss_anon(_merge_command(big_models, out, *grid))
    measured = f"peak RssAnon {peak / 2**20:.1f} MiB"
    print(measured)
    assert peak < budget + RUNTIME_ALLOWANCE, measured
    outputs = [p for p in out.iterdir() if p.is_dir()]
    assert len(outputs) == 4 and all((p / "model.safetensors").stat().st_size > (1 << 29) for p in outputs)
    shutil.rmtree(out)


@pytest.mark.slow
def test_della_refuses_a_row_longer_than_its_blocks(big_models: list[Path], tmp_path: Path) -> None:
    """A 1-D tensor of 2**28 values is one row: DELLA ranks whole rows, and no block holds it (whatever
    the budget), so the merge stops before reading any value, with one line naming the row length."""
    out = tmp_path / "out"
    command = _merge_command(big_models, out, "--method", "della", "--density", "0.4", "--memory-budget", "256MiB")
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("ooc-ties: error: ") and NAME in lines[0], lines[0]
    assert f"rows of {NUMEL:,} values" in lines[0] and "whatever the budget" in lines[0], lines[0]
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
@pytest.mark.parametrize("phase", ["pass 1/2", "pass 2/2"])
def test_interrupt_keeps_a_resumable_partial_merge(big_models: list[Path], tmp_path: Path, phase: str) -> None:
    """Ctrl-C in pass 1 or pass 2: exit 130 at once, one line, nothing at the destination; the hidden
    partial merge stays, and ``--resume`` finishes it."""
    out = tmp_path / "out"
    # SIGINT must reach Python's handler even where this test was started with it ignored (nohup, a
    # background job of a script): an ignored signal stays ignored in children, and the merge would finish.
    restore = functools.partial(signal.signal, signal.SIGINT, signal.SIG_DFL)
    process = subprocess.Popen(_merge_command(big_models, out), stderr=subprocess.PIPE, preexec_fn=restore)
    assert process.stderr is not None
    seen = b""
    while phase.encode() not in seen:  # the progress bars name the pass as soon as it starts
        chunk = os.read(process.stderr.fileno(), 4096)
        assert chunk, f"the merge ended before {phase}: {seen.decode(errors='replace')}"
        seen += chunk
    process.send_signal(signal.SIGINT)
    rest = process.communicate(timeout=60)[1]
    lines = (seen + rest).decode().replace("\r", "\n").strip().splitlines()
    assert process.returncode == 130
    assert lines[-1] == "ooc-ties: interrupted"
    assert [p.name for p in tmp_path.iterdir()] == [".out.ooc-ties-partial"]
    done = subprocess.run(_merge_command(big_models, out, "--resume", "-q"), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert [p.name for p in tmp_path.iterdir()] == ["out"]
