"""Our Mini-Gemini (MGM) implementation, weight-compatible with YanweiLi/MGM-2B, MGM-7B and
MGM-7B-HD.

Importing this subpackage registers the "mgm" and "mgm_gemma" configs and models with
transformers' Auto classes (`register()`, idempotent), so that
`AutoModelForCausalLM.from_pretrained(local_dir)` loads a released folder (or a tiny test model)
into `MGMLlamaForCausalLM` / `MGMGemmaForCausalLM`. `import hg_lmm` never triggers this.
"""

from __future__ import annotations

from typing import Any

from hg_lmm.lmm.mgm.adapter import ATTENTION_GRIDS, MGMAdapter, build_mgm_adapter
from hg_lmm.lmm.mgm.configuration import (
    CLIP_L_336,
    CONVNEXT_LARGE,
    MGMConfigMixin,
    MGMGemmaConfig,
    MGMLlamaConfig,
)
from hg_lmm.lmm.mgm.modeling import (
    MGMGemmaForCausalLM,
    MGMGemmaModel,
    MGMLlamaForCausalLM,
    MGMLlamaModel,
)
from hg_lmm.lmm.mgm.processing import (
    CHAT_TEMPLATES,
    IMAGE_TOKEN,
    PROMPT_TEMPLATES,
    MGMImageProcessor,
    mgm_tokenizer,
    mgm_train_prompt,
)
from hg_lmm.lmm.mgm.vision import CLIPTower, ConvNeXtTower, mine_patches

__all__ = [
    "ATTENTION_GRIDS",
    "CHAT_TEMPLATES",
    "IMAGE_TOKEN",
    "MGMAdapter",
    "MGMImageProcessor",
    "PROMPT_TEMPLATES",
    "build_mgm_adapter",
    "mgm_tokenizer",
    "mgm_train_prompt",
    "CLIP_L_336",
    "CONVNEXT_LARGE",
    "CLIPTower",
    "ConvNeXtTower",
    "MGMConfigMixin",
    "MGMGemmaConfig",
    "MGMGemmaForCausalLM",
    "MGMGemmaModel",
    "MGMLlamaConfig",
    "MGMLlamaForCausalLM",
    "MGMLlamaModel",
    "mgm_model_class",
    "mine_patches",
    "register",
]


def mgm_model_class(config: Any) -> type:
    """The model class of an MGM config (Gemma or LLaMA decoder)."""
    return MGMGemmaForCausalLM if isinstance(config, MGMGemmaConfig) else MGMLlamaForCausalLM


def register() -> None:
    """Register the configs and models with transformers' Auto classes (safe to repeat)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    for config_cls, model_cls in (
        (MGMLlamaConfig, MGMLlamaForCausalLM),
        (MGMGemmaConfig, MGMGemmaForCausalLM),
    ):
        AutoConfig.register(config_cls.model_type, config_cls, exist_ok=True)
        AutoModelForCausalLM.register(config_cls, model_cls, exist_ok=True)


register()
