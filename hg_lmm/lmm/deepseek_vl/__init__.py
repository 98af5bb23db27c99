"""Our DeepSeek-VL implementation, weight-compatible with deepseek-ai/deepseek-vl-{1.3b,7b}-chat.

Importing this subpackage registers the "multi_modality" config and model with transformers'
Auto classes (`register()` does it, idempotently), so that

    AutoModelForCausalLM.from_pretrained(local_dir, attn_implementation="sdpa")

loads a released checkpoint (or a tiny test model) into `MultiModalityCausalLM`.
`import hg_lmm` and `import hg_lmm.lmm` never trigger this.
"""

from __future__ import annotations

from hg_lmm.lmm.deepseek_vl.adapter import DeepseekVLAdapter, build_deepseek_vl_adapter
from hg_lmm.lmm.deepseek_vl.aligner import MlpProjector
from hg_lmm.lmm.deepseek_vl.configuration import (
    AlignerConfig,
    MultiModalityConfig,
    VisionConfig,
)
from hg_lmm.lmm.deepseek_vl.modeling import MultiModalityCausalLM, MultiModalityPreTrainedModel
from hg_lmm.lmm.deepseek_vl.vision import CLIPVisionTower, HybridVisionTower, SamHDEncoder

__all__ = [
    "AlignerConfig",
    "CLIPVisionTower",
    "DeepseekVLAdapter",
    "HybridVisionTower",
    "MlpProjector",
    "MultiModalityCausalLM",
    "MultiModalityConfig",
    "MultiModalityPreTrainedModel",
    "SamHDEncoder",
    "VisionConfig",
    "build_deepseek_vl_adapter",
    "register",
]


def register() -> None:
    """Register the configs and the model with transformers' Auto classes (safe to repeat)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    for config_cls in (VisionConfig, AlignerConfig, MultiModalityConfig):
        AutoConfig.register(config_cls.model_type, config_cls, exist_ok=True)
    AutoModelForCausalLM.register(MultiModalityConfig, MultiModalityCausalLM, exist_ok=True)


register()
