"""LLaVA-NeXT (v1.6) on stock transformers: the any-resolution processor and prompts
(`processing.py`)."""

from __future__ import annotations

from hg_lmm.lmm.llava_next.processing import (
    CHAT_TEMPLATES,
    DEFAULT_GRID_PINPOINTS,
    IMAGE_TOKEN,
    PROMPT_TEMPLATES,
    LlavaNextImageProcessor,
    llava_next_train_prompt,
)

__all__ = [
    "CHAT_TEMPLATES",
    "DEFAULT_GRID_PINPOINTS",
    "IMAGE_TOKEN",
    "PROMPT_TEMPLATES",
    "LlavaNextImageProcessor",
    "llava_next_train_prompt",
]
