"""A Dask cluster that outlives the merges of a benchmark: the ``running:N`` variant's.

``cluster:N`` merges on ``--cluster local:N``, which starts a scheduler and N workers for every merge
and pays for it (processes, imports, each worker loading the compiled kernels). A user with a running
cluster pays that once; ``running:N`` measures that case: the benchmark starts ``dask scheduler`` and
``dask worker --nworkers N --nthreads 1`` (from the venv of the ``ooc-ties`` executable) before the
merges, every merge connects by address, and the untimed phase run warms the workers. The workers are
not children of the merge, so the merge's peak RSS does not count them.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

__all__ = ["running_cluster"]


@contextlib.contextmanager
def running_cluster(ooc: str, workers: int, folder: Path) -> Iterator[str]:
    """Start a scheduler and ``workers`` single-threaded worker processes; yield the scheduler address."""
    dask = str(Path(ooc).parent / "dask")
    folder.mkdir(parents=True, exist_ok=True)
    info = folder / "scheduler.json"
    info.unlink(missing_ok=True)
    log = open(folder / "cluster.log", "w")
    scheduler = subprocess.Popen(
        [dask, "scheduler", "--scheduler-file", str(info), "--no-dashboard", "--port", "0"], stdout=log, stderr=log
    )
    procs = [scheduler]
    try:
        deadline = time.monotonic() + 60
        while not info.is_file():
            if time.monotonic() > deadline or scheduler.poll() is not None:
                raise RuntimeError(f"the benchmark's dask scheduler did not start (see {folder / 'cluster.log'})")
            time.sleep(0.2)
        address = json.loads(info.read_text())["address"]
        procs.append(
            subprocess.Popen(
                [
                    dask,
                    "worker",
                    address,
                    "--nworkers",
                    str(workers),
                    "--nthreads",
                    "1",
                    "--no-dashboard",
                    "--memory-limit",
                    "0",
                ],
                stdout=log,
                stderr=log,
            )
        )
        _wait_for_workers(address, workers)
        yield address
    finally:
        for proc in reversed(procs):
            proc.terminate()
        for proc in reversed(procs):
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
        log.close()


def _wait_for_workers(address: str, workers: int) -> None:
    from distributed import Client

    with Client(address, timeout=60) as client:
        client.wait_for_workers(workers, timeout=120)
