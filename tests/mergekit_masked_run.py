"""Run ``mergekit-yaml`` (0.1.5) on several configurations in one process, some with parts of it patched.

Not a test: ``tests/test_mergekit_parity.py`` runs it with the Python of mergekit's own venv
(``$OOC_TIES_MERGEKIT_VENV/bin/python tests/mergekit_masked_run.py jobs.json``), so that torch and mergekit
are imported once for all its merges (a mergekit-yaml process costs about 4 s, nearly all imports).
``jobs.json`` holds a list of jobs::

    {"config": "merge.yml", "out": "folder", "seed": 0 or null, "masks": "folder" or null,
     "exact_l1": false, "unfused_addcmul": false}

Each job runs mergekit-yaml's own command (``mergekit.scripts.run_yaml.main``) as the program runs
``mergekit-yaml config out --no-cuda --no-copy-tokenizer --quiet`` (with ``--random-seed seed`` if given),
patched as the job asks:

``masks``: the drops use given masks. A folder with ``index.json`` (``{digest: "file.npy"}``) and boolean
``.npy`` keep masks, one per task vector; ``digest`` is the SHA-256 of the task vector's float32 bytes (C
order), which tells the (model, tensor) pairs of the tie-free parity models apart whatever mergekit's
execution order. ``mergekit.sparsify.bernoulli`` and ``mergekit.sparsify.della_magprune`` (DARE's and
DELLA's drops) are wrapped: the wrapper looks up the mask of the task vector it is given, and during the
call ``torch.bernoulli`` returns that mask (in the shape and dtype of the probabilities mergekit computed)
instead of drawing one. Everything else (DELLA's ranks and probabilities, the L1 rescale, the merge) is
mergekit's code. The job writes ``out/drops.json``: for every call, in call order, the digest, the
density, the number of ``torch.bernoulli`` calls and the probabilities' shape and dtype, and for DARE
their distinct values; DELLA's probabilities are saved as ``out/probs/<digest>.npy``. Every given mask
must be used exactly once.

``exact_l1`` (with ``masks``): during a drop, ``Tensor.sum`` (the L1 norms of mergekit's rescale) adds in
float64 and rounds the total to the tensor's dtype: the exactly rounded sum for the parity models (their
task values are multiples of 2**-20 below 2**-4, so float64 adds them exactly), as ooc-ties computes it.

``unfused_addcmul``: ``Tensor.addcmul_`` (linear's ``result += tensor * weight``) rounds the product
before adding it; torch's CPU kernel may fuse the two into one rounding (an FMA).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def _digest(tensor: Any) -> str:
    return hashlib.sha256(tensor.detach().float().contiguous().numpy().tobytes()).hexdigest()


def _run(config: str, out: str, seed: int | None) -> None:
    from mergekit.scripts.run_yaml import main

    args = [config, out, "--no-cuda", "--no-copy-tokenizer", "--quiet"]
    if seed is not None:
        args += ["--random-seed", str(seed)]
    main.main(args=args, prog_name="mergekit-yaml", standalone_mode=False)


@contextlib.contextmanager
def _patched(owner: Any, name: str, value: Any) -> Iterator[None]:
    own = name in vars(owner)  # (else inherited: Tensor.sum is TensorBase's)
    original = getattr(owner, name)
    setattr(owner, name, value)
    try:
        yield
    finally:
        if own:
            setattr(owner, name, original)
        else:
            delattr(owner, name)


@contextlib.contextmanager
def _unfused_addcmul() -> Iterator[None]:
    import torch

    def addcmul_(self: Any, tensor1: Any, tensor2: Any, *, value: Any = 1) -> Any:
        if value != 1:
            raise NotImplementedError("addcmul_ with a value")
        return self.add_(tensor1 * tensor2)

    with _patched(torch.Tensor, "addcmul_", addcmul_):
        yield


def _exact_sum() -> Any:
    import torch

    real_sum = torch.Tensor.sum

    def exact_sum(self: Any, *args: Any, **kwargs: Any) -> Any:
        if args or kwargs or self.dtype != torch.float32:
            raise NotImplementedError(f"sum{args}{kwargs} of {self.dtype} during a drop")
        return real_sum(self.double()).to(self.dtype)

    return exact_sum


@contextlib.contextmanager
def _given_masks(masks_dir: Path, out: str, exact_l1: bool) -> Iterator[None]:
    import numpy as np
    import torch
    from mergekit import sparsify

    index: dict[str, str] = json.loads((masks_dir / "index.json").read_text())
    masks = {digest: np.load(masks_dir / name) for digest, name in index.items()}
    calls: list[dict[str, Any]] = []
    saved_probs: dict[str, Any] = {}

    def wrap(original: Any, kind: str) -> Any:
        def drop(tensor: Any, density: float, *args: Any, **kwargs: Any) -> Any:
            digest = _digest(tensor)
            if digest not in masks:
                raise KeyError(f"no mask for a task vector of shape {tuple(tensor.shape)} ({digest})")
            mask = masks[digest]
            call: dict[str, Any] = {"digest": digest, "kind": kind, "density": density, "bernoulli": 0}
            calls.append(call)

            def given_bernoulli(probs: Any, *a: Any, **k: Any) -> Any:
                if a or k:
                    raise TypeError(f"unexpected torch.bernoulli arguments {a} {k}")
                if probs.numel() != mask.size:
                    raise ValueError(f"a mask of {mask.size} values for probabilities of shape {tuple(probs.shape)}")
                call["bernoulli"] += 1
                call["probs_shape"] = list(probs.shape)
                call["probs_dtype"] = str(probs.dtype)
                if kind == "dare":
                    call["probs_values"] = sorted({float(v) for v in probs.unique().tolist()})
                else:
                    saved_probs[digest] = probs.detach().float().numpy().reshape(mask.shape).copy()
                return torch.from_numpy(mask.reshape(tuple(probs.shape))).to(probs.dtype)

            with contextlib.ExitStack() as stack:
                stack.enter_context(_patched(torch, "bernoulli", given_bernoulli))
                if exact_l1:
                    stack.enter_context(_patched(torch.Tensor, "sum", _exact_sum()))
                return original(tensor, density, *args, **kwargs)

        return drop

    with _patched(sparsify, "bernoulli", wrap(sparsify.bernoulli, "dare")):
        with _patched(sparsify, "della_magprune", wrap(sparsify.della_magprune, "della")):
            yield
    used = [call["digest"] for call in calls]
    if sorted(used) != sorted(masks):
        raise AssertionError(f"{len(masks)} masks given, {len(used)} drops ({len(set(used))} distinct task vectors)")
    probs_dir = Path(out) / "probs"
    probs_dir.mkdir(exist_ok=True)
    for digest, probs in saved_probs.items():
        np.save(probs_dir / f"{digest}.npy", probs)
    (Path(out) / "drops.json").write_text(json.dumps(calls))


def main(jobs_file: str) -> None:
    for job in json.loads(Path(jobs_file).read_text()):
        with contextlib.ExitStack() as stack:
            if job.get("masks"):
                stack.enter_context(_given_masks(Path(job["masks"]), job["out"], bool(job.get("exact_l1"))))
            elif job.get("exact_l1"):
                raise ValueError("exact_l1 needs masks")
            if job.get("unfused_addcmul"):
                stack.enter_context(_unfused_addcmul())
            _run(job["config"], job["out"], job.get("seed"))


if __name__ == "__main__":
    main(sys.argv[1])
