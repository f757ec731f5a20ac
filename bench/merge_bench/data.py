"""The data: the synthetic models (generated once, located, counted), the workdir's paths, the mergekit configs
(the TIES one equivalent to ooc-ties' ``mergekit`` preset, and one per merge method).

Nothing here imports ``ooc_ties`` (or NumPy): a child's ``ru_maxrss`` starts from the RSS of the process it
was forked from, so what needs the package runs in a child process.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .util import human_bytes, log

SHAPES = ("tiny", "demo", "1b", "3b", "70b-slice")
N_FINETUNED = 3
_SHAPE_KEYS = ("hidden_size", "intermediate_size", "num_hidden_layers", "vocab_size")


def model_dirs(models: Path) -> list[Path]:
    return [models / "base"] + [models / f"ft{i + 1}" for i in range(N_FINETUNED)]


def _complete(dirs: list[Path]) -> bool:
    return all(d.is_dir() and list(d.glob("*.safetensors")) for d in dirs)


def expected_config(shape: str) -> dict[str, Any] | None:
    # in a child process: importing ooc_ties (NumPy, Numba) here would inflate the children's ru_maxrss
    code = "import json, sys; from ooc_ties.synthetic import SHAPES; print(json.dumps(SHAPES[sys.argv[1]].config()))"
    r = subprocess.run([sys.executable, "-c", code, shape], capture_output=True, text=True)
    return json.loads(r.stdout) if r.returncode == 0 else None


def _same_shape(dirs: list[Path], want: dict[str, Any]) -> bool:
    have = json.loads((dirs[0] / "config.json").read_text())
    return all(have.get(k) == want[k] for k in _SHAPE_KEYS)


def ensure_models(ooc: str, shape: str, models: Path) -> float | None:
    """Generate the models if absent; return the generation wall time (None if they were there)."""
    dirs = model_dirs(models)
    if _complete(dirs):
        want = expected_config(shape)
        if want is not None and not _same_shape(dirs, want):
            sys.exit(
                f"bench: {models} holds models of another shape than {shape!r}; delete it or use another --workdir"
            )
        log(f"reusing models in {models}")
        return None
    if models.exists() and any(models.iterdir()):
        sys.exit(f"bench: {models} exists but is incomplete; delete it and run again")
    cmd = [ooc, "generate", shape, str(models), "--models", str(N_FINETUNED)]
    log(f"generating: {shlex.join(cmd)}")
    started = time.perf_counter()
    subprocess.run(cmd, check=True)
    seconds = time.perf_counter() - started
    log(f"generated in {seconds:.1f} s")
    return seconds


def holds_shape(models: Path, shape: str) -> bool | None:
    """None if ``models`` holds no complete model set, else whether it is of ``shape``."""
    dirs = model_dirs(models)
    if not _complete(dirs):
        return None
    want = expected_config(shape)
    return want is not None and _same_shape(dirs, want)


def input_files(models: Path) -> list[Path]:
    files: list[Path] = []
    for d in model_dirs(models):
        files += sorted(d.glob("*.safetensors"))
    return files


def count_parameters(models: Path) -> int:
    """Float parameters of the base model, from its safetensors headers (no tensor data read)."""
    total = 0
    for f in sorted((models / "base").glob("*.safetensors")):
        with open(f, "rb") as fh:
            n = int.from_bytes(fh.read(8), "little")
            header = json.loads(fh.read(n))
        for name, info in header.items():
            if name != "__metadata__" and info["dtype"] in ("BF16", "F16", "F32", "F64"):
                count = 1
                for dim in info["shape"]:
                    count *= dim
                total += count
    return total


def mem_total_bytes() -> int:
    with open("/proc/meminfo") as f:
        return int(f.readline().split()[1]) * 1024


@dataclass(frozen=True)
class Inputs:
    """One shape's model set, ready to be read."""

    shape: str
    dirs: list[Path]
    """The base model's folder, then the fine-tunes'."""
    files: list[Path]
    """Every input ``.safetensors`` file."""
    input_bytes: int
    """The size of ``files``, counted once."""
    parameters: int
    """Float parameters per model."""
    generation_s: float | None
    """How long generating the models took; None if they were reused."""

    @classmethod
    def prepare(cls, ooc: str, shape: str, models: Path) -> Inputs:
        """Generate the models of ``shape`` in ``models`` if absent, and describe them."""
        generation_s = ensure_models(ooc, shape, models)
        files = input_files(models)
        input_bytes = sum(f.stat().st_size for f in files)
        parameters = count_parameters(models)
        log(
            f"{len(files)} input files, {input_bytes / 1e9:.3f} GB ({human_bytes(input_bytes)}), "
            f"{parameters:,} parameters"
        )
        return cls(shape, model_dirs(models), files, input_bytes, parameters, generation_s)

    def read_once(self) -> str:
        """A shell command that reads every input file once (``cat`` to /dev/null)."""
        return f"cat {' '.join(shlex.quote(str(f)) for f in self.files)} > /dev/null"


@dataclass(frozen=True)
class Workdir:
    """Where the merges write, and what the benchmark keeps there."""

    root: Path

    @property
    def out(self) -> Path:
        return self.root / "out"

    @property
    def report_out(self) -> Path:
        """Where the ``report`` variant writes its interference report (deleted after every run, as ``out``)."""
        return self.root / "report-out"

    @property
    def kept_mergekit(self) -> Path:
        """mergekit-yaml's output, kept for --compare-output."""
        return self.root / "out-mergekit-yaml"

    @property
    def kept_ooc(self) -> Path:
        """ooc-ties' mergekit-preset output, kept for --compare-output."""
        return self.root / "out-ooc-mergekit"

    @property
    def mergekit_config(self) -> Path:
        return self.root / "mergekit-ties.yml"

    def method_config(self, method: str) -> Path:
        """The mergekit config of ``method`` (``method_yaml_text``)."""
        return self.root / "methods" / f"{method}.yml"

    def stderr_log(self, variant: str) -> Path:
        """Where the stderr of a timed run of ``variant`` goes (a kind that may fail without stopping the
        benchmark: mergekit-yaml, ooc-ties on a config, the reference); the last run's is kept."""
        return self.root / "logs" / (re.sub(r"[^\w.-]+", "_", variant) + ".log")

    def clean_out(self) -> None:
        for d in (self.out, self.report_out):
            if d.exists():
                shutil.rmtree(d)
        for pattern in (".out.ooc-ties-*", ".report-out.ooc-ties-*"):  # staging folders of an interrupted run
            for stale in self.root.glob(pattern):
                shutil.rmtree(stale, ignore_errors=True)

    def clear_kept(self) -> None:
        for d in (self.kept_mergekit, self.kept_ooc):
            shutil.rmtree(d, ignore_errors=True)


def _yaml_text(method: str, base: Path | None, models: list[tuple[Path, dict[str, float]]]) -> str:
    """A mergekit config: ``method`` over ``models`` (each with its parameters), f32 math, bf16 out."""
    lines = [f"merge_method: {method}"]
    if base is not None:
        lines.append(f"base_model: {json.dumps(str(base))}")
    lines.append("models:")
    for d, params in models:
        values = ", ".join(f"{k}: {v}" for k, v in params.items())
        lines += [f"  - model: {json.dumps(str(d))}", f"    parameters: {{{values}}}"]
    lines += ["dtype: float32", "out_dtype: bfloat16", ""]
    return "\n".join(lines)


def mergekit_yaml_text(dirs: list[Path], density: float) -> str:
    """mergekit's TIES config equivalent to ``ooc-ties merge --preset mergekit`` (weights 1, f32 math, bf16 out)."""
    return _yaml_text("ties", dirs[0], [(d, {"density": density, "weight": 1.0}) for d in dirs[1:]])


METHODS: dict[str, dict[str, float]] = {
    "linear": {},
    "task_arithmetic": {},
    "ties": {"density": 0.3},
    "dare_ties": {"density": 0.3},
    "dare_linear": {"density": 0.3},
    "breadcrumbs": {"density": 0.3, "gamma": 0.05},
    "breadcrumbs_ties": {"density": 0.3, "gamma": 0.05},
    "della": {"density": 0.3, "epsilon": 0.1},
    "della_linear": {"density": 0.3, "epsilon": 0.1},
}
"""The merge methods of mergekit's task-arithmetic family that ooc-ties runs from a config (mergekit's names),
each with its parameters besides ``weight`` at values a real merge would use."""

WEIGHTS = (1.0, 0.5, 0.7)
"""The fine-tunes' weights in every method's config."""

LINEAR_BASE_WEIGHT = 1.0
"""``linear`` has no base: the base model is listed as a fourth model (so every method reads the same bytes)."""


def method_yaml_text(method: str, dirs: list[Path]) -> str:
    """The mergekit config of ``method`` over the base ``dirs[0]`` and the fine-tunes ``dirs[1:]``, as
    ``mergekit-yaml`` and ``ooc-ties merge --config`` both run it."""
    params = METHODS[method]
    models = [(d, {"weight": w, **params}) for d, w in zip(dirs[1:], WEIGHTS, strict=True)]
    if method == "linear":
        return _yaml_text(method, None, [(dirs[0], {"weight": LINEAR_BASE_WEIGHT}), *models])
    return _yaml_text(method, dirs[0], models)
