"""LLaVA-NeXT (v1.6) on stock transformers: the adapter (`adapter.py`), the any-resolution
processor and prompts (`processing.py`)."""

from __future__ import annotations

from hg_lmm.lmm.llava_next.adapter import (
    ATTENTION_GRIDS,
    AnyResImages,
    LlavaNextAdapter,
    TokenLayout,
    build_llava_next_adapter,
    load_processor,
)
from hg_lmm.lmm.llava_next.processing import (
    CHAT_TEMPLATES,
    DEFAULT_GRID_PINPOINTS,
    IMAGE_TOKEN,
    PROMPT_TEMPLATES,
    LlavaNextImageProcessor,
    llava_next_train_prompt,
)

__all__ = [
    "ATTENTION_GRIDS",
    "AnyResImages",
    "LlavaNextAdapter",
    "TokenLayout",
    "build_llava_next_adapter",
    "load_processor",
    "CHAT_TEMPLATES",
    "DEFAULT_GRID_PINPOINTS",
    "IMAGE_TOKEN",
    "PROMPT_TEMPLATES",
    "LlavaNextImageProcessor",
    "llava_next_train_prompt",
]
