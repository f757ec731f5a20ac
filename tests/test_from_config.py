"""``ooc-ties merge --config merge.yml``: a mergekit configuration merged as mergekit would, and what is
not supported yet refused in one line naming the key."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from ooc_ties import PRESETS, MergeOptions, OptionError, merge
from ooc_ties.cli import main
from ooc_ties.from_config import configured_merge
from ooc_ties.io.checkpoint import Checkpoint
from ooc_ties.mergekit_yaml import parse_config
from ooc_ties.methods import TASK_ARITHMETIC, TIES
from ooc_ties.reference import reference_merge

Models = tuple[Path, list[Path]]


def _ties_yaml(base: Path, fts: list[Path]) -> str:
    """Shaped like mergekit's own examples/ties.yml: the base listed again without parameters, per-model
    weights and densities, top-level normalize, dtype."""
    return f"""
models:
  - model: {base}
  - model: {fts[0]}
    parameters:
      density: 0.5
      weight: 0.5
  - model: {fts[1]}
    parameters:
      density: 0.3
      weight: 0.7
merge_method: ties
base_model: {base}
parameters:
  normalize: true
dtype: bfloat16
"""


def _read(folder: Path) -> dict[str, bytes]:
    with Checkpoint(folder) as checkpoint:
        return {name: checkpoint.read(name).tobytes() for name in checkpoint.names}


def test_a_ties_config_merges_as_the_mergekit_preset(
    tiny_models: Models, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base, fts = tiny_models
    config = tmp_path / "ties.yml"
    config.write_text(_ties_yaml(base, fts))
    main(["merge", "-q", "--config", str(config), "-o", str(tmp_path / "from-config")])
    expected = PRESETS["mergekit"].with_(density=(0.5, 0.3), weights=(0.5, 0.7), out_dtype="bf16")
    merge(base, fts[:2], tmp_path / "from-flags", expected)
    assert _read(tmp_path / "from-config") == _read(tmp_path / "from-flags")
    recipe = json.loads((tmp_path / "from-config" / "ooc_ties_recipe.json").read_text())
    assert recipe["options"] == expected.to_json() and recipe["models"] == [str(fts[0]), str(fts[1])]


def test_a_task_arithmetic_config(tiny_models: Models, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    base, fts = tiny_models
    text = f"""
merge_method: task_arithmetic
base_model: {base}
models:
  - model: {fts[0]}
    parameters: {{weight: 1.0, density: 0.5}}
  - model: {fts[2]}
    parameters: {{weight: -0.5}}
parameters:
  lambda: 0.6
out_dtype: float32
"""
    configured = configured_merge(parse_config(text, "ta.yml"))
    assert configured.base == str(base) and configured.models == (str(fts[0]), str(fts[2]))
    options = configured.options
    assert options.method is TASK_ARITHMETIC and options.weights == (1.0, -0.5) and options.lam == 0.6
    assert options.density == (1.0,) and options.out_dtype is not None and options.out_dtype.code == "F32"
    assert "density has no effect on task_arithmetic" in caplog.text  # as mergekit, which ignores it


def test_defaults_are_mergekits(tiny_models: Models) -> None:
    """No density: mergekit keeps everything (its default density is 1, not the paper's 0.2)."""
    base, fts = tiny_models
    text = f"merge_method: ties\nbase_model: {base}\nmodels:\n  - model: {fts[0]}\n    parameters: {{weight: 1}}\n"
    options = configured_merge(parse_config(text, "m.yml")).options
    assert options.method is TIES and options.density == (1.0,) and options.normalize and options.lam == 1.0
    assert not options.trims


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        ("merge_method: ties", "merge_method: slerp", "merge_method 'slerp' is not supported yet"),
        (
            "  normalize: true",
            "  normalize: [true, false]",
            "parameters: normalize: a shared parameter must be the same for every tensor",
        ),
        ("      weight: 0.7\n", "", "weight"),  # a required parameter missing
    ],
)
def test_what_is_not_supported_is_refused_in_one_line(
    tiny_models: Models, tmp_path: Path, capsys: pytest.CaptureFixture[str], old: str, new: str, message: str
) -> None:
    base, fts = tiny_models
    text = _ties_yaml(base, fts)
    assert old in text
    config = tmp_path / "bad.yml"
    config.write_text(text.replace(old, new, 1))
    with pytest.raises(SystemExit) as exit_info:
        main(["merge", "--config", str(config), "-o", str(tmp_path / "out")])
    assert exit_info.value.code == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(config) in err[0] and message in err[0], err
    assert not (tmp_path / "out").exists()


def test_config_and_models_on_the_command_line_do_not_mix(
    tiny_models: Models, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base, fts = tiny_models
    config = tmp_path / "ties.yml"
    config.write_text(_ties_yaml(base, fts))
    for extra in ([str(fts[2])], ["--base", str(base)], ["--density", "0.2"], ["--method", "ties"]):
        with pytest.raises(SystemExit) as exit_info:
            main(["merge", "--config", str(config), *extra, "-o", str(tmp_path / "out")])
        assert exit_info.value.code == 2
        assert "--config names the models, the method and its parameters" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        main(["merge", "-o", str(tmp_path / "out")])
    assert exit_info.value.code == 2 and "give --base and the FINETUNED models, or --config" in capsys.readouterr().err
    with pytest.raises(OptionError, match="base_model is required"):
        configured_merge(parse_config(f"merge_method: ties\nmodels:\n  - model: {fts[0]}\n", "x.yml"))


@pytest.mark.parametrize(
    "options",
    [
        pytest.param(PRESETS["mergekit"].with_(density=(0.5, 0.2, 0.9), weights=(1.0, 0.5, 0.25)), id="ties"),
        pytest.param(
            PRESETS["mergekit"].with_(method="task_arithmetic", lam=0.4, out_dtype="f32"), id="task_arithmetic"
        ),
    ],
)
def test_the_config_written_beside_an_output_reproduces_it(
    tiny_models: Models, tmp_path: Path, options: MergeOptions
) -> None:
    base, fts = tiny_models
    first = merge(base, fts, tmp_path / "first", options).output
    assert first is not None
    written = first / "mergekit_config.yml"
    text = written.read_text()
    assert f"merge_method: {options.method.name}" in text and "dtype: float32" in text
    main(["merge", "-q", "--config", str(written), "-o", str(tmp_path / "again")])
    assert _read(tmp_path / "again") == _read(first)
    assert (tmp_path / "again" / "mergekit_config.yml").read_text() == text


@pytest.mark.parametrize(
    ("options", "block"),
    [
        (PRESETS["paper"], {"scope": "global", "trim": "threshold", "zero_sign": "majority"}),
        (
            MergeOptions(method="dare_ties", density=0.4, seed=9, rescale_rule="density"),
            {"seed": 9, "rescale_rule": "density", "scope": "global", "zero_sign": "majority"},
        ),
        (PRESETS["mergekit"], {}),
    ],
)
def test_every_merge_gets_a_config_that_reproduces_it(
    tiny_models: Models, tmp_path: Path, options: MergeOptions, block: dict[str, object]
) -> None:
    """What mergekit has no key for (the paper preset's whole-model thresholds, ties kept at the cut, the
    majority zero sign, a seed, the DARE paper's rescale) goes into the ooc_ties: block, which mergekit
    ignores; the file reproduces the merge byte for byte. A base's own mergekit_config.yml is never
    copied."""
    base, fts = tiny_models
    copy = tmp_path / "base"
    shutil.copytree(base, copy)
    (copy / "mergekit_config.yml").write_text("merge_method: linear\n")
    out = merge(copy, fts, tmp_path / "first", options).output
    assert out is not None
    written = parse_config((out / "mergekit_config.yml").read_text(), "written")
    assert written.merge_method == options.method.name
    assert dict(written.ooc_ties) == block
    main(["merge", "--config", str(out / "mergekit_config.yml"), "-o", str(tmp_path / "again"), "-q"])
    with Checkpoint(out) as first, Checkpoint(tmp_path / "again") as again:
        assert all(first.read(name).tobytes() == again.read(name).tobytes() for name in first.names)


def test_the_ooc_ties_block_is_checked_in_one_line(tiny_models: Models) -> None:
    base, fts = tiny_models
    head = f"merge_method: ties\nbase_model: {base}\nmodels:\n  - model: {fts[0]}\n    parameters: {{weight: 1}}\n"
    with pytest.raises(OptionError, match='ooc_ties: unknown key "threads"'):
        parse_config(head + "ooc_ties: {threads: 2}\n", "x.yml")
    with pytest.raises(OptionError, match=r'x\.yml: ooc_ties: scope "everything" is invalid'):
        configured_merge(parse_config(head + "ooc_ties: {scope: everything}\n", "x.yml"))


@pytest.mark.parametrize("method", ["ties", "dare_ties", "breadcrumbs_ties", "della_linear"])
def test_gradients_and_filters_give_tensors_their_own_values(tiny_models: Models, tmp_path: Path, method: str) -> None:
    """A weight gradient over the layers and a density filter list, resolved per tensor as mergekit does
    (t = i / (layers - 1) in layer i, 0 outside the layers; the first matching filter), then merged byte
    for byte as the in-RAM reference merges the same per-tensor values."""
    base, fts = tiny_models
    extra = {"breadcrumbs_ties": "\n      gamma: 0.05", "della_linear": "\n      epsilon: 0.1"}.get(method, "")
    text = f"""
merge_method: {method}
base_model: {base}
models:
  - model: {fts[0]}
    parameters:
      weight: [1.0, 0.2]
      density:
        - filter: mlp
          value: 0.3
        - value: 0.6{extra}
  - model: {fts[1]}
    parameters:
      weight: 0.5
      density: 0.5{extra}
"""
    config = tmp_path / "merge.yml"
    config.write_text(text)
    with Checkpoint(base) as checkpoint:
        names = list(checkpoint.names)
    configured = configured_merge(parse_config(text, str(config)), lambda _: names)
    options = configured.options
    layer0, layer1 = "model.layers.0.mlp.up_proj.weight", "model.layers.1.self_attn.q_proj.weight"
    assert options.for_tensor(layer0).weights == (1.0, 0.5) and options.for_tensor(layer0).density == (0.3, 0.5)
    assert options.for_tensor(layer1).weights == (0.2, 0.5) and options.for_tensor(layer1).density == (0.6, 0.5)
    assert options.for_tensor("lm_head.weight").weights == (1.0, 0.5)  # t = 0 after the layers, as mergekit
    main(["merge", "--config", str(config), "-o", str(tmp_path / "out"), "-q"])
    expected = reference_merge(base, [fts[0], fts[1]], options)
    with Checkpoint(tmp_path / "out") as out:
        for name in out.names:
            assert out.read(name).tobytes() == expected[name].tobytes(), name
    recipe = json.loads((tmp_path / "out" / "ooc_ties_recipe.json").read_text())
    assert recipe["options"]["per_tensor"][layer1]["weights"] == [0.2, 0.5]
    # the configuration written beside the output (filters naming each tensor) reproduces the merge
    main(["merge", "--config", str(tmp_path / "out" / "mergekit_config.yml"), "-o", str(tmp_path / "again"), "-q"])
    with Checkpoint(tmp_path / "out") as out, Checkpoint(tmp_path / "again") as again:
        assert all(out.read(name).tobytes() == again.read(name).tobytes() for name in out.names)


def test_values_per_tensor_need_the_tensor_names(tiny_models: Models) -> None:
    base, fts = tiny_models
    text = f"merge_method: ties\nbase_model: {base}\nmodels:\n  - model: {fts[0]}\n    parameters: {{weight: [0, 1]}}\n"
    with pytest.raises(OptionError, match="need the base model's tensor names"):
        configured_merge(parse_config(text, "g.yml"))


def test_a_chat_template_is_applied_as_mergekit_applies_it(tiny_models: Models, tmp_path: Path) -> None:
    """The template goes to chat_template.jinja, the tokenizer config loses its own, and the configuration
    written beside the output carries it too."""
    base, fts = tiny_models
    mine = tmp_path / "base"
    shutil.copytree(base, mine)
    (mine / "tokenizer_config.json").write_text(json.dumps({"model_max_length": 8, "chat_template": "old {{ x }}"}))
    template = "{% for m in messages %}{{ m.role }}: {{ m.content }}\n{% endfor %}"
    config = tmp_path / "merge.yml"
    config.write_text(
        f"merge_method: task_arithmetic\nbase_model: {mine}\nmodels:\n  - model: {fts[0]}\n"
        f"    parameters: {{weight: 0.5}}\nchat_template: {json.dumps(template)}\n"
    )
    main(["merge", "--config", str(config), "-o", str(tmp_path / "out"), "-q"])
    out = tmp_path / "out"
    assert (out / "chat_template.jinja").read_text() == template
    assert json.loads((out / "tokenizer_config.json").read_text()) == {"model_max_length": 8}
    assert json.loads((out / "ooc_ties_recipe.json").read_text())["chat_template"] == template
    written = parse_config((out / "mergekit_config.yml").read_text(), "written")
    assert written.chat_template == template


def test_a_chat_template_needs_a_tokenizer(
    tiny_models: Models, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base, fts = tiny_models
    config = tmp_path / "merge.yml"
    config.write_text(
        f"merge_method: task_arithmetic\nbase_model: {base}\nmodels:\n  - model: {fts[0]}\n"
        "    parameters: {weight: 1}\n"
        "chat_template: '{% for m in messages %}{{ m.content }}{% endfor %}'\n"
    )
    with pytest.raises(SystemExit) as exit_info:
        main(["merge", "--config", str(config), "-o", str(tmp_path / "out")])
    assert exit_info.value.code == 1 and not (tmp_path / "out").exists()
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(base) in err[0] and "has no tokenizer (tokenizer_config.json)" in err[0], err
