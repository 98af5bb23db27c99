"""What the LMMs' image processors share: letterbox geometry, the meta record, rescale/normalise.

Each LMM's own processor and prompts live in its folder (`hg_lmm.lmm.deepseek_vl.processing`,
`hg_lmm.lmm.llava.processing`).

See docs/architecture.md, "Preprocessing and prompts".

Each processor is a callable `image -> (pixel_values [3, S, S] float32, meta)`, where `meta` records
how the resized image sits in the padded square:

    {"padding": {"before_height", "after_height", "before_width", "after_width"},
     "image_shape": {"height", "width"},      # the resized image, before padding
     "padded_shape": {"height", "width"}}     # the square the vision tower receives

The processors differ only in how they resize; padding, the meta record and the
rescale/normalise step are shared.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image

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


def _float_tuple(values: Sequence[float] | None) -> tuple[float, ...] | None:
    return None if values is None else tuple(float(v) for v in values)


class SquareProcessor:
    """Shared tail of both processors: pad to a centred square, rescale, normalise. Subclasses
    define `resize` (the resized image is at most `image_size` on its long side)."""

    def __init__(
        self,
        *,
        image_size: int,
        image_mean: Sequence[float] | None,
        image_std: Sequence[float] | None,
        rescale_factor: float = 1 / 255,
    ) -> None:
        self.image_size = int(image_size)
        self.image_mean = _float_tuple(image_mean)
        self.image_std = _float_tuple(image_std)
        self.rescale_factor = float(rescale_factor)

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


def expand_image_tokens(
    input_ids: Sequence[int] | torch.Tensor, image_token_id: int, num_image_tokens: int
) -> torch.Tensor:
    """Replace each image-tag token by `num_image_tokens` copies: [T] -> [T + k * (N - 1)] long."""
    ids = torch.as_tensor(input_ids, dtype=torch.long).flatten()
    repeats = torch.where(ids == image_token_id, num_image_tokens, 1)
    return ids.repeat_interleave(repeats)
