"""Merges on a Dask cluster (``--cluster``, ``Resources(cluster=...)``): a LocalCluster of two worker
processes gives the bytes of the local engine, for every method, both output formats, grids and reports;
a worker killed mid-merge changes nothing; a driver killed mid-merge resumes; bad clusters and inputs fail
with one line. Skipped without the ``[dask]`` extra; most run with ``-m slow`` (each starts processes)."""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import tree_digest
from test_merge import write_models
from test_methods import CASES
from test_resume import _kill_at

pytest.importorskip("distributed", reason="the [dask] extra (dask, distributed) is not installed")

import distributed

from ooc_ties import PRESETS, Resources, merge
from ooc_ties import cluster as cluster_module
from ooc_ties.analyze import analyze
from ooc_ties.cli import main
from ooc_ties.convert import convert
from ooc_ties.errors import ClusterError, OptionError
from ooc_ties.grid import name_points
from ooc_ties.io.staging import staging_path
from ooc_ties.merge import merge_grid
from ooc_ties.open_elements import OpenElements, RecordFile

Models = tuple[Path, list[Path]]
BLOCK = 4096  # many blocks, so that the tasks spread over both workers


@pytest.fixture(scope="module")
def client() -> Iterator[Any]:
    """A LocalCluster of two single-threaded worker processes (as ``--cluster local:2`` starts)."""
    with (
        distributed.LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None, memory_limit=0
        ) as local,
        distributed.Client(local, set_as_default=False) as connected,
    ):
        yield connected


def _both(models: Models, root: Path, options: Any, client: Any, suffix: str = "", **kwargs: Any) -> tuple[str, str]:
    base, fts = models
    local = merge(base, fts, root / f"local{suffix}", options, Resources(max_block_elements=BLOCK), **kwargs)
    remote = merge(
        base, fts, root / f"cluster{suffix}", options, Resources(max_block_elements=BLOCK, cluster=client), **kwargs
    )
    assert local.output is not None and remote.output is not None
    return tree_digest(local.output), tree_digest(remote.output)


@pytest.mark.parametrize(
    ("preset", "suffix"),
    [
        ("paper", ""),
        pytest.param("paper", ".zarr", marks=pytest.mark.slow),
        pytest.param("mergekit", "", marks=pytest.mark.slow),
        pytest.param("mergekit", ".zarr", marks=pytest.mark.slow),
    ],
)
def test_a_merge_on_a_cluster_gives_the_local_bytes(
    tiny_models: Models, tmp_path: Path, client: Any, preset: str, suffix: str
) -> None:
    local, remote = _both(tiny_models, tmp_path, PRESETS[preset], client, suffix)
    assert local == remote


@pytest.mark.slow
def test_every_method_on_a_cluster_gives_the_local_bytes(tiny_models: Models, tmp_path: Path, client: Any) -> None:
    """Every method case of tests/test_methods.py, as one grid on the cluster (shared pass-1 reads, one
    pass 2) against the same grid run locally: every file of every point identical."""
    options = [case.values[0] for case in CASES]
    base, fts = tiny_models
    local = merge_grid(base, fts, tmp_path / "local", options, Resources(max_block_elements=BLOCK))
    remote = merge_grid(base, fts, tmp_path / "cluster", options, Resources(max_block_elements=BLOCK, cluster=client))
    for name in name_points(options):
        assert tree_digest(tmp_path / "cluster" / name) == tree_digest(tmp_path / "local" / name), name
    assert remote.bytes_read == local.bytes_read


@pytest.mark.slow
def test_zarr_inputs_on_a_cluster_give_the_local_bytes(tiny_models: Models, tmp_path: Path, client: Any) -> None:
    """Zarr groups as inputs travel to the workers as their paths (and reopen there)."""
    base, fts = tiny_models
    groups = [convert(m, tmp_path / f"{m.name}.zarr", block_elements=777).output for m in (base, *fts)]
    local, remote = _both((groups[0], groups[1:]), tmp_path, PRESETS["paper"], client)
    assert local == remote


@pytest.mark.slow
def test_a_report_and_signs_on_a_cluster_equal_the_local_ones(tiny_models: Models, tmp_path: Path, client: Any) -> None:
    base, fts = tiny_models
    for where, cluster in (("local", None), ("cluster", client)):
        resources = Resources(max_block_elements=BLOCK, cluster=cluster)
        merge(
            base,
            fts,
            tmp_path / f"{where}-out",
            PRESETS["paper"],
            resources,
            report=tmp_path / f"{where}-report",
            save_signs=tmp_path / f"{where}.safetensors",
        )
        analyze(base, fts, tmp_path / f"{where}-analyze", PRESETS["mergekit"], resources)
    for name in ("report.json", "tensors.csv"):
        assert (tmp_path / "local-report" / name).read_bytes() == (tmp_path / "cluster-report" / name).read_bytes()
        assert (tmp_path / "local-analyze" / name).read_bytes() == (tmp_path / "cluster-analyze" / name).read_bytes()
    assert (tmp_path / "local.safetensors").read_bytes() == (tmp_path / "cluster.safetensors").read_bytes()


@pytest.mark.slow
def test_the_cli_runs_on_a_cluster_by_address(tiny_models: Models, tmp_path: Path, client: Any) -> None:
    base, fts = tiny_models
    args = ["merge", "--base", str(base), *map(str, fts), "--block-elements", str(BLOCK), "-q"]
    main([*args, "-o", str(tmp_path / "local")])
    main([*args, "-o", str(tmp_path / "cluster"), "--cluster", client.scheduler.address])
    assert tree_digest(tmp_path / "local") == tree_digest(tmp_path / "cluster")


@pytest.mark.slow
@pytest.mark.parametrize("output", ["out", "out.zarr"])
def test_a_wrong_majority_guess_is_corrected_from_the_workers_records(
    tmp_path: Path, client: Any, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch, output: str
) -> None:
    """The sample votes +, the model -: the workers write the open elements' records to files of their
    own in the state folder, and the driver corrects every block in place from them (the models of
    ``tests/test_merge.py``'s wrong-guess test)."""
    from ooc_ties.pass1.costs import VOTE_STRIDE

    block, n_blocks = 4096, 4 * VOTE_STRIDE
    sampled = (np.arange(n_blocks * block) // block) % VOTE_STRIDE == 0
    tau = np.where(sampled, 1.0, -1.0).astype(np.float32)
    tau2 = tau.copy()
    tau2[::4] = -tau2[::4]  # exact zero votes between non-zero values: these follow the majority sign
    base = np.zeros(n_blocks * block, np.float32)
    paths = write_models(tmp_path, base, base + tau, base + tau2)
    options = PRESETS["paper"].with_(density=1.0)
    local = merge(paths[0], paths[1:], tmp_path / f"local-{output}", options, Resources(max_block_elements=block))
    referred: list[RecordFile] = []
    keep_reference = OpenElements.refer
    monkeypatch.setattr(OpenElements, "refer", lambda self, o, r: (referred.append(r), keep_reference(self, o, r)))
    with caplog.at_level("INFO", logger="ooc_ties"):
        remote = merge(
            paths[0], paths[1:], tmp_path / output, options, Resources(max_block_elements=block, cluster=client)
        )
    assert f"{n_blocks} blocks corrected in place, 0 merged again" in caplog.text
    assert len(referred) == n_blocks and all("open-elements-" in r.path for r in referred)
    assert local.output is not None and remote.output is not None
    assert tree_digest(remote.output) == tree_digest(local.output)
    assert not list(tmp_path.rglob("open-elements*"))  # (the workers' record files went with the merge)


@pytest.mark.slow
def test_blocks_merged_again_on_a_cluster_are_counted_once(
    tmp_path: Path, client: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """A wrong guess whose open elements a tie quota decides: the workers merge blocks again, and the
    report counts each once, as the local merge's does (``tests/test_report.py`` checks that one)."""
    from ooc_ties.pass1.costs import VOTE_STRIDE

    block, n_blocks = 4096, 4 * VOTE_STRIDE
    sampled = (np.arange(n_blocks * block) // block) % VOTE_STRIDE == 0
    tau = np.where(sampled, 1.0, -1.0).astype(np.float32)
    tau2 = tau.copy()
    tau2[::4] = -tau2[::4]
    base = np.zeros(n_blocks * block, np.float32)
    paths = write_models(tmp_path, base, base + tau, base + tau2)
    options = PRESETS["paper"].with_(trim="topk", density=0.75)
    documents = []
    for name, cluster in (("local", None), ("remote", client)):
        with caplog.at_level("INFO", logger="ooc_ties"):
            resources = Resources(max_block_elements=block, cluster=cluster)
            merge(paths[0], paths[1:], tmp_path / name, options, resources, report=tmp_path / f"{name}-report")
        assert "0 merged again" not in caplog.text
        caplog.clear()
        documents.append(json.loads((tmp_path / f"{name}-report" / "report.json").read_text()))
    assert documents[0] == documents[1]


class _KillOnce(distributed.WorkerPlugin):
    """SIGKILLs the worker process that starts the ``after``-th task it runs, once per test (a marker
    file remembers it across the restarted worker)."""

    def __init__(self, marker: str, after: int) -> None:
        self.marker = marker
        self.after = after
        self.started = 0

    def transition(self, key: Any, start: str, finish: str, **kwargs: Any) -> None:
        if finish != "executing":
            return
        self.started += 1
        if self.started >= self.after and not os.path.exists(self.marker):
            Path(self.marker).write_text(str(os.getpid()))
            os.kill(os.getpid(), signal.SIGKILL)


@pytest.mark.slow
def test_a_worker_killed_mid_merge_gives_the_same_bytes(tiny_models: Models, tmp_path: Path) -> None:
    """A worker process SIGKILLed while it runs a task: Dask runs the task again on a worker (the nanny
    restarts the dead one), and the output is byte-identical to the local merge."""
    marker = tmp_path / "killed"
    base, fts = tiny_models
    expected = merge(base, fts, tmp_path / "local", PRESETS["paper"], Resources(max_block_elements=1024))
    with (
        distributed.LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None, memory_limit=0
        ) as local,
        distributed.Client(local, set_as_default=False) as connected,
    ):
        connected.register_plugin(_KillOnce(str(marker), after=3))
        resources = Resources(max_block_elements=1024, cluster=connected)
        result = merge(base, fts, tmp_path / "cluster", PRESETS["paper"], resources)
    assert marker.exists()  # (a worker did die)
    assert result.output is not None and expected.output is not None
    assert tree_digest(result.output) == tree_digest(expected.output)


class _RetireAll(distributed.WorkerPlugin):
    """After its worker has started ``after`` tasks, closes the worker: with every worker so closed (and
    no nanny to restart them) the cluster is left with none."""

    def __init__(self, after: int) -> None:
        self.after = after
        self.started = 0

    def setup(self, worker: Any) -> None:
        self.worker = worker

    def transition(self, key: Any, start: str, finish: str, **kwargs: Any) -> None:
        if finish == "executing":
            self.started += 1
            if self.started == self.after:
                self.worker.loop.add_callback(self.worker.close)


@pytest.mark.slow
def test_a_cluster_left_without_workers_stops_the_merge_with_one_line(
    tiny_models: Models, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every worker gone mid-merge: Dask would wait for one forever; the merge stops with a ClusterError
    once there has been none for ``NO_WORKERS_TIMEOUT`` seconds, its partial output kept for --resume."""
    monkeypatch.setattr(cluster_module, "NO_WORKERS_TIMEOUT", 2)
    monkeypatch.setattr(cluster_module, "WAIT_STEP", 0.5)
    base, fts = tiny_models
    out = tmp_path / "out"
    with (
        distributed.LocalCluster(
            n_workers=2, threads_per_worker=1, processes=False, dashboard_address=None, memory_limit=0
        ) as local,
        distributed.Client(local, set_as_default=False) as connected,
    ):
        connected.register_plugin(_RetireAll(after=2))
        resources = Resources(max_block_elements=1024, cluster=connected)
        with pytest.raises(ClusterError, match="no worker for 2 s"):
            merge(base, fts, out, PRESETS["paper"], resources, resume=True)
    assert not out.exists() and staging_path(out.absolute()).is_dir()


def _wait_until_idle(client: Any, timeout: float = 60) -> None:
    """Wait until no worker runs or holds a task."""
    deadline = time.monotonic() + timeout
    while any(client.processing().values()) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(client.processing().values()), "the cluster did not go idle"


@pytest.mark.slow
@pytest.mark.parametrize("suffix", ["", ".zarr"])
def test_a_driver_killed_mid_merge_resumes(tiny_models: Models, tmp_path: Path, client: Any, suffix: str) -> None:
    """The driver SIGKILLed halfway through pass 2 (the cluster lives on): ``--resume`` on the cluster
    finishes the merge, byte-identical to an uninterrupted one, and its report (the blocks done before
    counted by the workers again) is the uninterrupted merge's."""
    base, fts = tiny_models
    local = tmp_path / f"local{suffix}"
    expected = merge(
        base, fts, local, PRESETS["paper"], Resources(max_block_elements=1024), report=tmp_path / "local-report"
    )
    out = tmp_path / f"cluster{suffix}"
    on_cluster = json.dumps({"max_block_elements": 1024, "cluster": client.scheduler.address})
    _kill_at(tiny_models, out, "pass 2/2", 0.5, resources=on_cluster)  # (the partial merge stays)
    _wait_until_idle(client)  # (as docs/distributed.md says: the dead driver's last tasks run to their end)
    resources = Resources(max_block_elements=1024, cluster=client)
    resumed = merge(base, fts, out, PRESETS["paper"], resources, resume=True, report=tmp_path / "report")
    assert resumed.resumed_blocks > 0
    assert expected.output is not None
    assert tree_digest(out) == tree_digest(expected.output)
    report = (tmp_path / "report" / "report.json").read_bytes()
    assert report == (tmp_path / "local-report" / "report.json").read_bytes()


def test_an_unreachable_scheduler_is_one_line_and_writes_nothing(
    tiny_models: Models, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cluster_module, "CONNECT_TIMEOUT", 2)
    base, fts = tiny_models
    with pytest.raises(ClusterError, match=r"tcp://127\.0\.0\.1:9: cannot reach the scheduler"):
        merge(base, fts, tmp_path / "out", PRESETS["paper"], Resources(cluster="tcp://127.0.0.1:9"))
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("local:0", "expected local:N with N a positive number"),
        ("localhost:8786", "expected a scheduler address"),
        ("http://x", "expected a scheduler address"),
    ],
)
def test_bad_cluster_values_are_refused(value: str, message: str) -> None:
    with pytest.raises(OptionError, match=message):
        Resources(cluster=value)


def test_inputs_in_memory_cannot_go_to_a_cluster(tmp_path: Path, client: Any) -> None:
    base = {"w": np.zeros((64, 64), np.float32)}
    ft = {"w": np.ones((64, 64), np.float32)}
    with pytest.raises(OptionError, match="memory cannot be read by a cluster's workers"):
        merge(base, [ft], tmp_path / "out", PRESETS["paper"], Resources(cluster=client))
    assert not (tmp_path / "out").exists()
