"""The one interface `GroundingModel` uses for every mask head.

A head is built from the LMM's `LMMDims` (`dims=`) and is called as

    head(features, image=None) -> dict[str, Tensor]

on one sample's `LMMFeatures`, returning named [n, h, w] logit maps (n = the sample's phrases).
The final prediction is always under `FINAL` ("logits"); other entries are intermediate maps.
`loss_prefixes` names the maps the mask loss trains and the prefix of their loss terms (the HG
head: its one map, terms "loss_mask", ...; the U-Net+SAM head: the coarse map, then SAM's map
as "sam_loss_mask", ...). Two optional, parameter-free hooks let the model do frozen work once,
outside a checkpointed step: `prepare_features` (e.g. each phrase's mean attention maps) and
`prepare_image` (e.g. SAM's image encoder). A third head subclasses `MaskHead` and needs no
change in `hg_lmm/model.py`.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import nn

from hg_lmm.lmm.base import LMMFeatures

# The key of the final [n, h, w] logit map in every head's output.
FINAL = "logits"


class MaskHead(nn.Module):
    """Base class of the mask heads (see the module docstring)."""

    # output key -> loss-term prefix, in loss order, for the maps the mask loss trains.
    loss_prefixes: ClassVar[dict[str, str]] = {FINAL: ""}

    def prepare_features(self, features: LMMFeatures) -> LMMFeatures:
        """The parameter-free part of `forward` on the features (default: none)."""
        return features

    def prepare_image(self, image: Any) -> Any:
        """The frozen per-image part of `forward` (default: the image as given; may be None)."""
        return image

    def forward(self, features: LMMFeatures, image: Any = None) -> dict[str, torch.Tensor]:
        raise NotImplementedError(f"{type(self).__name__} must implement forward")


def check_head_output(head: MaskHead, out: Any) -> dict[str, torch.Tensor]:
    """`out` if it is a head output with the final map and every map `loss_prefixes` names."""
    needed = {FINAL, *head.loss_prefixes}
    if not isinstance(out, dict) or not needed <= set(out):
        got = sorted(out) if isinstance(out, dict) else type(out).__name__
        raise TypeError(
            f"{type(head).__name__} returned {got}; a mask head returns a dict of [n, h, w] logit "
            f"maps holding {sorted(needed)} (subclass hg_lmm.heads.base.MaskHead)"
        )
    return out
