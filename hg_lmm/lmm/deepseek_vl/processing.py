"""DeepSeek-VL's image processor and prompts (docs/architecture.md, "Preprocessing and prompts").

`deepseek_vl_train_prompt(576)` is the training prompt of both released sizes (a 24x24 grid:
576 expanded image tags); configs build it (`dict(type=deepseek_vl_train_prompt, ...)`).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torchvision.transforms.functional import InterpolationMode
from torchvision.transforms.functional import resize as tv_resize

from hg_lmm.lmm.processors import (
    CLIP_MEAN,
    CLIP_STD,
    SquareProcessor,
    expand_image_tokens,
)


class DeepseekVLImageProcessor(SquareProcessor):
    """DeepSeek-VL's image processor (the official `VLMImageProcessor` geometry).

    Arguments:
      image_size: S; the long side is resized to S and the result padded to S x S.
      image_mean, image_std: normalisation; `image_mean=None` skips it and pads with 127
        (the 7B release, whose towers normalise internally).
      min_size: floor of the resized short side.
      rescale_factor: applied before normalising.

    Resize: size = max(int(side / long * S), min_size) per side, torchvision bicubic with
    antialias (on a PIL image, which is PIL's bicubic).
    """

    def __init__(
        self,
        *,
        image_size: int,
        image_mean: Sequence[float] | None = CLIP_MEAN,
        image_std: Sequence[float] | None = CLIP_STD,
        min_size: int = 14,
        rescale_factor: float = 1 / 255,
    ) -> None:
        super().__init__(
            image_size=image_size,
            image_mean=image_mean,
            image_std=image_std,
            rescale_factor=rescale_factor,
        )
        self.min_size = int(min_size)

    def resize(self, image: Image.Image) -> Image.Image:
        width, height = image.size
        long = max(width, height)
        size = [
            max(int(height / long * self.image_size), self.min_size),
            max(int(width / long * self.image_size), self.min_size),
        ]
        return tv_resize(image, size, interpolation=InterpolationMode.BICUBIC, antialias=True)

    # preprocessor_config.json (the official file's fields that this processor reads)

    @classmethod
    def from_pretrained(cls, path: str | Path) -> DeepseekVLImageProcessor:
        """Read `preprocessor_config.json` from a model directory (or the file itself)."""
        path = Path(path)
        file = path / "preprocessor_config.json" if path.is_dir() else path
        if not file.is_file():
            raise FileNotFoundError(
                f"no preprocessor_config.json at {path}; download the model's processor files "
                "or build DeepseekVLImageProcessor(image_size=..., image_mean=..., image_std=...)"
            )
        cfg = json.loads(file.read_text())
        normalise = cfg.get("do_normalize", True) and cfg.get("image_mean") is not None
        return cls(
            image_size=cfg["image_size"],
            image_mean=cfg.get("image_mean") if normalise else None,
            image_std=cfg.get("image_std") if normalise else None,
            min_size=cfg.get("min_size", 14),
            rescale_factor=cfg.get("rescale_factor", 1 / 255),
        )

    def save_pretrained(self, save_dir: str | Path) -> Path:
        """Write `preprocessor_config.json` (official field names) into `save_dir`."""
        save_dir = Path(save_dir)
        save_dir.mkdir(parents=True, exist_ok=True)
        cfg = {
            "image_processor_type": "VLMImageProcessor",
            "image_size": self.image_size,
            "min_size": self.min_size,
            "image_mean": None if self.image_mean is None else list(self.image_mean),
            "image_std": None if self.image_std is None else list(self.image_std),
            "rescale_factor": self.rescale_factor,
            "do_normalize": self.image_mean is not None,
        }
        file = save_dir / "preprocessor_config.json"
        file.write_text(json.dumps(cfg, indent=2) + "\n")
        return file


# --- DeepSeek-VL chat prompt -----------------------------------------------------------------

DEEPSEEK_VL_SYSTEM_PROMPT = (
    "You are a helpful language and vision assistant. You are able to understand the visual "
    "content that the user provides, and assist the user with a variety of tasks using natural "
    "language."
)
DEEPSEEK_VL_IMAGE_TAG = "<image_placeholder>"
DEEPSEEK_VL_STOP = "<｜end▁of▁sentence｜>"


def deepseek_vl_chat_prompt(content: str, system_prompt: str = DEEPSEEK_VL_SYSTEM_PROMPT) -> str:
    """The official "deepseek" template for one user turn awaiting the answer.

    system + "\\n\\n" + "User: " + content + "\\n\\n" + "Assistant:" (the system part is dropped
    when empty; content and result are stripped, as upstream does).
    """
    head = f"{system_prompt}\n\n" if system_prompt else ""
    return f"{head}User: {content.strip()}\n\nAssistant:".strip()


def encode_deepseek_vl_prompt(
    tokenizer: Any,
    text: str,
    num_image_tokens: int,
    image_tag: str = DEEPSEEK_VL_IMAGE_TAG,
    add_special_tokens: bool = True,
) -> torch.Tensor:
    """Tokenise a DeepSeek-VL prompt (with BOS) and expand each image tag: -> [T] long.

    num_image_tokens: N of the model (`MultiModalityConfig.num_image_tokens`, 576 when released).
    """
    image_id = tokenizer.convert_tokens_to_ids(image_tag)
    if image_id is None or image_id == getattr(tokenizer, "unk_token_id", None):
        raise ValueError(
            f"the tokenizer has no {image_tag!r} token; use the model's own tokenizer (it adds the "
            "tag as a special token)"
        )
    ids = tokenizer(text, add_special_tokens=add_special_tokens).input_ids
    return expand_image_tokens(ids, image_id, num_image_tokens)


TRAIN_INSTRUCTION = "Please give me a description of the image.\n\nAssistant:"


def deepseek_vl_train_prompt(num_image_tokens: int) -> str:
    """The training prompt: 'User: ', the image's expanded tags, then the description request."""
    return f"User: {DEEPSEEK_VL_IMAGE_TAG * num_image_tokens}{TRAIN_INSTRUCTION}"
