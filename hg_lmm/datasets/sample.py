"""The record every training dataset returns: an image, its caption pieces and their masks.

The datasets are LMM-agnostic: they return text pieces, not token ids. The prompt (which the LMM
adapter owns) and the tokenizer are applied afterwards by `hg_lmm.datasets.transforms`.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, fields
from typing import Any

import torch
from PIL import Image


@dataclass(frozen=True)
class Piece:
    """One piece of a caption, encoded on its own.

    Fields:
      text: the piece (a PNG utterance or a referring expression).
      mask_id: index into the sample's masks, or -1 for a piece without a mask.
      period_after: RefCOCO appends the last token of `encode('.')` (mask_id -1) after each
        expression, so that the concatenated expressions read as sentences.
    """

    text: str
    mask_id: int = -1
    period_after: bool = False


@dataclass
class GroundingSample(Mapping):
    """One training / evaluation sample, and the record `GroundingModel` reads: it is a read-only
    mapping of its fields (`sample["input_ids"]`, `"image" in sample`), as a plain dict sample is.

    Fields:
      image: the RGB image at its original size (w, h).
      pieces: caption pieces in caption order; `mask_id`s index `masks`.
      masks: [n, h, w] bool ground-truth masks at the original image size (the model resizes them
        to meta.image_shape itself).
      plural: [n] whether each mask is the union of several segments (PNG; False for RefCOCO).
      isthing: [n] whether each mask is a thing (True) or stuff (False).
      source: where the sample comes from (file and id), used in error messages.
      image_id: the dataset's image id.
      image_path: the image file.
      input_ids: [T] long, filled by `TokenizePieces`: prompt tokens, then the piece tokens.
      mask_ids: [T] long, filled by `TokenizePieces`: the mask index of each token or -1.
      caption_start: number of prompt tokens at the start of `input_ids`, i.e. where the caption
        starts (filled with them).
      extra: dataset-specific fields.
    """

    image: Image.Image
    pieces: list[Piece]
    masks: torch.Tensor
    plural: list[bool]
    isthing: list[bool]
    source: str
    image_id: Any = None
    image_path: str | None = None
    input_ids: torch.Tensor | None = None
    mask_ids: torch.Tensor | None = None
    caption_start: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def __getitem__(self, name: str) -> Any:
        if name not in self._field_names():
            raise KeyError(name)
        return getattr(self, name)

    def __iter__(self) -> Iterator[str]:
        return iter(self._field_names())

    def __len__(self) -> int:
        return len(self._field_names())

    @classmethod
    def _field_names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls))

    @property
    def num_masks(self) -> int:
        return int(self.masks.shape[0])

    @property
    def phrases(self) -> list[str]:
        """The text of the masked pieces, in mask order (index k is mask k)."""
        by_id = {p.mask_id: p.text for p in self.pieces if p.mask_id >= 0}
        return [by_id[k] for k in range(self.num_masks)]
