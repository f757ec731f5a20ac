"""Published mergekit configurations, as their authors wrote them (``tests/configs/published/*.yml``, each
opening with a ``# source:`` line): each one is taken as a merge, or refused in one line naming what is
not supported, as the target design says.

The target design: the methods linear, task_arithmetic, ties, dare_ties, dare_linear, breadcrumbs,
breadcrumbs_ties, della and della_linear; parameter values that are scalars, gradients or filter lists;
per-model parameters at the top level; int8_mask, normalize, rescale, lambda; dtype bfloat16, float16 or
float32; tokenizer_source: base. Refused: slices, modules, other methods, tokenizer_source union or a
model, a tokenizer block; and (unchanged) the base model listed again *with* parameters. The model names
are Hub IDs and paths as published: nothing is downloaded. Where the engine falls short of that design
today, the entry says so and expects today's one-line refusal.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from ooc_ties.errors import OptionError
from ooc_ties.from_config import configured_merge
from ooc_ties.mergekit_yaml.reader import load_config

PUBLISHED = Path(__file__).parent / "configs" / "published"
ACCEPTED = "accepted"

EXPECTED: dict[str, str] = {
    # file name: "accepted", or a substring of the one-line refusal
    "absa_della.yml": ACCEPTED,  # della, per-model epsilon, lambda
    "etheria_dare_ties_union.yml": "tokenizer_source",  # union
    "gemma_moon_dare_ties.yml": "tokenizer_source",  # a model's vocabulary (and chat_template: auto)
    "llama_polyglot_dare_ties.yml": ACCEPTED,  # top-level density/weight, tokenizer_source: base
    "lunaris_ties.yml": ACCEPTED,  # rescale: true, int8_mask, base listed again
    "mergekit_chipalign_tokenizer.yml": "tokenizer: a tokenizer block",  # tokenizer block (and nuslerp)
    "mergekit_gradient_slerp.yml": "slices",  # slices (and slerp)
    "mergekit_linear.yml": ACCEPTED,  # linear, no base_model
    "mergekit_ties.yml": ACCEPTED,  # gradients, a filter list, normalize, int8_mask
    "midnight_miqu_dare_linear.yml": ACCEPTED,  # dare_linear, weight only at the top level
    "nemomix_della_linear.yml": ACCEPTED,  # della_linear, top-level epsilon and lambda, tokenizer_source: base
    "psyfighter2_task_arithmetic.yml": ACCEPTED,  # task_arithmetic, base listed again
    "starcannon_ties.yml": "is the base model and has parameters",  # the base listed again with a weight
    "umbral_mind_breadcrumbs_ties.yml": ACCEPTED,  # breadcrumbs_ties, gamma, weight gradients
    "umbral_mind_dare_ties.yml": ACCEPTED,  # dare_ties, weight gradients, normalize: false
    "umbral_mind_slerp.yml": "merge_method 'slerp'",  # slerp over models, filter lists of t
}


LLAMA_NAMES = [
    "model.embed_tokens.weight",
    *(
        f"model.layers.{i}.{part}.weight"
        for i in range(32)
        for part in (
            "input_layernorm",
            "self_attn.q_proj",
            "self_attn.k_proj",
            "self_attn.v_proj",
            "self_attn.o_proj",
            "post_attention_layernorm",
            "mlp.gate_proj",
            "mlp.up_proj",
            "mlp.down_proj",
        )
    ),
    "model.norm.weight",
    "lm_head.weight",
]
"""The tensor names of a 32-layer Llama (Llama-3-8B, Mistral-7B): values per tensor are resolved on them."""


def _merged_model_count(path: Path) -> int:
    """The models listed under ``models``, without the base model listed again."""
    document = yaml.safe_load(path.read_text(encoding="utf-8"))
    base = document.get("base_model")
    return sum(1 for entry in document["models"] if entry["model"] != base)


def test_every_published_config_has_an_expectation() -> None:
    assert sorted(path.name for path in PUBLISHED.glob("*.yml")) == sorted(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_published_config(name: str) -> None:
    path = PUBLISHED / name
    assert path.read_text(encoding="utf-8").startswith("# source: ")
    expected = EXPECTED[name]
    try:
        result = configured_merge(load_config(path), lambda _: LLAMA_NAMES)
    except OptionError as error:
        message = str(error)
        assert "\n" not in message, f"the refusal is not one line: {message!r}"
        assert expected != ACCEPTED, f"refused, expected accepted: {message}"
        assert expected in message, f"refused, but not for {expected!r}: {message}"
        return
    assert expected == ACCEPTED, f"accepted, expected a refusal naming {expected!r}"
    assert len(result.models) == _merged_model_count(path)
