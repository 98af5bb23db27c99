"""What every frozen-LMM adapter exposes: a dims record and one features record per sample.

A head never looks at the LMM itself; it only reads `LMMDims` (to size its layers) and
`LMMFeatures` (the tensors of one sample). A new LMM is supported by writing an adapter that fills
these two records.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass(frozen=True)
class LMMDims:
    """Sizes of a frozen LMM, as the heads need them.

    Arguments:
      num_layers: L, decoder layers whose attentions and hidden states are exposed.
      num_heads: H, attention heads per decoder layer.
      hidden_size: D, width of the decoder hidden states.
      grid: g, side of the image-token grid (N = g * g image tokens).
      vision_channels: C, width of each projected vision feature (the LMM's projector output).
      vision_layers: the vision-tower blocks (0-based) whose projected outputs form `vision`.
      image_size: S, side of the square `pixel_values` the vision tower receives.
      attn_maps: M, attention maps per layer and head (1; 2 for LLaVA-NeXT and MGM-7B-HD: their
        coarse and fine image grids, F-LMM's reading). `attn` then holds M*L "layers" in
        F-LMM's order: group-major for LLaVA-NeXT, layer-major (entry M*l + m) for MGM-HD.
      fixed_grid: whether `attn` always lies on the g x g grid (False: LLaVA-NeXT read on its
        fine grid, whose size follows each image's aspect ratio; g is then the coarse grid).
    """

    num_layers: int
    num_heads: int
    hidden_size: int
    grid: int
    vision_channels: int
    vision_layers: tuple[int, ...]
    image_size: int
    attn_maps: int = 1
    fixed_grid: bool = True

    @property
    def attn_channels(self) -> int:
        """M * L * H: channels of one phrase's stacked attention maps."""
        return self.attn_maps * self.num_layers * self.num_heads

    @property
    def num_image_tokens(self) -> int:
        return self.grid * self.grid


@dataclass
class LMMFeatures:
    """Frozen-LMM features of one sample, restricted to its T caption (or answer) tokens.

    Fields:
      attn: [L, H, T, g, g] attention probabilities from caption tokens to the image tokens
        ([M*L, H, T, h, w] for an LMM with `LMMDims.attn_maps` M, e.g. LLaVA-NeXT);
        None once a head's `prepare_features` has replaced it by `attn_prior`.
      hidden: [L, T, D] hidden states (HF `hidden_states[1:]`, the last one after the final norm).
      vision: [V, N, C] multi-layer vision features through the LMM's own projector.
      pixel_values: [3, S, S] the tensor the vision tower received.
      mask_ids: [T] long, the phrase index of each token or -1.
      meta: processor record: image_shape, padded_shape, padding (see hg_lmm.lmm.processors).
      token_ids: [T] long, the caption token ids (for decoding and debugging).
      attn_prior: [n, L*H, g, g] each phrase's mean attention maps (`attention_prior` of `attn`
        in the head's dtype), or None. A training step keeps these n maps per sample until its
        backward instead of the T token maps (hg_lmm.heads.pooling.with_attention_prior).
    """

    attn: torch.Tensor | None
    hidden: torch.Tensor
    vision: torch.Tensor
    pixel_values: torch.Tensor
    mask_ids: torch.Tensor
    meta: dict[str, Any]
    token_ids: torch.Tensor | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    attn_prior: torch.Tensor | None = None


def check_features(
    features: LMMFeatures,
    dims: LMMDims,
    *,
    owner: str,
    fields: tuple[str, ...] = ("attn", "hidden", "vision", "pixel_values"),
    num_vision_layers: int | None = None,
) -> None:
    """Raise a ValueError naming the field when `features` do not have the shapes of `dims`.

    owner: who consumes them (named in the message, e.g. "the HG head").
    fields: which fields that consumer reads ("attn" is satisfied by `attn_prior` [n, L*H, g, g]
      when attn is None).
    num_vision_layers: V for `vision` [V, N, C] (None: any V).
    """
    d, f = dims, features
    t = f.mask_ids.shape[0] if f.mask_ids.dim() == 1 else -1
    n = int(f.mask_ids.max()) + 1 if f.mask_ids.numel() else 0
    v = num_vision_layers if num_vision_layers is not None else f.vision.shape[0]
    expected = {
        "attn": (d.attn_maps * d.num_layers, d.num_heads, t, d.grid, d.grid),
        "hidden": (d.num_layers, t, d.hidden_size),
        "vision": (v, d.num_image_tokens, d.vision_channels),
        "pixel_values": (3, d.image_size, d.image_size),
        "attn_prior": (n, d.attn_channels, d.grid, d.grid),
    }
    for name in fields:
        if name == "attn" and f.attn is None:
            name = "attn_prior"
            if f.attn_prior is None:
                raise ValueError(
                    f"LMMFeatures has neither attn nor attn_prior, which {owner} reads"
                )
        shape = tuple(getattr(f, name).shape)
        want = expected[name]
        if not d.fixed_grid and name in ("attn", "attn_prior"):  # any h x w grid
            shape, want = shape[:-2] + (-1, -1), want[:-2] + (-1, -1)
        if shape != want:
            raise ValueError(
                f"LMMFeatures.{name} has shape {shape}, but {owner} built for {d} expects "
                f"{want} (T = len(mask_ids), n = its phrases); check the adapter's "
                "output or build the head from that adapter's dims"
            )
