"""Peak anonymous memory of a real merge process stays within the budget plus the runtime's own.

Slow (it writes ~2.5 GB under the temp dir): run with ``pytest -m slow``.
"""

from __future__ import annotations

import functools
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from ooc_ties.dtypes import BF16
from ooc_ties.io.staging import StagedDirectory
from ooc_ties.io.writer import SafetensorsOutput, ShardLayout, TensorSpec
from ooc_ties.kernels.convert import encode_oracle

RUNTIME_ALLOWANCE = 300 * 1024**2
"""Python, NumPy, Numba and LLVM: a fixed cost the budget does not cover (docs/memory.md)."""


def _write_models(root: Path, numel: int, n_finetuned: int) -> list[Path]:
    rng = np.random.default_rng(0)
    folders = [StagedDirectory(root / name) for name in ["base"] + [f"ft{i}" for i in range(n_finetuned)]]
    spec = TensorSpec("model.embed_tokens.weight", BF16, (numel,))
    layout = ShardLayout("model.safetensors", (spec.name,), spec.nbytes)
    writers = [SafetensorsOutput(f, [spec], [layout], {}) for f in folders]
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


@pytest.fixture(scope="module")
def big_models(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """A base and three fine-tunes of one 2**28-element bf16 tensor (512 MiB each)."""
    return _write_models(tmp_path_factory.mktemp("big"), 1 << 28, 3)


def _merge_command(models: list[Path], out: Path, *extra: str) -> list[str]:
    base, *fts = models
    return [sys.executable, "-m", "ooc_ties.cli", "merge", "--base", str(base), *map(str, fts), "-o", str(out), *extra]


@pytest.mark.slow
@pytest.mark.parametrize("preset", ["paper", "mergekit"])
def test_a_2_pow_28_tensor_merges_in_256_mib(big_models: list[Path], tmp_path: Path, preset: str) -> None:
    budget = 256 * 1024**2
    command = _merge_command(big_models, tmp_path / "out", "--memory-budget", "256MiB", "--preset", preset, "-q")
    _, peak = _peak_rss_anon(command)
    assert peak < budget + RUNTIME_ALLOWANCE, f"peak RssAnon {peak / 2**20:.0f} MiB"
    assert (tmp_path / "out" / "model.safetensors").stat().st_size > (1 << 29)


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
