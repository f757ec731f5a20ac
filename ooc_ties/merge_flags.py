"""The flags that say what to merge (``merge`` and ``analyze``), parsed into merges.

The models (``--base`` and the fine-tuned ones, or ``--config``) and the method's options, where a
comma-separated list spans a grid of merges (docs/grid.md): :func:`what_to_merge` gives a command these
flags as one :class:`What`, and :func:`merges` turns it into grid points.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from ooc_ties.config import PRESETS, RescaleRule, Scope, TrimRule, ZeroSign, parse_preset
from ooc_ties.errors import OocTiesError
from ooc_ties.from_config import configured_merge
from ooc_ties.grid import GridPoint, expand_grid, name_points
from ooc_ties.mergekit_yaml import load_configs
from ooc_ties.methods import METHODS
from ooc_ties.sources import open_source

__all__ = ["WHAT_TO_MERGE", "What", "is_number", "join_weights", "merges", "what_to_merge"]


def _choices(kind: type[Scope] | type[TrimRule] | type[ZeroSign] | type[RescaleRule]) -> click.Choice[str]:
    return click.Choice([m.value for m in kind])


WHAT_TO_MERGE = [
    click.argument("finetuned", nargs=-1),
    click.option(
        "--base",
        "-b",
        help="Base model: .safetensors file, HF folder, Zarr group (path or URL) or cached Hub ID (org/name).",
    ),
    click.option(
        "--config",
        "config_path",
        type=click.Path(path_type=Path),
        help="A mergekit YAML configuration: its models, method and parameters (instead of --base, FINETUNED "
        "and the method's options).",
    ),
    click.option(
        "--method",
        help=f"The merge method (docs/methods.md): {', '.join(METHODS)}; a comma-separated list spans a grid. "
        "[default: ties]",
    ),
    click.option(
        "--preset",
        type=click.Choice(sorted(PRESETS)),
        default="paper",
        show_default=True,
        help="paper: the TIES reference code; mergekit: mergekit's ties.",
    ),
    click.option(
        "--density",
        help="Fraction of each task vector kept (largest magnitudes for ties, a band for breadcrumbs, a random "
        "drop for dare/della), in (0, 1]: one, or one per model joined by '/' (0.2/0.5); a comma-separated list "
        "spans a grid (docs/grid.md). [ties: 0.2; others: 1]",
    ),
    click.option(
        "--gamma",
        help="breadcrumbs: fraction of largest magnitudes dropped as outliers; one, or one per model joined by "
        "'/'; a comma-separated list spans a grid. [0.01]",
    ),
    click.option(
        "--epsilon",
        help="della: keep probabilities run from density - epsilon to density + epsilon; one, or one per model "
        "joined by '/'; a comma-separated list spans a grid. [0.15]",
    ),
    click.option(
        "--rescale/--no-rescale",
        default=None,
        help="Rescale the values a random drop keeps (dare_*, della*). [those: yes]",
    ),
    click.option(
        "--rescale-rule",
        type=_choices(RescaleRule),
        help="l1: keep each tensor's L1 norm (mergekit); density: times 1/density (DARE paper). [l1]",
    ),
    click.option("--seed", help="Seed of the random drops (dare_*, della*); a comma-separated list spans a grid. [0]"),
    click.option(
        "--sign-from",
        help="Elect each parameter's sign from this model's task vector (e.g. a multitask model), or from a file "
        "of signs saved by --save-signs, instead of the vote.",
    ),
    click.option(
        "--lambda", "lam", help="Scale of the merged task vector; a comma-separated list spans a grid. [default: 1.0]"
    ),
    click.option(
        "--scope",
        help="Top-k over the whole model (global) or per tensor (tensor); a comma list spans a grid. [preset]",
    ),
    click.option("--trim", type=_choices(TrimRule), help="threshold: keep all ties (paper); topk: exactly k. [preset]"),
    click.option("--zero-sign", type=_choices(ZeroSign), help="Sign where the vote is exactly 0. [preset]"),
    click.option(
        "--normalize/--no-normalize",
        default=None,
        help="Divide by the sum of the (agreeing) weights. [linear, ties, della: yes; others: no]",
    ),
    click.option(
        "--weights",
        multiple=True,
        help="Per-model weights, space- or comma-separated, one per fine-tuned model; repeat --weights to span a grid.",
    ),
]
"""The arguments and options that say what to merge (``merge`` and ``analyze``)."""


@dataclass(frozen=True, slots=True)
class What:
    """The flags of :data:`WHAT_TO_MERGE`, as given (``None``: not given)."""

    finetuned: tuple[str, ...]
    base: str | None
    config_path: Path | None
    method: str | None
    preset: str
    density: str | None
    gamma: str | None
    epsilon: str | None
    rescale: bool | None
    rescale_rule: str | None
    seed: str | None
    sign_from: str | None
    lam: str | None
    scope: str | None
    trim: str | None
    zero_sign: str | None
    normalize: bool | None
    weights: tuple[str, ...]


def what_to_merge(command: Any) -> Any:
    """Give a command the flags of :data:`WHAT_TO_MERGE`, collected into its argument ``what``."""

    @functools.wraps(command)
    def collected(**flags: Any) -> Any:
        what = What(**{field: flags.pop(field) for field in What.__dataclass_fields__})
        return command(what=what, **flags)

    for option in reversed(WHAT_TO_MERGE):
        collected = option(collected)
    return collected


def merges(what: What, grid_mode: str, dtype: str | None) -> tuple[str, list[str], list[GridPoint], bool]:
    """The merges ``what`` asks for: the base, the fine-tuned models, the merges (grid points) and whether
    it is a single merge (no list anywhere, one configuration). ``grid_mode``, ``dtype``: ``merge``'s
    ``--grid`` and ``--dtype``."""
    base: str | None = what.base
    finetuned: Sequence[str] = what.finetuned
    config_path = what.config_path
    method = what.method
    preset = what.preset
    density = what.density
    gamma = what.gamma
    epsilon = what.epsilon
    rescale = what.rescale
    rescale_rule = what.rescale_rule
    seed = what.seed
    sign_from = what.sign_from
    lam = what.lam
    scope = what.scope
    trim = what.trim
    zero_sign = what.zero_sign
    normalize = what.normalize
    weights = what.weights

    # Options that may span a grid: a list each (one value: no grid along it; None: not given).
    axes: dict[str, list[Any] | None] = {
        "method": _words(method, "--method", list(METHODS)),
        "density": _grid_numbers(density, "--density"),
        "gamma": _grid_numbers(gamma, "--gamma"),
        "epsilon": _grid_numbers(epsilon, "--epsilon"),
        "lam": _grid_floats(lam, "--lambda"),
        "weights": [tuple(_split_numbers(w)) for w in weights] or None,  # (checked by MergeOptions)
        "scope": _words(scope, "--scope", [m.value for m in Scope]),
        "seed": _grid_seeds(seed),
    }
    # (the flags a configuration leaves to the command line; ``None``: the configuration's or preset's)
    rules = {
        "trim": trim,
        "zero_sign": zero_sign,
        "out_dtype": dtype,
        "rescale_rule": rescale_rule,
        "sign_from": sign_from,
    }
    points: list[GridPoint] = []
    if config_path is not None:
        flags = {
            "FINETUNED": finetuned,
            "--base": base,
            "--method": method,
            "--density": density,
            "--gamma": gamma,
            "--epsilon": epsilon,
            "--rescale": rescale,
            "--lambda": lam,
            "--normalize": normalize,
            "--weights": weights,
        }
        clash = [name for name, value in flags.items() if value not in (None, ())]
        if clash:
            raise click.UsageError(f"--config names the models, the method and its parameters: drop {clash[0]}")
        configured = [configured_merge(c, _tensor_names) for c in load_configs(config_path)]
        first = configured[0]
        for other in configured[1:]:
            if (other.base, other.models) != (first.base, first.models):
                raise OocTiesError(
                    f"{config_path}: the configurations of a grid merge the same models onto the same base "
                    f"(the first merges {list(first.models)} onto {first.base}; another {list(other.models)} "
                    f"onto {other.base})"
                )
        base, finetuned = first.base, first.models
        grid_axes = {k: v for k, v in axes.items() if v is not None}  # (scope and seed only, by now)
        options_list = [c.options.with_(**rules) for c in configured]
        # every configuration crossed with the command line's lists, named together
        expanded = [
            (point.options, c.chat_template)
            for options, c in zip(options_list, configured, strict=True)
            for point in (expand_grid(options, grid_axes, grid_mode) if grid_axes else [GridPoint("", options)])
        ]
        names = name_points([options for options, _ in expanded])
        points = [GridPoint(n, o, t) for n, (o, t) in zip(names, expanded, strict=True)]
        single = len(configured) == 1 and not any(len(v) > 1 for v in grid_axes.values())
    else:
        if base is None or not finetuned:
            raise click.UsageError("give --base and the FINETUNED models, or --config merge.yml")
        single = all(v is None or len(v) == 1 for v in axes.values())
        grid_axes = {k: v for k, v in axes.items() if v is not None}
        common = {"rescale": rescale, "normalize": normalize, **rules}
        points = list(expand_grid(parse_preset(preset), grid_axes, grid_mode, common))
    if base is None:
        raise click.UsageError("give --base and the FINETUNED models, or --config merge.yml")
    return base, list(finetuned), points, single


def _words(text: str | None, flag: str, allowed: Sequence[str]) -> list[str] | None:
    """``--method`` and ``--scope``: one of ``allowed``, or a comma-separated list of them."""
    if text is None:
        return None
    words = [w.strip() for w in text.split(",")]
    for word in words:
        if word not in allowed:
            choices = ", ".join(f"'{a}'" for a in allowed)
            raise click.BadParameter(
                f"{word!r} is not one of {choices} (or a comma-separated list)", param_hint=f"'{flag}'"
            )
    return words


def _grid_numbers(text: str | None, flag: str) -> list[float | tuple[float, ...]] | None:
    """``--density`` and the like: comma-separated grid values, each one number or one per fine-tuned
    model joined by ``/`` (their range is ``MergeOptions``' to check)."""
    if text is None:
        return None
    values: list[float | tuple[float, ...]] = []
    for item in text.split(","):
        parts = [part.strip() for part in item.split("/")]
        if not all(is_number(part) for part in parts):
            message = f"{text!r} is not a number, numbers joined by '/' (one per model), or a comma-separated list"
            raise click.BadParameter(message, param_hint=f"'{flag}'")
        numbers = tuple(float(part) for part in parts)
        values.append(numbers[0] if len(numbers) == 1 else numbers)
    return values


def _grid_floats(text: str | None, flag: str) -> list[float] | None:
    if text is None:
        return None
    values = [part.strip() for part in text.split(",")]
    if not all(is_number(v) for v in values):
        raise click.BadParameter(
            f"{text!r} is not a number or a comma-separated list of numbers", param_hint=f"'{flag}'"
        )
    return [float(v) for v in values]


def _grid_seeds(text: str | None) -> list[int] | None:
    if text is None:
        return None
    values = [part.strip() for part in text.split(",")]
    if not all(v.isdigit() for v in values):
        raise click.BadParameter(
            f"{text!r} is not a non-negative integer or a comma-separated list of them", param_hint="'--seed'"
        )
    return [int(v) for v in values]


def _tensor_names(model: str) -> list[str]:
    """A model's tensor names, from its header (a configuration's values per tensor are resolved on them)."""
    source = open_source(model, model)
    try:
        return list(source.names)
    finally:
        source.close()


def _split_numbers(text: str) -> list[str]:
    return [part for part in text.replace(",", " ").split() if part]


def join_weights(argv: list[str]) -> list[str]:
    """Let ``--weights 1 0.5 0.5`` work: gather the numbers after ``--weights`` into one value."""
    out: list[str] = []
    i = 0
    while i < len(argv):
        out.append(argv[i])
        if argv[i] == "--weights":
            values = []
            while i + 1 < len(argv) and is_number(argv[i + 1]) and not Path(argv[i + 1]).exists():
                values.append(argv[i + 1])
                i += 1
            if values:
                out.append(",".join(values))
        i += 1
    return out


def is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True
