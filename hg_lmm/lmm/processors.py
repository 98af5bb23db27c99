"""Image processors (DeepSeek-VL, LLaVA-1.5) and the DeepSeek-VL chat prompt.

See docs/architecture.md, "Preprocessing and prompts".

Each processor is a callable `image -> (pixel_values [3, S, S] float32, meta)`, where `meta` records
how the resized image sits in the padded square:

    {"padding": {"before_height", "after_height", "before_width", "after_width"},
     "image_shape": {"height", "width"},      # the resized image, before padding
     "padded_shape": {"height", "width"}}     # the square the vision tower receives

The two processors differ only in how they resize; padding, the meta record and the
rescale/normalise step are shared.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torchvision.transforms.functional import InterpolationMode
from torchvision.transforms.functional import resize as tv_resize

from hg_lmm.utils.images import ImageLike, rgb_array

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def to_rgb(image: ImageLike) -> Image.Image:
    """A PIL RGB image from any `ImageLike`, a tensor laid out [H, W, 3]
    (`hg_lmm.utils.images.rgb_array` reads it)."""
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    return Image.fromarray(rgb_array(image, tensor_layout="HWC"), mode="RGB")


def letterbox_meta(height: int, width: int, side: int | None = None) -> dict[str, Any]:
    """The meta record of an (height, width) image centred on a square of `side` (default: the
    long side): the short side gets `pad // 2` pixels before and the rest after."""
    side = max(height, width) if side is None else side
    top, left = (side - height) // 2, (side - width) // 2
    return {
        "padding": {
            "before_height": top,
            "after_height": side - height - top,
            "before_width": left,
            "after_width": side - width - left,
        },
        "image_shape": {"height": height, "width": width},
        "padded_shape": {"height": side, "width": side},
    }


def pad_to_square(
    image: Image.Image, background: Sequence[int]
) -> tuple[Image.Image, dict[str, Any]]:
    """Centre `image` on a square of side max(h, w) filled with `background`.

    The short side gets `pad // 2` pixels before and the rest after. Returns the square image and
    the meta record (module docstring).
    """
    width, height = image.size
    meta = letterbox_meta(height, width)
    side, pad = meta["padded_shape"]["height"], meta["padding"]
    canvas = Image.new("RGB", (side, side), tuple(int(c) for c in background))
    canvas.paste(image, (pad["before_width"], pad["before_height"]))
    return canvas, meta


def background_colour(image_mean: Sequence[float] | None) -> tuple[int, ...]:
    """Pad colour: each channel mean in 0..255, truncated; mid-grey 127 without a mean."""
    if image_mean is None:
        return (127, 127, 127)
    return tuple(int(m * 255) for m in image_mean)


def to_pixel_values(
    image: Image.Image,
    image_mean: Sequence[float] | None,
    image_std: Sequence[float] | None,
    rescale_factor: float = 1 / 255,
) -> torch.Tensor:
    """RGB image -> [3, H, W] float32: rescale, then normalise (skipped if `image_mean` is None)."""
    x = np.asarray(image, dtype=np.float64).transpose(2, 0, 1) * rescale_factor
    if image_mean is not None:
        if image_std is None:
            raise ValueError("image_std is None but image_mean is set; give both or neither")
        mean = np.asarray(image_mean, dtype=np.float64)[:, None, None]
        std = np.asarray(image_std, dtype=np.float64)[:, None, None]
        x = (x - mean) / std
    return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))


class _SquareProcessor:
    """Shared tail of both processors: pad to a centred square, rescale, normalise."""

    image_size: int
    image_mean: tuple[float, ...] | None
    image_std: tuple[float, ...] | None
    rescale_factor: float

    def resize(self, image: Image.Image) -> Image.Image:
        raise NotImplementedError

    @property
    def background(self) -> tuple[int, ...]:
        return background_colour(self.image_mean)

    def __call__(self, image: ImageLike) -> tuple[torch.Tensor, dict[str, Any]]:
        """image (PIL or [H, W, 3] uint8) -> (pixel_values [3, S, S] float32, meta)."""
        resized = self.resize(to_rgb(image))
        square, meta = pad_to_square(resized, self.background)
        pixels = to_pixel_values(square, self.image_mean, self.image_std, self.rescale_factor)
        return pixels, meta


def _floats(values: Sequence[float] | None) -> tuple[float, ...] | None:
    return None if values is None else tuple(float(v) for v in values)


class DeepseekVLImageProcessor(_SquareProcessor):
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
        self.image_size = int(image_size)
        self.image_mean = _floats(image_mean)
        self.image_std = _floats(image_std)
        self.min_size = int(min_size)
        self.rescale_factor = float(rescale_factor)

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


class LlavaImageProcessor(_SquareProcessor):
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
        self.image_size = int(image_size)
        self.image_mean = _floats(image_mean)
        self.image_std = _floats(image_std)
        self.rescale_factor = float(rescale_factor)

    def resize(self, image: Image.Image) -> Image.Image:
        width, height = image.size
        s = self.image_size
        if width > height:
            new_h, new_w = int(height * s / width), s
        else:
            new_h, new_w = s, int(width * s / height)
        return image.resize((new_w, new_h), resample=Image.BICUBIC)


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


def expand_image_tokens(
    input_ids: Sequence[int] | torch.Tensor, image_token_id: int, num_image_tokens: int
) -> torch.Tensor:
    """Replace each image-tag token by `num_image_tokens` copies: [T] -> [T + k * (N - 1)] long."""
    ids = torch.as_tensor(input_ids, dtype=torch.long).flatten()
    repeats = torch.where(ids == image_token_id, num_image_tokens, 1)
    return ids.repeat_interleave(repeats)


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
