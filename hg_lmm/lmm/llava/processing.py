"""LLaVA-1.5's image processor and prompts (docs/architecture.md, "Preprocessing and prompts")."""

from __future__ import annotations

from collections.abc import Sequence

from PIL import Image

from hg_lmm.lmm.processors import CLIP_MEAN, CLIP_STD, SquareProcessor

# Only the INSTRUCTION part of xtuner's vicuna template, without SYSTEM (as the reference trains).
TRAIN_PROMPT = "USER: <image>\nPlease give me a description of the image. ASSISTANT:"
CHAT_TEMPLATE = "USER: <image>\n{question} ASSISTANT:"
IMAGE_TOKEN = "<image>"


def llava_train_prompt() -> str:
    """`TRAIN_PROMPT`, for configs: `prompt=dict(type=llava_train_prompt)` (see TokenizePieces)."""
    return TRAIN_PROMPT


class LlavaImageProcessor(SquareProcessor):
    """LLaVA-1.5 processing with HG-LMM's letterbox geometry (no centre crop).

    Arguments:
      image_size: S (336 for LLaVA-1.5); the long side is resized to S with PIL bicubic:
        landscape (w > h) -> (int(h * S / w), S), otherwise (S, int(w * S / h)), as (h, w).
      image_mean, image_std: CLIP normalisation; the pad colour is int(m * 255) per channel.
      rescale_factor: applied before normalising.
    """

    def __init__(
        self,
        *,
        image_size: int = 336,
        image_mean: Sequence[float] = CLIP_MEAN,
        image_std: Sequence[float] = CLIP_STD,
        rescale_factor: float = 1 / 255,
    ) -> None:
        super().__init__(
            image_size=image_size,
            image_mean=image_mean,
            image_std=image_std,
            rescale_factor=rescale_factor,
        )

    def resize(self, image: Image.Image) -> Image.Image:
        width, height = image.size
        s = self.image_size
        if width > height:
            new_h, new_w = int(height * s / width), s
        else:
            new_h, new_w = s, int(width * s / height)
        return image.resize((new_w, new_h), resample=Image.BICUBIC)
