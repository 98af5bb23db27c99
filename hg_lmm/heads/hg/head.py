"""The HG head: grounds each phrase of one sample from frozen-LMM features (docs/architecture.md).

extract (the LMM adapter) -> `HGHead` -> `unpad_to_image`. Every size comes from `LMMDims`
through `hg_geometry`; the state-dict names are those of the released checkpoints.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import nn

from hg_lmm.heads.base import FINAL, MaskHead
from hg_lmm.heads.hg.fusion import FuseMaskHead
from hg_lmm.heads.hg.lcb import LCB
from hg_lmm.heads.hg.ldsi import LDSI
from hg_lmm.heads.hg.lifg import LIFG, NUM_STAGES, NUM_VISION_LAYERS, TEXT_DIM
from hg_lmm.heads.hg.sizes import hg_geometry
from hg_lmm.heads.pooling import (
    layer_weighted,
    phrase_attention,
    phrase_pooling,
    with_attention_prior,
)
from hg_lmm.lmm.base import LMMDims, LMMFeatures, check_features
from hg_lmm.utils.masks import unpad_to_image


class HGHead(MaskHead):
    """Phrase masks from one sample's attention maps, hidden states, vision features and pixels.

    Arguments:
      dims: the frozen LMM's sizes; every layer of the head is sized from it (see
        hg_lmm.heads.hg.sizes for the rules and the resulting table).

    Submodules (checkpoint prefixes): `text_layer_weights` [L], `text_proj` (D -> 256), `lifg`,
    `lcb`, `ldsi`, `fuse_maskhead`.

    Entry points:
      forward(features, image=None) -> {"logits": [n, h, w] logits on the (resized) image
        region of `features.meta`} (the image is not read).
      mask_logits(features) -> [n, 1, s, s] low-res logits over the whole padded square
        (s = geometry.output_size); `forward` is `unpad_to_image(mask_logits(...)[:, 0], meta)`.
      phrase_embeddings(hidden, mask_ids) -> [n, 256] e_k, for wrappers that need them.
    """

    # Checkpoint tensors of the reference that this head does not build: the 7B reference holds
    # an unused `cliplayer` (Linear 1024->4096, GELU, Linear). Loaders drop these with a log line.
    IGNORED_CHECKPOINT_PREFIXES: ClassVar[tuple[str, ...]] = ("cliplayer.",)

    def __init__(self, *, dims: LMMDims) -> None:
        super().__init__()
        self.dims = dims
        self.geometry = geo = hg_geometry(dims)
        # Initialised to 1.0 as in the reference: softmax starts uniform over layers.
        self.text_layer_weights = nn.Parameter(torch.ones(dims.num_layers))
        self.lifg = LIFG(vision_channels=dims.vision_channels, width=geo.lifg_width, grid=dims.grid)
        self.ldsi = LDSI(
            attn_channels=geo.attn_channels,
            stage_sizes=geo.stage_sizes,
            strided_last_stage=geo.strided_last_stage,
        )
        self.lcb = LCB(extra_halvings=geo.lcb_extra_halvings)
        self.fuse_maskhead = FuseMaskHead(num_stages=NUM_STAGES)
        self.text_proj = nn.Linear(dims.hidden_size, TEXT_DIM)

    def _dtype(self) -> torch.dtype:
        return self.text_proj.weight.dtype

    def phrase_embeddings(
        self, hidden: torch.Tensor, mask_ids: torch.Tensor, pooling: torch.Tensor | None = None
    ) -> torch.Tensor:
        """e_k = mean over phrase k's tokens of text_proj(sum_l softmax(w)_l * hidden[l, t]).

        hidden: [L, T, D] LMM hidden states at the caption tokens.
        mask_ids: [T] long, phrase index per token or -1.
        pooling: optional [n, T] from `phrase_pooling(mask_ids)`, to avoid recomputing it.
        Returns [n, 256].
        """
        if hidden.dim() != 3 or hidden.shape[0] != self.dims.num_layers:
            raise ValueError(
                f"hidden must be [L={self.dims.num_layers}, T, D={self.dims.hidden_size}], "
                f"got {tuple(hidden.shape)}"
            )
        if pooling is None:
            pooling = phrase_pooling(mask_ids, dtype=self._dtype())
        hbar = layer_weighted(hidden.to(self._dtype()), self.text_layer_weights)  # [T, D]
        return pooling.to(hbar.dtype) @ self.text_proj(hbar)

    def mask_logits(self, features: LMMFeatures) -> torch.Tensor:
        """Low-res logits over the padded square, one map per phrase.

        features: one sample (attn [L,H,T,g,g], hidden [L,T,D], vision [8,N,C],
          pixel_values [3,S,S], mask_ids [T]).
        Returns [n, 1, s, s], s = self.geometry.output_size (S / 2**k); n = mask_ids.max() + 1.
        """
        check_features(
            features, self.dims, owner="the HG head", num_vision_layers=NUM_VISION_LAYERS
        )
        dtype = self._dtype()
        pooling = phrase_pooling(features.mask_ids, dtype=dtype)
        text = self.phrase_embeddings(features.hidden, features.mask_ids, pooling)
        prior = phrase_attention(features, dtype, pooling)
        phrase_features = self.lifg(features.vision.to(dtype), text)
        shallow = self.lcb(features.pixel_values.to(dtype)[None])
        stages = self.ldsi(phrase_features, prior, shallow)
        return self.fuse_maskhead(stages)

    def prepare_features(self, features: LMMFeatures) -> LMMFeatures:
        """The parameter-free part of `forward` on the features: attn replaced by each phrase's
        mean attention maps in the head's dtype (`with_attention_prior`); `forward` gives the
        same logits on either. `GroundingModel` calls it before the recomputed part of a step."""
        return with_attention_prior(features, self._dtype())

    def prepare_image(self, image: Any) -> None:
        """The HG head does not read the image (nothing to keep per sample)."""
        return None

    def forward(self, features: LMMFeatures, image: Any = None) -> dict[str, torch.Tensor]:
        """{"logits": phrase logits on the image [n, h, w]}, (h, w) = features.meta image_shape.

        The low-res logits are resized bilinearly to the padded size and the image region is
        cropped (hg_lmm.utils.masks.unpad_to_image). `image` is not read.
        """
        return {FINAL: unpad_to_image(self.mask_logits(features)[:, 0], features.meta)}
