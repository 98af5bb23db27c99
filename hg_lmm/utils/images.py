"""The image inputs the processors and SAM accept, and their one conversion to RGB pixels."""

from __future__ import annotations

from typing import Union

import numpy as np
import torch
from PIL import Image

# A PIL image (any mode), a uint8 [H, W, 3] RGB array, or a uint8 RGB tensor ([3, H, W] for SAM,
# as torchvision stores images; [H, W, 3] for the LMM processors, as numpy: `rgb_array`'s layout).
ImageLike = Union[Image.Image, np.ndarray, torch.Tensor]


def rgb_array(image: ImageLike, tensor_layout: str = "CHW") -> np.ndarray:
    """The RGB pixels of an image.

    Arguments:
      image: a PIL image (converted to RGB), a uint8 [H, W, 3] array or a uint8 tensor.
      tensor_layout: how a tensor image is laid out: "CHW" ([3, H, W], as torchvision stores
        images; SAM's convention) or "HWC" ([H, W, 3]; the LMM processors' convention).

    Returns:
      [H, W, 3] uint8 array (a view of the input where possible).
    """
    if isinstance(image, Image.Image):
        array = np.asarray(image.convert("RGB"))
    elif isinstance(image, np.ndarray):
        array = image
    elif isinstance(image, torch.Tensor):
        if tensor_layout not in ("CHW", "HWC"):
            raise ValueError(f"tensor_layout must be 'CHW' or 'HWC', got {tensor_layout!r}")
        if tensor_layout == "CHW":
            if image.dim() != 3 or image.shape[0] != 3:
                raise ValueError(f"a tensor image must be [3, H, W] RGB, got {tuple(image.shape)}")
            image = image.permute(1, 2, 0)
        array = image.detach().cpu().numpy()
    else:
        raise TypeError(
            f"image must be a PIL image, a uint8 [H, W, 3] array or a uint8 [3, H, W] tensor, "
            f"got {type(image).__name__}"
        )
    if array.ndim != 3 or array.shape[2] != 3 or array.dtype != np.uint8:
        raise ValueError(
            f"image must be uint8 RGB [H, W, 3], got dtype {array.dtype} shape {array.shape}; "
            "convert it (e.g. PIL.Image.convert('RGB')) before calling"
        )
    return array


__all__ = ["ImageLike", "rgb_array"]
