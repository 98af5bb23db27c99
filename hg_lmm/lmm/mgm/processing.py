"""MGM's image processor, prompts and tokenizer, as F-LMM trains its MGM heads.

Image (F-LMM's `Pad2Square`, then the CLIP image processor that F-LMM resizes to
`image_size_aux`): the image is centred on a square of its long side, padded with the CLIP mean
colour (`int(m * 255)`, `pad // 2` before), resized to A x A (PIL bicubic), rescaled by 1/255 and
normalised with the CLIP mean and std in float32, as transformers does. The meta record is
Pad2Square's, in the original pixels: image_shape (h, w), padded_shape (max(h, w),) * 2.

Prompts: the INSTRUCTION of xtuner's templates (no SYSTEM) around F-LMM's prompt
"<image>\\nPlease give me a description of the image."; "gemma" for MGM-2B, "vicuna" for the 7B
models. The released tokenizers have no `<image>` token: F-LMM adds it as a special token
(`mgm_tokenizer`), whose id the adapter replaces by the image tokens.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from hg_lmm.lmm.llava_next.processing import normalize_float32
from hg_lmm.lmm.processors import CLIP_MEAN, CLIP_STD, background_colour, pad_to_square, to_rgb
from hg_lmm.utils.images import ImageLike

IMAGE_TOKEN = "<image>"
_QUESTION = "<image>\nPlease give me a description of the image."
# xtuner's PROMPT_TEMPLATE.gemma / .vicuna, INSTRUCTION only.
PROMPT_TEMPLATES = {
    "gemma": "<start_of_turn>user\n{input}<end_of_turn>\n<start_of_turn>model\n",
    "vicuna": "USER: {input} ASSISTANT:",
}
CHAT_TEMPLATES = {
    k: v.replace("{input}", "<image>\n{question}") for k, v in PROMPT_TEMPLATES.items()
}
# Generation stops at the template's end-of-turn (Gemma) or the eos token (Vicuna).
STOP_WORDS = {"gemma": "<end_of_turn>", "vicuna": None}


def mgm_train_prompt(template: str) -> str:
    """The training / `extract` prompt of a template ("gemma" or "vicuna"), for configs:
    `prompt=dict(type=mgm_train_prompt, template="gemma")`."""
    if template not in PROMPT_TEMPLATES:
        raise ValueError(
            f"unknown template {template!r}; expected one of {sorted(PROMPT_TEMPLATES)}"
        )
    return PROMPT_TEMPLATES[template].format(input=_QUESTION)


def mgm_tokenizer(pretrained_model_name_or_path: str | Path, **kwargs: Any) -> Any:
    """The MGM repo's tokenizer with `<image>` added as a special token when it lacks one (as
    F-LMM's datasets do; the new id is len(tokenizer) before adding)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(pretrained_model_name_or_path, **kwargs)
    add_image_token(tokenizer)
    return tokenizer


def add_image_token(tokenizer: Any) -> int:
    """Add `<image>` to `tokenizer` as a special token if it is not one yet; returns its id."""
    if IMAGE_TOKEN not in tokenizer.get_vocab():
        tokenizer.add_special_tokens({"additional_special_tokens": [IMAGE_TOKEN]})
    return tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)


class MGMImageProcessor:
    """Pad to a square, resize to A x A, rescale, normalise (module docstring).

    Arguments:
      image_size: A, the ConvNeXt input side (`image_size_aux`: 768, 1536 for MGM-7B-HD).
      image_mean, image_std: CLIP normalisation (the pad colour is the mean).
      rescale_factor: applied before normalising.

    Call: image -> (pixel_values [3, A, A] float32, meta in the original pixels).
    """

    def __init__(
        self,
        *,
        image_size: int,
        image_mean: Sequence[float] = CLIP_MEAN,
        image_std: Sequence[float] = CLIP_STD,
        rescale_factor: float = 1 / 255,
    ) -> None:
        self.image_size = int(image_size)
        self.image_mean = tuple(float(m) for m in image_mean)
        self.image_std = tuple(float(s) for s in image_std)
        self.rescale_factor = float(rescale_factor)

    def __call__(self, image: ImageLike) -> tuple[torch.Tensor, dict[str, Any]]:
        square, meta = pad_to_square(to_rgb(image), background_colour(self.image_mean))
        side = self.image_size
        resized = np.asarray(square.resize((side, side), resample=Image.BICUBIC))
        pixels = normalize_float32(resized, self.image_mean, self.image_std, self.rescale_factor)
        return torch.from_numpy(pixels), meta
