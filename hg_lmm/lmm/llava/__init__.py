"""LLaVA-1.5 on stock transformers: the adapter (`adapter.py`), its processor and prompts
(`processing.py`)."""

from __future__ import annotations

from hg_lmm.lmm.llava.adapter import DEFAULT_VISION_LAYERS, LlavaAdapter, build_llava_adapter
from hg_lmm.lmm.llava.processing import (
    CHAT_TEMPLATE,
    IMAGE_TOKEN,
    TRAIN_PROMPT,
    LlavaImageProcessor,
    llava_train_prompt,
)

__all__ = [
    "CHAT_TEMPLATE",
    "DEFAULT_VISION_LAYERS",
    "IMAGE_TOKEN",
    "TRAIN_PROMPT",
    "LlavaAdapter",
    "LlavaImageProcessor",
    "build_llava_adapter",
    "llava_train_prompt",
]
