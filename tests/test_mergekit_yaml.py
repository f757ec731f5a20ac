"""mergekit YAML configurations: published ones parsed, resolved as mergekit resolves them, written back.

The expected values in ``EXPECTED`` were computed by mergekit 0.1.5 itself, not by ooc-ties: a script run
in a virtualenv with mergekit installed read ``PUBLISHED`` and ``CRAFTED`` from this file (with ``ast``),
built a tiny random Llama checkpoint (7 decoder layers, ``LlamaForCausalLM.save_pretrained``) at the
relative path of every model each configuration names, and ran mergekit's own planner on each
(``MergeConfiguration.model_validate``, ``get_architecture_info``, ``MergePlanner._plan``). For every tensor
in ``TENSORS`` it took the planned merge task's resolved ``parameters`` (shared) and ``input_parameters``
(per model, in the planner's model order, without the base model, whose task-arithmetic parameters
mergekit leaves empty) and printed them with ``repr``; the output is pasted below, each configuration's
values written once under ``"*"`` and, for a tensor whose values differ, only the values that differ.
mergekit computes the ``t`` of layer ``i`` as ``i / 6`` here and gives the embeddings, the final norm and
``lm_head`` ``t = 0``, which ``layer_t`` must reproduce for the values to match. mergekit is never
imported by these tests.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from ooc_ties.errors import OptionError
from ooc_ties.mergekit_yaml import (
    CHAT_TEMPLATE_FILE,
    MergekitConfig,
    ModelEntry,
    Rule,
    Setting,
    apply_chat_template,
    build_config,
    check,
    layer_t,
    load_config,
    parse_config,
    resolve,
    to_yaml,
)

# ---------------------------------------------------------------------------------------------------
# parameter specs as mergekit 0.1.5 declares them (merge_methods/registry.py, generalized_task_arithmetic.py,
# linear.py, slerp.py); parse() converts as its pydantic validators do in lax mode


_TRUE = {"1", "on", "t", "true", "y", "yes"}
_FALSE = {"0", "off", "f", "false", "n", "no"}


@dataclass(frozen=True, slots=True)
class Spec:
    """A test stand-in for the engine's parameter declaration, satisfying ``ParameterSpec``."""

    name: str
    """The parameter's key."""
    per_model: bool
    """Whether each model has its own value."""
    default: object
    """The default; ``None`` for required."""
    kind: type
    """``float`` or ``bool``."""

    def parse(self, value: object, where: str) -> object:
        if self.kind is bool:
            if isinstance(value, bool):
                return value
            if isinstance(value, (int, float)) and value in (0, 1):
                return bool(value)
            if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
                return value.strip().lower() in _TRUE
            raise OptionError(f"{where}: expected a boolean; got {value!r}")
        if isinstance(value, (bool, int, float)):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise OptionError(f"{where}: expected a number; got {value!r}")


def _gta(normalize: bool, rescale: bool, extra: tuple[Spec, ...] = ()) -> tuple[Spec, ...]:
    return (
        Spec("int8_mask", False, False, bool),
        Spec("normalize", False, normalize, bool),
        Spec("rescale", False, rescale, bool),
        Spec("lambda", False, 1.0, float),
        Spec("weight", True, None, float),
        Spec("density", True, 1.0, float),
        *extra,
    )


GAMMA = Spec("gamma", True, 0.01, float)
EPSILON = Spec("epsilon", True, 0.15, float)
METHODS: dict[str, tuple[Spec, ...]] = {
    "task_arithmetic": _gta(False, False),
    "ties": _gta(True, False),
    "dare_ties": _gta(False, True),
    "dare_linear": _gta(False, True),
    "breadcrumbs": _gta(False, False, (GAMMA,)),
    "breadcrumbs_ties": _gta(False, False, (GAMMA,)),
    "della": _gta(True, True, (EPSILON,)),
    "della_linear": _gta(False, True, (EPSILON,)),
    "linear": (Spec("weight", True, None, float), Spec("normalize", False, True, bool)),
    "slerp": (Spec("t", False, None, float),),
}


N_LAYERS = 7
TENSORS = (
    "model.embed_tokens.weight",
    "model.layers.0.input_layernorm.weight",
    "model.layers.1.mlp.down_proj.weight",
    "model.layers.3.self_attn.q_proj.weight",
    "model.layers.5.mlp.gate_proj.weight",
    "model.layers.6.self_attn.o_proj.weight",
    "model.norm.weight",
    "lm_head.weight",
)

# ---------------------------------------------------------------------------------------------------
# published configurations, as published (model-card text that lost its indentation when it was crawled
# has it restored; nothing else changed)

ABSA = "adriansterr/fine-tuning-for-absa, merging_configurations/german"  # commit 4098c8f, 2025-11-09
EGGS = "model card of Casual-Autopsy/L3-Deluxe-Scrambled-Eggs-On-Toast-8B (huggingface.co), section YAML Configs Used"
RASTOGI = "Ritvik Rastogi, 'Papers Explained Review 13: Model Merging' (Medium, 2025-04-28)"

PUBLISHED: dict[str, str] = {
    # arcee-ai/mergekit examples/ties.yml (commit e52a51b): gradients, a filter list with a fallback
    "mergekit-ties": """\
models:
  - model: psmathur/orca_mini_v3_13b
    parameters:
      density: [1, 0.7, 0.1] # density gradient
      weight: 1.0
  - model: garage-bAInd/Platypus2-13B
    parameters:
      density: 0.5
      weight: [0, 0.3, 0.7, 1] # weight gradient
  - model: WizardLM/WizardMath-13B-V1.0
    parameters:
      density: 0.33
      weight:
        - filter: mlp
          value: 0.5
        - value: 0
merge_method: ties
base_model: TheBloke/Llama-2-13B-fp16
parameters:
  normalize: true
  int8_mask: true
dtype: float16
""",
    # arcee-ai/mergekit examples/bio-merge.yml (commit 25377d8)
    "mergekit-bio-merge": """\
models:
  - model: mistralai/Mistral-7B-Instruct-v0.2
    parameters:
      density: 0.5
      weight: 0.5
  - model: BioMistral/BioMistral-7B
    parameters:
      density: 0.5
      weight: 0.5
merge_method: ties
base_model: mistralai/Mistral-7B-v0.1
parameters:
  normalize: false
  int8_mask: true
dtype: float16
""",
    # arcee-ai/mergekit examples/linear.yml (commit e52a51b)
    "mergekit-linear": """\
models:
  - model: psmathur/orca_mini_v3_13b
    parameters:
      weight: 1.0
  - model: WizardLM/WizardLM-13B-V1.2
    parameters:
      weight: 0.3
  - model: garage-bAInd/Platypus2-13B
    parameters:
      weight: 0.5
merge_method: linear
dtype: float16
""",
    # model card of mlabonne/Daredevil-7B (huggingface.co), as quoted in asgaardlab/hf-question-answer,
    # data/classifications/all_discussion_classification/run_1/12163_mlabonne@Daredevil-7B_2_result_gpt-3-5.md:
    # the base listed again without parameters
    "daredevil-7b": """\
models:
  - model: mistralai/Mistral-7B-v0.1
    # No parameters necessary for base model
  - model: samir-fama/SamirGPT-v1
    parameters:
      density: 0.53
      weight: 0.4
  - model: abacusai/Slerp-CM-mist-dpo
    parameters:
      density: 0.53
      weight: 0.3
  - model: EmbeddedLLM/Mistral-7B-Merge-14-v0.2
    parameters:
      density: 0.53
      weight: 0.3
merge_method: dare_ties
base_model: mistralai/Mistral-7B-v0.1
parameters:
  int8_mask: true
dtype: bfloat16
""",
    # EGGS, "Eggs-and-Bread-RP-pt.1" (also in QuantFactory/L3-Deluxe-Scrambled-Eggs-On-Toast-8B-GGUF's README):
    # dare_ties, weight gradients, the base listed again
    "eggs-rp-pt1": """\
models:
  - model: Sao10K/L3-8B-Stheno-v3.2
  - model: ChaoticNeutrals/Poppy_Porpoise-1.0-L3-8B
    parameters:
      density: 0.5
      weight: [0.33, 0.0825, 0.0825, 0.0825, 0.0825]
  - model: Nitral-AI/Hathor_Stable-v0.2-L3-8B
    parameters:
      density: 0.5
      weight: [0.0825, 0.33, 0.0825, 0.0825, 0.0825]
  - model: NeverSleep/Llama-3-Lumimaid-8B-v0.1-OAS
    parameters:
      density: 0.5
      weight: [0.0825, 0.0825, 0.33, 0.0825, 0.0825]
  - model: Hastagaras/Jamet-8B-L3-MK.V-Blackroot
    parameters:
      density: 0.5
      weight: [0.0825, 0.0825, 0.0825, 0.33, 0.0825]
  - model: openlynn/Llama-3-Soliloquy-8B-v2
    parameters:
      density: 0.5
      weight: [0.0825, 0.0825, 0.0825, 0.0825, 0.33]
merge_method: dare_ties
base_model: Sao10K/L3-8B-Stheno-v3.2
parameters:
  normalize: false
  int8_mask: true
dtype: bfloat16
""",
    # EGGS, "Eggs-and-Bread-RP-pt.2": breadcrumbs_ties with gamma, weight gradients, the base listed again
    "eggs-rp-pt2": """\
models:
  - model: Sao10K/L3-8B-Stheno-v3.2
  - model: ChaoticNeutrals/Poppy_Porpoise-1.0-L3-8B
    parameters:
      gamma: 0.01
      density: 0.9
      weight: [0.0825, 0.0825, 0.0825, 0.0825, 0.33]
  - model: Nitral-AI/Hathor_Stable-v0.2-L3-8B
    parameters:
      gamma: 0.01
      density: 0.9
      weight: [0.0825, 0.0825, 0.0825, 0.33, 0.0825]
  - model: NeverSleep/Llama-3-Lumimaid-8B-v0.1-OAS
    parameters:
      gamma: 0.01
      density: 0.9
      weight: [0.0825, 0.0825, 0.33, 0.0825, 0.0825]
  - model: Hastagaras/Jamet-8B-L3-MK.V-Blackroot
    parameters:
      gamma: 0.01
      density: 0.9
      weight: [0.0825, 0.33, 0.0825, 0.0825, 0.0825]
  - model: openlynn/Llama-3-Soliloquy-8B-v2
    parameters:
      gamma: 0.01
      density: 0.9
      weight: [0.33, 0.0825, 0.0825, 0.0825, 0.0825]
merge_method: breadcrumbs_ties
base_model: Sao10K/L3-8B-Stheno-v3.2
parameters:
  normalize: false
  int8_mask: true
dtype: bfloat16
""",
    # EGGS, "Egg-and-Bread-RP": a shared parameter with filters whose values are 13-point gradients
    "eggs-rp-slerp": """\
models:
  - model: Casual-Autopsy/Eggs-and-Bread-RP-pt.1
  - model: Casual-Autopsy/Eggs-and-Bread-RP-pt.2
merge_method: slerp
base_model: Casual-Autopsy/Eggs-and-Bread-RP-pt.1
parameters:
  t:
    - filter: self_attn
      value: [0.5, 0.3, 0.7, 0.5, 0.7, 0.3, 0.5, 0.3, 0.7, 0.5, 0.7, 0.3, 0.5]
    - filter: mlp
      value: [0.5, 0.7, 0.3, 0.5, 0.3, 0.7, 0.5, 0.7, 0.3, 0.5, 0.3, 0.7, 0.5]
    - value: 0.5
dtype: bfloat16
""",
    # ABSA/ties/ties_standard/mergekit_config.yml: local Windows paths with spaces
    "absa-ties": """\
models:
  - model: "D:/Uni/Masterarbeit Code/jakob_finetuning/finetuned_models/meta_llama_full_colab_remerge_2"
    parameters:
      weight: 1.0
      density: 1.0  
  - model: "D:/Huggingface/hub/models--VAGOsolutions--Llama-3.1-SauerkrautLM-8b-Instruct/snapshots/221e5f92f9dc5fedaf4556b1be6b20642638643c"
    parameters:
      weight: 1.0
      density: 1.0

base_model: "unsloth/Meta-Llama-3.1-8B-Instruct"

merge_method: ties
dtype: bfloat16

parameters:
  lambda: 1.0""",  # noqa: E501, W291
    # ABSA/dare/dare_linear/dare_linear_standard/mergekit_config.yml
    "absa-dare-linear": """\
models:
  - model: "D:/Uni/Masterarbeit Code/jakob_finetuning/finetuned_models/meta_llama_full_colab_remerge_2"
    parameters:
      weight: 1.0
      density: 1.0  
  - model: "D:/Huggingface/hub/models--VAGOsolutions--Llama-3.1-SauerkrautLM-8b-Instruct/snapshots/221e5f92f9dc5fedaf4556b1be6b20642638643c"
    parameters:
      weight: 1.0
      density: 1.0

base_model: "unsloth/Meta-Llama-3.1-8B-Instruct"

merge_method: dare_linear
dtype: bfloat16

parameters:
  lambda: 1.0
  rescale: false""",  # noqa: E501, W291
    # ABSA/della/della_1_08_07_08_02_01/mergekit_config.yml
    "absa-della": """\
models:
  - model: "D:/Uni/Masterarbeit Code/jakob_finetuning/finetuned_models/meta_llama_full_colab_remerge_2"
    parameters:
      weight: 1.0
      density: 0.7
      epsilon: 0.2
  - model: "D:/Huggingface/hub/models--VAGOsolutions--Llama-3.1-SauerkrautLM-8b-Instruct/snapshots/221e5f92f9dc5fedaf4556b1be6b20642638643c"
    parameters:
      weight: 0.8
      density: 0.8
      epsilon: 0.1

base_model: "unsloth/Meta-Llama-3.1-8B-Instruct"

merge_method: della
dtype: bfloat16

parameters:
  lambda: 1.0""",  # noqa: E501
    # ABSA/della/della_linear_1_08_1_06_0_03/mergekit_config.yml
    "absa-della-linear": """\
models:
  - model: "D:/Uni/Masterarbeit Code/jakob_finetuning/finetuned_models/meta_llama_full_colab_remerge_2"
    parameters:
      weight: 1.0
      density: 1.0
      epsilon: 0.0
  - model: "D:/Huggingface/hub/models--VAGOsolutions--Llama-3.1-SauerkrautLM-8b-Instruct/snapshots/221e5f92f9dc5fedaf4556b1be6b20642638643c"
    parameters:
      weight: 0.8
      density: 0.6
      epsilon: 0.3

base_model: "unsloth/Meta-Llama-3.1-8B-Instruct"

merge_method: della_linear
dtype: bfloat16

parameters:
  lambda: 1.0""",  # noqa: E501
    # ABSA/task_arithmetic/lambda_05/mergekit_config.yml
    "absa-task-arithmetic": """\
models:
  - model: "D:/Uni/Masterarbeit Code/jakob_finetuning/finetuned_models/meta_llama_full_colab_remerge_2"
    parameters:
      weight: 0.5  
  - model: "D:/Huggingface/hub/models--VAGOsolutions--Llama-3.1-SauerkrautLM-8b-Instruct/snapshots/221e5f92f9dc5fedaf4556b1be6b20642638643c"
    parameters:
      weight: 0.5  

base_model: "unsloth/Meta-Llama-3.1-8B-Instruct"

merge_method: task_arithmetic
dtype: bfloat16

parameters:
  lambda: 0.5""",  # noqa: E501, W291
    # RASTOGI, section Model Breadcrumbs: density and gamma for every model at the top level
    "rastogi-breadcrumbs": """\
models:
  - model: NousResearch/Hermes-3-Llama-3.1-8B
    parameters:
      weight: 0.3
  - model: deepseek-ai/DeepSeek-R1-Distill-Llama-8B
    parameters:
      weight: 0.7
merge_method: breadcrumbs
base_model: meta-llama/Llama-3.1-8B-Instruct
parameters:
  lambda: 0.5
  density: 0.9
  gamma: 0.01

dtype: float16
""",
    # RASTOGI, section DELLA: density and epsilon for every model at the top level
    "rastogi-della": """\
models:
  - model: NousResearch/Hermes-3-Llama-3.1-8B
    parameters:
      weight: 0.3
  - model: deepseek-ai/DeepSeek-R1-Distill-Llama-8B
    parameters:
      weight: 0.7
merge_method: della
base_model: meta-llama/Llama-3.1-8B-Instruct
parameters:
  lambda: 0.5
  density: 0.7
  epsilon: 0.01
dtype: float16
""",
    # model card of TareksGraveyard/Ethos-Alpha-LLaMa-70B (huggingface.co), without its last two lines
    # (tokenizer: / source: Sao10K/L3.3-70B-Euryale-v2.3; the whole card is in REFUSED): della_linear with
    # epsilon for every model at the top level, out_dtype
    "ethos-alpha-without-tokenizer": """\
models:
  - model: Doctor-Shotgun/L3.3-70B-Magnum-v4-SE
    parameters:
      weight: 0.20
      density: 0.7
  - model: Sao10K/70B-L3.3-mhnnn-x1
    parameters:
      weight: 0.20
      density: 0.7
  - model: Sao10K/70B-L3.3-Cirrus-x1
    parameters:
      weight: 0.20
      density: 0.7
  - model: EVA-UNIT-01/EVA-LLaMA-3.33-70B-v0.1
    parameters:
      weight: 0.20
      density: 0.7
  - model: Sao10K/L3.3-70B-Euryale-v2.3
    parameters:
      weight: 0.20
      density: 0.7
merge_method: della_linear
base_model: meta-llama/Llama-3.3-70B-Instruct
parameters:
  epsilon: 0.2
  lambda: 1.1
out_dtype: bfloat16
""",
}

# Configurations written for these tests, to pin down corners of mergekit's resolution on its own planner:
# a model's filter list that matches nothing falls through to the top level; "*" is a fallback; numeric
# strings (YAML reads 1e-2 as a string) are numbers for a float parameter and interpolate; booleans and
# 0/1 for a bool parameter select instead; a linear merge without base takes a top-level weight gradient.
CRAFTED: dict[str, str] = {
    "crafted-della": """\
merge_method: della
base_model: org/base
models:
  - model: org/a
    parameters:
      weight:
        - filter: mlp
          value: [0.9, 0.1]
      density: 0.4
  - model: org/b
    parameters:
      epsilon:
        - filter: self_attn
          value: 0.05
        - filter: "*"
          value: [1e-2, 0.2]
parameters:
  weight: 0.25
  density: [0.2, 0.8]
  epsilon: 0.3
  lambda: [1, 2]
  normalize: [0, 1]
  int8_mask: [true, false, true]
  rescale: false
""",
    "crafted-linear": """\
merge_method: linear
models:
  - model: org/a
  - model: org/b
    parameters:
      weight: [{filter: lm_head, value: 3}, {filter: embed, value: 2}]
parameters:
  weight: [1, 0.5, 0]
  normalize: false
""",
}

# Published configurations ooc-ties refuses, with what the one-line message must say.
REFUSED: dict[str, tuple[str, tuple[str, ...]]] = {
    # arcee-ai/mergekit examples/vlm-ties.yml (commit e9e19bf): the base listed again with parameters
    # (mergekit 0.1.5 ignores them for ties)
    "mergekit-vlm-ties": (
        """\
models:
  # - model: impactframes/Qwen2-VL-7B-Captioner
  - model: maxiw/Florence-2-ScreenQA-base
    parameters:
      density: [1, 0.7, 0.1] # density gradient
      weight: 1.0
  # - model: Qwen/Qwen2-VL-7B-Instruct
  - model: microsoft/Florence-2-base
    parameters:
      density: 0.5
      weight: [0, 0.3, 0.7, 1] # weight gradient
merge_method: ties
# base_model: Qwen/Qwen2-VL-7B-Instruct
base_model: microsoft/Florence-2-base
parameters:
  normalize: true
  int8_mask: true
dtype: float16""",
        ("models[1]", "microsoft/Florence-2-base", "base model", "density, weight"),
    ),
    # arcee-ai/mergekit examples/gradient-slerp.yml (commit e52a51b): slices
    "mergekit-gradient-slerp": (
        """\
slices:
  - sources:
      - model: psmathur/orca_mini_v3_13b
        layer_range: [0, 40]
      - model: garage-bAInd/Platypus2-13B
        layer_range: [0, 40]
# or, the equivalent models: syntax:
# models:
#   - model: psmathur/orca_mini_v3_13b
#   - model: garage-bAInd/Platypus2-13B
merge_method: slerp
base_model: psmathur/orca_mini_v3_13b
parameters:
  t:
    - filter: self_attn
      value: [0, 0.5, 0.3, 0.7, 1]
    - filter: mlp
      value: [1, 0.5, 0.7, 0.3, 0]
    - value: 0.5 # fallback for rest of tensors
dtype: float16
""",
        ("slices", "layer slices"),
    ),
    # model card of TareksGraveyard/Ethos-Alpha-LLaMa-70B (huggingface.co), tail: a tokenizer block
    "ethos-alpha": (
        PUBLISHED["ethos-alpha-without-tokenizer"] + "tokenizer:\n  source: Sao10K/L3.3-70B-Euryale-v2.3\n",
        ("tokenizer", "vocabulary"),
    ),
    # Naveenpoliasetty/Llama3-linear-merge-llms README.md: tokenizer_source: union
    "llama3-linear-union": (
        """\
models:
  - model: flammenai/Mahou-1.3-llama3-8B
    parameters:
      weight: 1.0
  - model: Danielbrdz/Barcenas-Llama3-8b-ORPO
    parameters:
      weight: 1.0
  - model: Weyaxi/Einstein-v6.1-Llama3-8B
    parameters:
      weight: 1.0
merge_method: linear
tokenizer_source: union
dtype: float16
""",
        ("tokenizer_source", "union"),
    ),
    # model card of HyperXR/SapientiaOcculta-12B (huggingface.co): della, the base listed with a weight
    "sapientia-occulta": (
        """\
models:
  - model: yamatazen/EsotericSage-12B
    parameters:
      weight: 1.0
  - model: DreadPoor/Famino-12B-Model_Stock
    parameters:
      weight: 1.0
      density: 0.6 # Retain top 60% of significant changes
      epsilon: 0.1 # Range of keep-probability (fine-grained control)
merge_method: della
base_model: yamatazen/EsotericSage-12B # Foundation for UGI/Logic
parameters:
  normalize: true
  lambda: 1.0
dtype: bfloat16
""",
        ("models[0]", "yamatazen/EsotericSage-12B", "base model", "weight"),
    ),
    # model card of 007ankit/della-linear-BioMistral-mistral-hindi (huggingface.co): a key mergekit ignores
    "della-linear-hindi": (
        """\
models:
  - model: BioMistral/BioMistral-7B
    parameters:
      density: 1 # Fraction of weights in differences from the base model to retain
      epsilon: 0.1 # Maximum change in drop probability based on magnitude (range: density ± epsilon)
      weight: 1
      lambda: 0.9
merge_method: della_linear
base_model: BioMistral/BioMistral-7B
parameters:
  density: 1 # Fraction of weights in differences from the base model to retain
  epsilon: 0.1 # Maximum change in drop probability (range: density ± epsilon, ensure 0 <= value <= 1)
  weight: 1
  lambda: 0.9
  normalize: true
  int8_mask: true
dtype: bfloat16
name: OdiaGenAI/mistral_hindi_7b_base_v1
""",
        ('unknown key "name"',),
    ),
}

# EXPECTED[config][tensor] = (shared values, {per-model parameter: its values over the models in order}),
# computed by mergekit 0.1.5 (see the module docstring). "*" holds the values of every tensor not listed;
# a listed tensor holds only the values in which it differs from "*" (see _expected)
EXPECTED: dict[str, dict[str, tuple[dict[str, object], dict[str, tuple[object, ...]]]]] = {
    "mergekit-ties": {
        "*": (
            {"int8_mask": True, "lambda": 1.0, "normalize": True, "rescale": False},
            {"density": (1.0, 0.5, 0.33), "weight": (1.0, 0.0, 0.0)},
        ),
        "model.layers.1.mlp.down_proj.weight": ({}, {"density": (0.9, 0.5, 0.33), "weight": (1.0, 0.15, 0.5)}),
        "model.layers.3.self_attn.q_proj.weight": ({}, {"density": (0.7, 0.5, 0.33), "weight": (1.0, 0.5, 0.0)}),
        "model.layers.5.mlp.gate_proj.weight": (
            {},
            {"density": (0.29999999999999993, 0.5, 0.33), "weight": (1.0, 0.85, 0.5)},
        ),
        "model.layers.6.self_attn.o_proj.weight": ({}, {"density": (0.1, 0.5, 0.33), "weight": (1.0, 1.0, 0.0)}),
    },
    "mergekit-bio-merge": {
        "*": (
            {"int8_mask": True, "lambda": 1.0, "normalize": False, "rescale": False},
            {"density": (0.5, 0.5), "weight": (0.5, 0.5)},
        ),
    },
    "mergekit-linear": {
        "*": ({"normalize": True}, {"weight": (1.0, 0.3, 0.5)}),
    },
    "daredevil-7b": {
        "*": (
            {"int8_mask": True, "lambda": 1.0, "normalize": False, "rescale": True},
            {"density": (0.53, 0.53, 0.53), "weight": (0.4, 0.3, 0.3)},
        ),
    },
    "eggs-rp-pt1": {
        "*": (
            {"int8_mask": True, "lambda": 1.0, "normalize": False, "rescale": True},
            {"density": (0.5, 0.5, 0.5, 0.5, 0.5), "weight": (0.33, 0.0825, 0.0825, 0.0825, 0.0825)},
        ),
        "model.layers.1.mlp.down_proj.weight": ({}, {"weight": (0.165, 0.2475, 0.0825, 0.0825, 0.0825)}),
        "model.layers.3.self_attn.q_proj.weight": ({}, {"weight": (0.0825, 0.0825, 0.33, 0.0825, 0.0825)}),
        "model.layers.5.mlp.gate_proj.weight": ({}, {"weight": (0.0825, 0.0825, 0.0825, 0.2475, 0.16500000000000004)}),
        "model.layers.6.self_attn.o_proj.weight": ({}, {"weight": (0.0825, 0.0825, 0.0825, 0.0825, 0.33)}),
    },
    "eggs-rp-pt2": {
        "*": (
            {"int8_mask": True, "lambda": 1.0, "normalize": False, "rescale": False},
            {
                "density": (0.9, 0.9, 0.9, 0.9, 0.9),
                "gamma": (0.01, 0.01, 0.01, 0.01, 0.01),
                "weight": (0.0825, 0.0825, 0.0825, 0.0825, 0.33),
            },
        ),
        "model.layers.1.mlp.down_proj.weight": ({}, {"weight": (0.0825, 0.0825, 0.0825, 0.2475, 0.165)}),
        "model.layers.3.self_attn.q_proj.weight": ({}, {"weight": (0.0825, 0.0825, 0.33, 0.0825, 0.0825)}),
        "model.layers.5.mlp.gate_proj.weight": ({}, {"weight": (0.16500000000000004, 0.2475, 0.0825, 0.0825, 0.0825)}),
        "model.layers.6.self_attn.o_proj.weight": ({}, {"weight": (0.33, 0.0825, 0.0825, 0.0825, 0.0825)}),
    },
    "eggs-rp-slerp": {
        "*": ({"t": 0.5}, {}),
        "model.layers.1.mlp.down_proj.weight": ({"t": 0.3}, {}),
        "model.layers.5.mlp.gate_proj.weight": ({"t": 0.3}, {}),
    },
    "absa-ties": {
        "*": (
            {"int8_mask": False, "lambda": 1.0, "normalize": True, "rescale": False},
            {"density": (1.0, 1.0), "weight": (1.0, 1.0)},
        ),
    },
    "absa-dare-linear": {
        "*": (
            {"int8_mask": False, "lambda": 1.0, "normalize": False, "rescale": False},
            {"density": (1.0, 1.0), "weight": (1.0, 1.0)},
        ),
    },
    "absa-della": {
        "*": (
            {"int8_mask": False, "lambda": 1.0, "normalize": True, "rescale": True},
            {"density": (0.7, 0.8), "epsilon": (0.2, 0.1), "weight": (1.0, 0.8)},
        ),
    },
    "absa-della-linear": {
        "*": (
            {"int8_mask": False, "lambda": 1.0, "normalize": False, "rescale": True},
            {"density": (1.0, 0.6), "epsilon": (0.0, 0.3), "weight": (1.0, 0.8)},
        ),
    },
    "absa-task-arithmetic": {
        "*": (
            {"int8_mask": False, "lambda": 0.5, "normalize": False, "rescale": False},
            {"density": (1.0, 1.0), "weight": (0.5, 0.5)},
        ),
    },
    "rastogi-breadcrumbs": {
        "*": (
            {"int8_mask": False, "lambda": 0.5, "normalize": False, "rescale": False},
            {"density": (0.9, 0.9), "gamma": (0.01, 0.01), "weight": (0.3, 0.7)},
        ),
    },
    "rastogi-della": {
        "*": (
            {"int8_mask": False, "lambda": 0.5, "normalize": True, "rescale": True},
            {"density": (0.7, 0.7), "epsilon": (0.01, 0.01), "weight": (0.3, 0.7)},
        ),
    },
    "ethos-alpha-without-tokenizer": {
        "*": (
            {"int8_mask": False, "lambda": 1.1, "normalize": False, "rescale": True},
            {
                "density": (0.7, 0.7, 0.7, 0.7, 0.7),
                "epsilon": (0.2, 0.2, 0.2, 0.2, 0.2),
                "weight": (0.2, 0.2, 0.2, 0.2, 0.2),
            },
        ),
    },
    "crafted-della": {
        "*": (
            {"int8_mask": True, "lambda": 1.0, "normalize": False, "rescale": False},
            {"density": (0.4, 0.2), "epsilon": (0.3, 0.01), "weight": (0.25, 0.25)},
        ),
        "model.layers.1.mlp.down_proj.weight": (
            {"lambda": 1.1666666666666667},
            {
                "density": (0.4, 0.30000000000000004),
                "epsilon": (0.3, 0.041666666666666664),
                "weight": (0.7666666666666667, 0.25),
            },
        ),
        "model.layers.3.self_attn.q_proj.weight": (
            {"int8_mask": False, "lambda": 1.5},
            {"density": (0.4, 0.5), "epsilon": (0.3, 0.05)},
        ),
        "model.layers.5.mlp.gate_proj.weight": (
            {"int8_mask": False, "lambda": 1.8333333333333335},
            {
                "density": (0.4, 0.7000000000000001),
                "epsilon": (0.3, 0.16833333333333336),
                "weight": (0.2333333333333333, 0.25),
            },
        ),
        "model.layers.6.self_attn.o_proj.weight": (
            {"lambda": 2.0, "normalize": True},
            {"density": (0.4, 0.8), "epsilon": (0.3, 0.05)},
        ),
    },
    "crafted-linear": {
        "*": ({"normalize": False}, {"weight": (1.0, 1.0)}),
        "model.embed_tokens.weight": ({}, {"weight": (1.0, 2.0)}),
        "model.layers.1.mlp.down_proj.weight": ({}, {"weight": (0.8333333333333334, 0.8333333333333334)}),
        "model.layers.3.self_attn.q_proj.weight": ({}, {"weight": (0.5, 0.5)}),
        "model.layers.5.mlp.gate_proj.weight": ({}, {"weight": (0.16666666666666663, 0.16666666666666663)}),
        "model.layers.6.self_attn.o_proj.weight": ({}, {"weight": (0.0, 0.0)}),
        "lm_head.weight": ({}, {"weight": (1.0, 3.0)}),
    },
}


def _where(name: str) -> str:
    return f"{name}.yml"


def _config(name: str) -> MergekitConfig:
    return parse_config({**PUBLISHED, **CRAFTED}[name], _where(name))


def _columns(per_model: list[dict[str, object]]) -> dict[str, tuple[object, ...]]:
    names = sorted({key for values in per_model for key in values})
    return {key: tuple(values[key] for values in per_model) for key in names}


def _expected(name: str, tensor: str) -> list[dict[str, object]]:
    """mergekit's shared and per-model values for ``tensor`` in configuration ``name``: ``EXPECTED[name]["*"]``
    updated with what ``EXPECTED[name]`` lists for the tensor."""
    assert set(EXPECTED[name]) <= {"*", *TENSORS}, "EXPECTED lists a tensor that is not in TENSORS"
    shared, per_model = EXPECTED[name]["*"]
    own_shared, own_per_model = EXPECTED[name].get(tensor, ({}, {}))
    assert set(own_shared) <= set(shared) and set(own_per_model) <= set(per_model)
    return [{**shared, **own_shared}, {**per_model, **own_per_model}]


def _exact(value: object) -> str:
    """``value`` spelled so that 1, 1.0 and True differ and floats keep every bit."""
    return json.dumps(value, sort_keys=True)


def _assert_round_trips(config: MergekitConfig) -> str:
    """``to_yaml(config)``, checked to read back equal and to be written again the same (so that each value
    keeps its type: 1, 1.0 and true)."""
    text = to_yaml(config)
    again = parse_config(text, "recipe.yml")
    assert again == config
    assert to_yaml(again) == text
    return text


def _one_line_option_error(text: str, where: str = "merge.yml") -> str:
    with pytest.raises(OptionError) as caught:
        parse_config(text, where)
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(f"{where}: ")
    return message


# ---------------------------------------------------------------------------------------------------
# published configurations


@pytest.mark.parametrize("name", sorted({**PUBLISHED, **CRAFTED}))
def test_published_config_round_trips(name: str) -> None:
    config = _config(name)
    assert config.merge_method in METHODS
    _assert_round_trips(config)


@pytest.mark.parametrize(
    ("name", "tensor"),
    [(name, tensor) for name in sorted(EXPECTED) for tensor in TENSORS],
)
def test_resolution_matches_mergekit(name: str, tensor: str) -> None:
    config = _config(name)
    shared, per_model = resolve(config, METHODS[config.merge_method], tensor, layer_t(tensor, N_LAYERS))
    assert _exact([shared, _columns(per_model)]) == _exact(_expected(name, tensor))
    assert len(per_model) == len(config.models)


def test_every_method_is_covered_by_a_published_config() -> None:
    methods = {parse_config(text, "x").merge_method for text in PUBLISHED.values()}
    assert methods == set(METHODS)
    assert len(PUBLISHED) + len(REFUSED) >= 12


def test_the_base_listed_again_without_parameters_is_dropped() -> None:
    config = _config("daredevil-7b")
    assert config.base_model == "mistralai/Mistral-7B-v0.1"
    assert config.model_names == (
        "samir-fama/SamirGPT-v1",
        "abacusai/Slerp-CM-mist-dpo",
        "EmbeddedLLM/Mistral-7B-Merge-14-v0.2",
    )
    assert "Sao10K/L3-8B-Stheno-v3.2" not in _config("eggs-rp-pt2").model_names


def test_published_values_are_kept_as_written() -> None:
    config = _config("mergekit-ties")
    assert config.dtype == "float16"
    assert config.parameters == {"normalize": Setting.of(True), "int8_mask": Setting.of(True)}
    wizard = config.models[2]
    assert wizard.model == "WizardLM/WizardMath-13B-V1.0"
    assert wizard.parameters["weight"] == Setting((Rule(0.5, "mlp"), Rule(0)))
    assert config.models[0].parameters["density"] == Setting.of((1, 0.7, 0.1))
    assert config.uses_t
    assert not _config("mergekit-bio-merge").uses_t
    absa = _config("absa-ties")
    assert (
        absa.models[0].model
        == "D:/Uni/Masterarbeit Code/jakob_finetuning/finetuned_models/meta_llama_full_colab_remerge_2"
    )
    assert _config("ethos-alpha-without-tokenizer").out_dtype == "bfloat16"


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_published_config_refused(name: str) -> None:
    text, fragments = REFUSED[name]
    message = _one_line_option_error(text, _where(name))
    for fragment in fragments:
        assert fragment in message


# ---------------------------------------------------------------------------------------------------
# refusals: one line naming the file, the key and the model

GOOD = """\
merge_method: ties
base_model: org/base
models:
  - model: org/a
    parameters: {weight: 0.5, density: 0.5}
  - model: org/b
    parameters: {weight: 0.5, density: 0.5}
"""


def _good_with_first_parameters(parameters: str) -> str:
    """``GOOD`` with the first model's (org/a's) parameters written ``{parameters}`` instead."""
    first = "{weight: 0.5, density: 0.5}\n  - model: org/b"
    assert GOOD.count(first) == 1
    return GOOD.replace(first, f"{{{parameters}}}\n  - model: org/b")


@pytest.mark.parametrize(
    ("text", "fragments"),
    [
        (GOOD + "slices: []\n", ("slices",)),
        (GOOD + "modules: {}\n", ("modules",)),
        (GOOD + "tokenizer:\n  source: base\n", ("tokenizer", "tokenizer_source: base")),
        (GOOD + "tokenizer_source: union\n", ("tokenizer_source", "union")),
        (GOOD + "tokenizer_source: org/a\n", ("tokenizer_source", "org/a")),
        (GOOD + "name: my-merge\n", ('unknown key "name"', "merge_method")),
        (GOOD + "dtype: fp16\n", ("dtype", "'fp16'", '"bfloat16", "float16", "float32"')),
        (GOOD + "out_dtype: bf16\n", ("out_dtype", "'bf16'")),
        (GOOD + "dtype: float64\n", ("dtype", "float64", "does not write")),
        (GOOD + "chat_template: chatml\n", ("chat_template", '"chatml"', "built-in")),
        (GOOD + "chat_template: auto\n", ("chat_template", '"auto"')),
        (GOOD + "chat_template: hello there\n", ("chat_template", "Jinja")),
        (GOOD + "chat_template: 7\n", ("chat_template", "7")),
        (GOOD.replace("merge_method: ties", "merge_method: 7"), ("merge_method", "7")),
        (GOOD.replace("merge_method: ties\n", ""), ("merge_method", "None")),
        (GOOD.replace("base_model: org/base", "base_model: org/base+org/lora"), ("base_model", "LoRA")),
        (GOOD.replace("model: org/a", "model: org/a+org/lora"), ("models[0]", "org/a+org/lora", "LoRA")),
        (GOOD.replace("model: org/a", "model: org/a@v1@v2"), ("models[0]", "@")),
        (GOOD.replace("model: org/a", "model: {model: {path: org/a}}"), ("models[0].model", "string")),
        (GOOD.replace("  - model: org/a\n", "  - org/a\n  - stray: 1\n"), ("models[0]", "'org/a'")),
        (GOOD.replace("model: org/a", "modle: org/a"), ("models[0]", "no model", "modle")),
        (
            GOOD.replace("    parameters: {weight: 0.5, density: 0.5}\n  - model: org/b", "  - model: org/a"),
            ("models[1]", "org/a", "twice"),
        ),
        (
            GOOD.replace("model: org/b\n", "model: org/b\n    layer_range: [0, 32]\n"),
            ("models[1] (org/b)", "layer_range"),
        ),
        (_good_with_first_parameters("weight: 0.5, density: []"), ("models[0] (org/a)", "density")),
        (_good_with_first_parameters("weight: null"), ("models[0] (org/a)", "weight", "None")),
        (_good_with_first_parameters("weight: [[1, 2]]"), ("models[0] (org/a)", "weight")),
        (_good_with_first_parameters("weight: 2024-01-01"), ("models[0] (org/a)", "weight")),
        (
            GOOD + "parameters:\n  weight:\n    - pattern: mlp\n      value: 1\n",
            ("parameters.weight[0]", '"pattern"', "every tensor"),
        ),
        (GOOD + "parameters:\n  weight:\n    - filter: 3\n      value: 1\n", ("parameters.weight[0]", "filter")),
        (GOOD + "parameters:\n  weight:\n    - filter: mlp\n", ("parameters.weight[0]", "value")),
        (GOOD + "parameters:\n  weight: [0.5, {filter: mlp, value: 1}]\n", ("parameters.weight",)),
        (GOOD + "parameters: [weight]\n", ("parameters", "mapping")),
        (GOOD + "models: []\n", ("line", "appears twice")),
        ("merge_method: ties\nmodels: []\n", ("models", "missing or empty")),
        ("merge_method: ties\nmodels: org/a\n", ("models", "list")),
        ("merge_method: ties\nbase_model: org/base\nmodels:\n  - model: org/base\n", ("only the base model",)),
        ("", ("empty file",)),
        ("- merge_method: ties\n", ("mapping",)),
        ("merge_method: ties\nmodels:\n  - model: org/a\n   parameters: {}\n", ("not valid YAML", "line 4")),
        ("merge_method: [ties\n", ("not valid YAML", "line 2")),
        ("merge_method: ties\n\tmodels: []\n", ("not valid YAML", "line 2")),
        ("merge_method: ties\n---\nmerge_method: ties\n", ("not valid YAML", "line 2", "single document")),
    ],
)
def test_refusal_is_one_line_naming_key_and_model(text: str, fragments: tuple[str, ...]) -> None:
    message = _one_line_option_error(text)
    for fragment in fragments:
        assert fragment in message, message


def test_a_long_value_is_cut_short_in_the_message() -> None:
    message = _one_line_option_error(GOOD + "chat_template: " + "x" * 5000 + "\n")
    assert len(message) < 300 and message.endswith("...")


def test_the_base_listed_again_with_parameters_is_refused() -> None:
    text = GOOD + "  - model: org/base\n    parameters:\n      weight: 1.0\n"
    message = _one_line_option_error(text)
    assert "models[2] (org/base)" in message
    assert "base model" in message and "weight" in message
    assert "linear" in message  # says what mergekit would do with it instead


def test_dtype_names_are_mergekits() -> None:
    # mergekit 0.1.5 common.dtype_from_name: bfloat16, float16, float32 (float64, int64), with an optional
    # "torch." prefix; fp16, bf16 and fp32 are not names it knows
    for name in ("bfloat16", "float16", "float32"):
        assert parse_config(GOOD + f"dtype: {name}\nout_dtype: torch.{name}\n", "x").out_dtype == name
    message = _one_line_option_error(GOOD + "dtype: fp32\n")
    assert '(expected one of: "bfloat16", "float16", "float32")' in message


def test_merge_method_is_kept_as_a_string() -> None:
    assert parse_config(GOOD.replace("ties", "karcher"), "x").merge_method == "karcher"


# ---------------------------------------------------------------------------------------------------
# check and resolve


NO_WEIGHT = "merge_method: task_arithmetic\nbase_model: org/base\nmodels:\n  - model: org/a\n  - model: org/b\n"
MLP_WEIGHT_ONLY = (
    "merge_method: linear\nmodels:\n  - model: org/a\n    parameters:\n      weight: [{filter: mlp, value: 1}]\n"
)


@pytest.mark.parametrize(
    ("text", "method", "tensor", "by_check", "message"),
    [
        pytest.param(
            GOOD + "parameters:\n  t: 0.5\n",
            "ties",
            "lm_head.weight",
            True,
            'm.yml: parameters.t: ties takes no parameter "t" '
            "(it takes: density, int8_mask, lambda, normalize, rescale, weight)",
            id="unknown-parameter",
        ),
        pytest.param(
            _good_with_first_parameters("weight: 0.5, gamma: 0.1"),
            "ties",
            "lm_head.weight",
            True,
            'm.yml: model org/a: parameters.gamma: ties takes no parameter "gamma" '
            "(it takes: density, int8_mask, lambda, normalize, rescale, weight)",
            id="unknown-parameter-of-a-model",
        ),
        pytest.param(
            _good_with_first_parameters("weight: 0.5, lambda: 2"),
            "ties",
            "lm_head.weight",
            True,
            "m.yml: model org/a: parameters.lambda: lambda is shared by all models; "
            "set it under the top-level parameters",
            id="shared-parameter-under-a-model",
        ),
        pytest.param(
            GOOD + "parameters:\n  normalize: [true, maybe]\n",
            "ties",
            "lm_head.weight",
            True,
            "m.yml: parameters.normalize: expected a boolean; got 'maybe'",
            id="values-validated-before-any-tensor",
        ),
        pytest.param(
            NO_WEIGHT,
            "task_arithmetic",
            "model.layers.0.mlp.up_proj.weight",
            True,
            "m.yml: model org/a: weight is required by task_arithmetic "
            "(set it under the model's parameters or the top-level parameters)",
            id="missing-required-weight-names-the-model",
        ),
        pytest.param(
            MLP_WEIGHT_ONLY,
            "linear",
            "model.norm.weight",
            False,  # the filter matches other tensors: only this one has no weight
            "m.yml: model org/a: weight is required but no setting matches tensor model.norm.weight "
            "(add an entry without filter)",
            id="filter-matches-no-tensor-for-a-required-parameter",
        ),
    ],
)
def test_check_and_resolve_refuse_in_one_exact_line(
    text: str, method: str, tensor: str, by_check: bool, message: str
) -> None:
    config = parse_config(text, "m.yml")
    if by_check:
        with pytest.raises(OptionError) as caught:
            check(config, METHODS[method])
        assert str(caught.value) == message
    else:
        check(config, METHODS[method])
    with pytest.raises(OptionError) as caught:
        resolve(config, METHODS[method], tensor, 0.0)
    assert str(caught.value) == message


def test_a_parameter_is_accepted_by_a_method_that_takes_it() -> None:
    config = parse_config(_good_with_first_parameters("weight: 0.5, gamma: 0.1"), "m.yml")
    check(config, METHODS["breadcrumbs"])  # gamma is a breadcrumbs parameter


def test_a_required_weight_set_at_the_top_level_serves_every_model() -> None:
    top = parse_config(NO_WEIGHT + "parameters:\n  weight: 0.5\n", "m.yml")
    assert resolve(top, METHODS["task_arithmetic"], "lm_head.weight", 0.0)[1] == [
        {"weight": 0.5, "density": 1.0},
        {"weight": 0.5, "density": 1.0},
    ]


def test_a_filter_list_serves_the_tensors_it_matches() -> None:
    config = parse_config(MLP_WEIGHT_ONLY, "m.yml")
    assert resolve(config, METHODS["linear"], "model.layers.0.mlp.up_proj.weight", 0.0)[1] == [{"weight": 1.0}]


def test_defaults_and_precedence() -> None:
    config = parse_config(GOOD + "parameters:\n  density: 0.9\n  lambda: 2\n", "m.yml")
    shared, per_model = resolve(config, METHODS["della"], "model.layers.0.mlp.up_proj.weight", 0.0)
    assert shared == {"int8_mask": False, "normalize": True, "rescale": True, "lambda": 2.0}
    assert per_model == [
        {"weight": 0.5, "density": 0.5, "epsilon": 0.15},
        {"weight": 0.5, "density": 0.5, "epsilon": 0.15},
    ]


# ---------------------------------------------------------------------------------------------------
# settings


def test_filters_first_match_wins_and_star_is_a_fallback() -> None:
    setting = Setting((Rule(1, "self_attn"), Rule(2, "attn"), Rule(3, "*"), Rule(4)))
    assert setting.at("model.layers.0.self_attn.q_proj.weight", 0.0) == 1
    assert setting.at("model.layers.0.cross_attn.q_proj.weight", 0.0) == 2
    assert setting.at("model.norm.weight", 0.0) == 3
    assert Setting((Rule(1, "mlp"),)).at("model.norm.weight", 0.0) is None
    assert Setting((Rule(1, ""),)).at("", 0.0) is None  # as mergekit: an empty name matches no filter
    assert Setting((Rule(1, ""),)).at("lm_head.weight", 0.0) == 1


def test_gradient_known_values() -> None:
    # mergekit's ties example: density [1, 0.7, 0.1] at layer 5 of 7 (t = 5/6) gives 0.29999999999999993
    assert Setting.of((1, 0.7, 0.1)).at("x", 5 / 6) == 0.29999999999999993
    assert Setting.of((0, 0.3, 0.7, 1)).at("x", 0.5) == 0.5
    assert Setting.of((0.5,)).at("x", 0.7) == 0.5
    with pytest.raises(ValueError, match="t must be in"):
        Setting.of((0, 1)).at("x", 1.5)


def test_gradient_selects_when_validated_values_are_not_all_numbers() -> None:
    to_bool = METHODS["ties"][0]
    assert to_bool.name == "int8_mask"

    def parse(value: object) -> object:
        return to_bool.parse(value, "x")

    gradient = Setting.of((0, 1))
    assert gradient.at("x", 0.5) == 0.5  # without a parser YAML's types decide: numbers interpolate
    assert gradient.at("x", 0.5, parse) is False  # validated to booleans: values[int(0.5 * 1)]
    assert gradient.at("x", 1.0, parse) is True
    numbers_as_text = Setting.of(("1e-2", 0.2))  # YAML reads 1e-2 as a string
    assert numbers_as_text.at("x", 0.5) == "1e-2"
    to_float = METHODS["ties"][3]
    assert to_float.name == "lambda"
    assert numbers_as_text.at("x", 0.5, lambda v: to_float.parse(v, "x")) == 0.5 * 0.01 + 0.5 * 0.2


finite = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False)


@settings(max_examples=300, deadline=None)
@given(values=st.lists(finite, min_size=1, max_size=16), t=st.floats(min_value=0.0, max_value=1.0))
def test_gradient_is_piecewise_linear_between_evenly_spaced_anchors(values: list[float], t: float) -> None:
    got = Setting.of(tuple(values)).at("x", t)
    assert got is not None
    anchors = np.linspace(0.0, 1.0, len(values)) if len(values) > 1 else np.array([0.0])
    want = float(np.interp(t, anchors, values))
    assert math.isclose(got, want, rel_tol=1e-9, abs_tol=1e-6 * (1 + max(map(abs, values))))
    assert min(values) - 1e-6 <= got <= max(values) + 1e-6


@settings(max_examples=200, deadline=None)
@given(values=st.lists(st.booleans() | st.text(max_size=3), min_size=1, max_size=9), t=st.floats(0.0, 1.0))
def test_gradient_of_labels_selects(values: list[bool | str], t: float) -> None:
    assert Setting.of(tuple(values)).at("x", t) == values[int(t * (len(values) - 1))]


# ---------------------------------------------------------------------------------------------------
# layer_t


@pytest.mark.parametrize(
    ("name", "n_layers", "t"),
    [
        ("model.layers.3.self_attn.q_proj.weight", 7, 0.5),
        ("model.layers.0.mlp.up_proj.weight", 7, 0.0),
        ("model.layers.6.post_attention_layernorm.weight", 7, 1.0),
        ("model.layers.0.mlp.experts.5.w1.weight", 1, 1.0),  # one layer: mergekit's plan.py uses t = 1
        ("model.language_model.layers.2.mlp.up_proj.weight", 5, 0.5),
        ("transformer.h.1.attn.c_attn.weight", 3, 0.5),
        ("gpt_neox.layers.4.attention.dense.weight", 5, 1.0),
        ("model.embed_tokens.weight", 7, 0.0),
        ("model.norm.weight", 7, 0.0),  # after the layers, still 0 (mergekit plans post-weights with t = 0)
        ("lm_head.weight", 7, 0.0),
        ("transformer.wte.weight", 7, 0.0),
    ],
)
def test_layer_t(name: str, n_layers: int, t: float) -> None:
    assert layer_t(name, n_layers) == t


def test_layer_t_refuses_what_it_cannot_place() -> None:
    with pytest.raises(OptionError, match=r"model\.visual\.blocks\.3\.attn\.qkv\.weight"):
        layer_t("model.visual.blocks.3.attn.qkv.weight", 32)
    with pytest.raises(OptionError, match="layer 7 of a model with 7 layers"):
        layer_t("model.layers.7.mlp.up_proj.weight", 7)
    with pytest.raises(OptionError, match="positive integer"):
        layer_t("lm_head.weight", 0)


# ---------------------------------------------------------------------------------------------------
# writing back and building


def test_build_config_from_command_line_values() -> None:
    config = build_config(
        "ties",
        ["org/a", "org/b"],
        base_model="org/base",
        model_parameters={"weight": [0.3, 0.7]},
        parameters={"density": 0.2, "lambda": 1.0},
        dtype="bfloat16",
    )
    assert config.source == "command line"
    assert config.model_names == ("org/a", "org/b")
    assert config.models[1].parameters == {"weight": Setting.of(0.7)}
    assert config.parameters == {"density": Setting.of(0.2), "lambda": Setting.of(1.0)}
    _assert_round_trips(config)
    again = build_config("ties", ["org/base", "org/a"], base_model="org/base", parameters={"weight": 1.0})
    assert again.model_names == ("org/a",)


def test_build_config_refuses_what_a_yaml_would() -> None:
    with pytest.raises(OptionError, match=r"^command line: weight has 1 values for 2 models$"):
        build_config("ties", ["org/a", "org/b"], model_parameters={"weight": [1.0]})
    with pytest.raises(OptionError, match=r"^command line: dtype: 'fp16' is not a dtype"):
        build_config("ties", ["org/a"], dtype="fp16")
    with pytest.raises(OptionError, match="LoRA"):
        build_config("linear", ["org/a+org/lora"])
    with pytest.raises(OptionError, match=r"^command line: models\[0\] \(org/base\) is the base model"):
        build_config("ties", ["org/base", "org/a"], base_model="org/base", model_parameters={"weight": [1, 1]})


def test_to_yaml_is_plain_mergekit_yaml() -> None:
    config = build_config(
        "dare_ties",
        ["org/a", "org/b"],
        base_model="org/base",
        model_parameters={"weight": [0.5, 0.5]},
        parameters={"density": 0.53, "int8_mask": True},
        out_dtype="bfloat16",
        tokenizer_source="base",
    )
    assert to_yaml(config) == (
        "merge_method: dare_ties\n"
        "base_model: org/base\n"
        "models:\n"
        "- model: org/a\n"
        "  parameters:\n"
        "    weight: 0.5\n"
        "- model: org/b\n"
        "  parameters:\n"
        "    weight: 0.5\n"
        "parameters:\n"
        "  density: 0.53\n"
        "  int8_mask: true\n"
        "out_dtype: bfloat16\n"
        "tokenizer_source: base\n"
    )
    assert yaml.safe_load(to_yaml(_config("mergekit-ties")))["models"][0]["parameters"]["density"] == [1, 0.7, 0.1]


scalars = (
    st.booleans()
    | st.integers(-(10**6), 10**6)
    | st.floats(allow_nan=False, allow_infinity=True)
    | st.text(max_size=12)
)
values = scalars | st.lists(scalars, min_size=1, max_size=5).map(tuple)
rules = st.builds(Rule, values, st.none() | st.sampled_from(["*", "mlp", "self_attn", "", "1e-3", "true"]))
settings_ = st.builds(Setting, st.lists(rules, min_size=1, max_size=4).map(tuple))
names = st.sampled_from(["weight", "density", "lambda", "gamma", "epsilon", "normalize", "t", "yes", "1"])
parameter_maps = st.dictionaries(names, settings_, max_size=4)
templates = st.text(min_size=1, max_size=200).map(lambda text: "{{ messages }}" + text + "{% endfor %}\n")
models = st.lists(
    st.text(alphabet=st.characters(blacklist_characters="+@"), min_size=1, max_size=30),
    min_size=1,
    max_size=4,
    unique=True,
)


@settings(max_examples=200, deadline=None)
@given(
    method=st.text(min_size=1, max_size=20),
    model_names=models,
    model_parameters=st.lists(parameter_maps, min_size=4, max_size=4),
    parameters=parameter_maps,
    dtype=st.none() | st.sampled_from(["bfloat16", "float16", "float32"]),
    template=st.none() | templates,
)
def test_to_yaml_round_trips(
    method: str,
    model_names: list[str],
    model_parameters: list[dict[str, Setting]],
    parameters: dict[str, Setting],
    dtype: str | None,
    template: str | None,
) -> None:
    entries = tuple(ModelEntry(name, model_parameters[i]) for i, name in enumerate(model_names))
    config = MergekitConfig(method, entries, parameters=parameters, out_dtype=dtype, chat_template=template)
    _assert_round_trips(config)


def test_load_config(tmp_path: Path) -> None:
    path = tmp_path / "merge.yml"
    path.write_text(PUBLISHED["mergekit-bio-merge"], encoding="utf-8")
    config = load_config(path)
    assert config.source == str(path)
    assert config == _config("mergekit-bio-merge")
    with pytest.raises(OptionError) as caught:
        load_config(tmp_path / "missing.yml")
    assert (
        str(caught.value)
        == f"{tmp_path / 'missing.yml'}: cannot read the merge configuration: No such file or directory"
    )
    bad = tmp_path / "bad.yml"
    bad.write_bytes(b"merge_method: \xff\n")
    with pytest.raises(OptionError, match="not UTF-8"):
        load_config(bad)


# ---------------------------------------------------------------------------------------------------
# chat template

TEMPLATE = "{% for message in messages %}<|{{ message['role'] }}|>\n{{ message['content'] }}\n{% endfor %}"


def test_apply_chat_template_writes_the_jinja_file_and_drops_other_templates() -> None:
    tokenizer_config = {"bos_token": "<s>", "chat_template": "{{ old }}", "model_max_length": 4096, "é": "ü"}
    side_files = {
        "config.json": b'{"a": 1}',
        "tokenizer.json": b"{}",
        "tokenizer_config.json": json.dumps(tokenizer_config).encode(),
        "chat_template.jinja": b"{{ old }}",
        "chat_template.json": b'{"chat_template": "{{ old }}"}',
        "additional_chat_templates/tool_use.jinja": b"{{ tools }}",
    }
    before = dict(side_files)
    out = apply_chat_template(TEMPLATE, side_files)
    assert side_files == before  # the input is not changed
    assert out[CHAT_TEMPLATE_FILE] == TEMPLATE.encode()
    assert json.loads(out["tokenizer_config.json"]) == {"bos_token": "<s>", "model_max_length": 4096, "é": "ü"}
    assert out["tokenizer_config.json"].endswith(b"\n")
    assert set(out) == {"config.json", "tokenizer.json", "tokenizer_config.json", CHAT_TEMPLATE_FILE}
    assert out["config.json"] == side_files["config.json"]


def test_apply_chat_template_keeps_a_tokenizer_config_without_template_byte_for_byte() -> None:
    raw = b'{\n    "bos_token": "<s>"\n}'
    out = apply_chat_template(TEMPLATE, {"tokenizer_config.json": raw})
    assert out == {"tokenizer_config.json": raw, CHAT_TEMPLATE_FILE: TEMPLATE.encode()}


@pytest.mark.parametrize("template", ["chatml", "llama3", "auto", "no braces here at all, none", "{{ x }}"])
def test_apply_chat_template_refuses_names_and_non_templates(template: str) -> None:
    with pytest.raises(OptionError) as caught:
        apply_chat_template(template, {"tokenizer_config.json": b"{}"})
    assert str(caught.value).startswith("chat_template: ")


def test_apply_chat_template_needs_a_tokenizer() -> None:
    with pytest.raises(OptionError, match=r"no tokenizer \(tokenizer_config\.json\)"):
        apply_chat_template(TEMPLATE, {"config.json": b"{}"})


def test_chat_template_in_a_config_round_trips() -> None:
    config = parse_config(GOOD + "chat_template: " + json.dumps(TEMPLATE) + "\n", "m.yml")
    assert config.chat_template == TEMPLATE
    assert "chat_template: |" in _assert_round_trips(config)
