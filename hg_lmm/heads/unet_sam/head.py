"""The U-Net+SAM head: F-LMM's U-Net coarse head plus the SAM refiner (docs/architecture.md).

extract (the LMM adapter) -> `UNetSAMHead` -> (coarse logits cropped to the image on the U-Net's
64-grid, SAM logits on the original image). Every size comes from `LMMDims` (U-Net input = L*H,
text path = L and D) or from the SAM model (prompt width). The state-dict names are those of the
released F-LMM checkpoints: `mask_head.*`, `sam.model.prompt_encoder.*`,
`sam.model.mask_decoder.*`, `text_proj.*`, `text_layer_weights`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import torch
from torch import nn

from hg_lmm.heads.base import FINAL, MaskHead
from hg_lmm.heads.pooling import (
    layer_weighted,
    phrase_attention,
    phrase_pooling,
    with_attention_prior,
)
from hg_lmm.heads.unet_sam.sam_refiner import SAMImage, SAMRefiner
from hg_lmm.heads.unet_sam.unet import UNetMaskHead
from hg_lmm.lmm.base import LMMDims, LMMFeatures, check_features
from hg_lmm.utils.build import build
from hg_lmm.utils.images import ImageLike
from hg_lmm.utils.masks import crop_to_image_grid


class UNetSAMHead(MaskHead):
    """F-LMM's head: attention maps -> U-Net coarse masks -> SAM refined masks.

    Arguments:
      dims: the frozen LMM's sizes. The U-Net gets in_channels = L*H; `text_layer_weights` has L
        entries and `text_proj` maps D to SAM's prompt width.
      sam: a ready `SAMRefiner`, or its config dict, e.g. dict(type=SAMRefiner,
        model=dict(type=build_sam, variant="vit_l", checkpoint="checkpoints/sam_vit_l_0b3195.pth")).
      mask_head: a ready U-Net head, or its config dict (e.g. dict(type=UNetMaskHead), with
        in_channels filled from `dims`); None builds F-LMM's default `UNetMaskHead`.

    Entry points:
      forward(features, image) -> {"logits": SAM's [n, H, W] at the original image size,
        "coarse_logits": [n, h, w] U-Net logits cropped to the image at the U-Net's resolution
        (F-LMM's grid crop, `hg_lmm.utils.masks.crop_to_image_grid`; e.g. 42x64 for a 500x333
        image: SAM's mask and box prompts are built from it, and the coarse loss compares it with
        the ground truth resized (nearest) to the same size), "unet_logits": [n, 1, s, s] raw
        U-Net logits over the whole padded square (s = 64)}.
      mask_logits(features) -> [n, 1, s, s] coarse logits over the padded square.
      phrase_token_embeddings(hidden, mask_ids) -> n tensors [k_i, E], every matched token kept.
    Checkpoints (hg_lmm.utils.checkpoint) hold everything but the frozen SAM image encoder.
    """

    # The coarse map is trained as the HG head's map ("loss_mask"...), SAM's as "sam_loss_mask"...
    loss_prefixes: ClassVar[dict[str, str]] = {"coarse_logits": "", FINAL: "sam_"}
    # Released F-LMM files can hold the frozen SAM image encoder: a parent `state_dict()` does not
    # go through the reference SAM wrapper's filter. It is loaded from the official SAM weights
    # instead, so those tensors are dropped (and counted in the log) when loading.
    IGNORED_CHECKPOINT_PREFIXES: ClassVar[tuple[str, ...]] = ("sam.model.image_encoder.",)

    def __init__(
        self,
        *,
        dims: LMMDims,
        sam: SAMRefiner | Mapping[str, Any],
        mask_head: nn.Module | Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.dims = dims
        if mask_head is None:
            mask_head = dict(type=UNetMaskHead)
        self.mask_head = build(mask_head, in_channels=dims.attn_channels)
        self.sam = build(sam)
        for name, part, kind in (
            ("mask_head", self.mask_head, nn.Module),
            ("sam", self.sam, SAMRefiner),
        ):
            if not isinstance(part, kind):
                raise TypeError(
                    f"{name} must be a {kind.__name__} or a config dict with `type=`, got "
                    f"{type(part).__name__}"
                )
        in_channels = getattr(self.mask_head, "in_channels", dims.attn_channels)
        if in_channels != dims.attn_channels:
            raise ValueError(
                f"mask_head takes {in_channels} input channels but the LMM gives M*L*H = "
                f"{dims.attn_maps}*{dims.num_layers}*{dims.num_heads} = {dims.attn_channels}; "
                "build it from the dims"
            )
        # Initialised to 1.0 as in the reference: softmax starts uniform over layers.
        self.text_layer_weights = nn.Parameter(torch.ones(dims.num_layers))
        self.text_proj = nn.Linear(dims.hidden_size, self.sam.embed_dim)

    def _dtype(self) -> torch.dtype:
        return self.text_proj.weight.dtype

    def phrase_token_embeddings(
        self, hidden: torch.Tensor, mask_ids: torch.Tensor
    ) -> list[torch.Tensor]:
        """Text prompts: text_proj(sum_l softmax(w)_l * hidden[l, t]) for every token t of phrase k.

        hidden: [L, T, D] LMM hidden states at the caption tokens.
        mask_ids: [T] long, phrase index per token or -1.
        Returns n tensors [k_i, E] (k_i = phrase i's token count, E = SAM prompt width); unlike
        the HG head, the tokens are not averaged.
        """
        n = phrase_pooling(mask_ids).shape[0]  # validates mask_ids (every phrase has a token)
        hbar = layer_weighted(hidden.to(self._dtype()), self.text_layer_weights)  # [T, D]
        keep = mask_ids >= 0
        embeds = self.text_proj(hbar[keep])
        ids = mask_ids[keep]
        return [embeds[ids == k] for k in range(n)]

    def mask_logits(self, features: LMMFeatures) -> torch.Tensor:
        """Coarse logits over the padded square: [n, 1, s, s] (s = 64 for a 24x24 grid).

        features: one sample (attn [L, H, T, g, g], hidden [L, T, D], mask_ids [T], meta).
        Each phrase's attention maps are averaged over its tokens (layer-major, [n, L*H, g, g])
        and run through the U-Net.
        """
        check_features(features, self.dims, owner="the U-Net+SAM head", fields=("attn", "hidden"))
        return self.mask_head(phrase_attention(features, torch.float32))

    def prepare_features(self, features: LMMFeatures) -> LMMFeatures:
        """The parameter-free part of `forward` on the features: attn replaced by each phrase's
        mean attention maps in float32 (`with_attention_prior`), the U-Net's input; `forward`
        gives the same logits on either. `GroundingModel` calls it before the recomputed part."""
        return with_attention_prior(features, torch.float32)

    def prepare_image(self, image: ImageLike | SAMImage | None) -> SAMImage:
        """The frozen, per-image part of `forward`: the image resized and encoded by SAM's
        image encoder. `GroundingModel` calls it once per sample, outside the recomputed head."""
        return self.sam.embed_image(_required_image(image))

    def forward(
        self, features: LMMFeatures, image: ImageLike | SAMImage | None = None
    ) -> dict[str, torch.Tensor]:
        """Coarse and refined logits for every phrase of one sample.

        features: the sample's `LMMFeatures` (meta places the image inside the padded square).
        image: the original image (PIL, uint8 [H, W, 3] array or uint8 [3, H, W] tensor) or its
          `SAMImage` from `self.sam.prepare_image` (e.g. made in a data-loader worker).
        Returns {"logits", "coarse_logits", "unet_logits"} (see the class docstring).
        """
        mask_logits = self.mask_logits(features)
        # F-LMM's crop, not a resize to the padded square followed by an exact pixel crop: the
        # released weights were trained on this map (start rounded down, length rounded half up
        # on the 64-grid; docs/architecture.md, "Crop rules"). Any other crop changes SAM's mask
        # prompt and box, and so the final masks.
        coarse = crop_to_image_grid(mask_logits[:, 0], features.meta)
        text_embeds = self.phrase_token_embeddings(features.hidden, features.mask_ids)
        refined = self.sam(_required_image(image), coarse, text_embeds)
        return {FINAL: refined, "coarse_logits": coarse, "unet_logits": mask_logits}


def _required_image(image: Any) -> Any:
    if image is None:
        raise ValueError(
            "the U-Net+SAM head refines on the original image, and none was given: pass the "
            "sample's `image` (PIL) or, to GroundingModel.ground, image=<the PIL image>"
        )
    return image
