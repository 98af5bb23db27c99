"""F-LMM's coarse mask head: an mmseg `UNet` over a phrase's stacked attention maps.

See docs/architecture.md ("U-Net + SAM head"). The module *is* an mmseg `UNet` (plus
`conv_seg`), so its state-dict names are the released `mask_head.*` names without any key map:
`encoder.*`, `decoder.*`, `conv_seg.*`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from mmengine.model import initialize
from mmseg.models.backbones.unet import InterpConv, UNet
from torch import nn


class UNetMaskHead(UNet):
    """U-Net mask head: [n, L*H, g, g] attention maps -> [n, 1, s, s] mask logits.

    Defaults are F-LMM's configuration; only `in_channels` (= L*H, `LMMDims.attn_channels`) differs
    between LMMs.

    Arguments:
      in_channels: L*H, channels of one phrase's stacked attention maps.
      base_channels, num_stages, strides, enc_num_convs, dec_num_convs, downsamples,
        enc_dilations, dec_dilations, norm_cfg, upsample_cfg: as mmseg's `UNet`. The defaults are
        64 / 4 / (1,1,1,1) / (2,2,2,2) / (2,2,2) / (T,T,T) / 1s / GroupNorm(1) / InterpConv.
      upsample_input_to: the input is upsampled bilinearly by max(1, upsample_input_to / max(h, w))
        before the U-Net (24x24 attention maps become 64x64); None disables it.
      normalize_input: divide every attention map by its sum, so each is a distribution over the
        image grid whatever the caption length.
      init_cfg: mmengine init config; None uses mmseg's UNet default (Kaiming convs, unit norms),
        which the reference applies at construction.

    Input handling (forward): normalise, upsample, zero-pad bottom/right to a multiple of the
    U-Net's total downsampling rate, run the U-Net, crop the padding, then `conv_seg`.
    """

    def __init__(
        self,
        *,
        in_channels: int,
        base_channels: int = 64,
        num_stages: int = 4,
        strides: Sequence[int] = (1, 1, 1, 1),
        enc_num_convs: Sequence[int] = (2, 2, 2, 2),
        dec_num_convs: Sequence[int] = (2, 2, 2),
        downsamples: Sequence[bool] = (True, True, True),
        enc_dilations: Sequence[int] = (1, 1, 1, 1),
        dec_dilations: Sequence[int] = (1, 1, 1),
        norm_cfg: Mapping[str, Any] | None = None,
        upsample_cfg: Mapping[str, Any] | None = None,
        upsample_input_to: int | None = 64,
        normalize_input: bool = True,
        init_cfg: Any = None,
    ) -> None:
        # Built here rather than as defaults so that no dict is shared between instances.
        norm_cfg = dict(norm_cfg) if norm_cfg is not None else dict(type=nn.GroupNorm, num_groups=1)
        upsample_cfg = dict(upsample_cfg) if upsample_cfg is not None else dict(type=InterpConv)
        super().__init__(
            in_channels=in_channels,
            base_channels=base_channels,
            num_stages=num_stages,
            strides=tuple(strides),
            enc_num_convs=tuple(enc_num_convs),
            dec_num_convs=tuple(dec_num_convs),
            downsamples=tuple(downsamples),
            enc_dilations=tuple(enc_dilations),
            dec_dilations=tuple(dec_dilations),
            norm_cfg=norm_cfg,
            upsample_cfg=upsample_cfg,
            init_cfg=init_cfg,
        )
        self.in_channels = in_channels
        self.base_channels = base_channels
        self.upsample_input_to = upsample_input_to
        self.normalize_input = normalize_input
        # Same rule as mmseg's UNet._check_input_divisible: every stage after the first halves the
        # map, by a strided conv or by max-pooling.
        self.size_divisor = 2 ** sum(
            1 for i in range(1, num_stages) if strides[i] == 2 or downsamples[i - 1]
        )
        self.conv_seg = nn.Conv2d(base_channels, 1, kernel_size=1)
        # The reference initialises after adding conv_seg, so it gets the Kaiming init too.
        # `initialize` rather than `init_weights`: the same init without mmengine's per-parameter
        # bookkeeping, which logs every tensor at INFO and cannot read meta-device tensors.
        if self.init_cfg:
            initialize(self, self.init_cfg)
        self._is_init = True

    def train(self, mode: bool = True) -> UNetMaskHead:
        # mmseg's UNet.train returns None, which breaks `head.eval()` chaining.
        super().train(mode)
        return self

    def forward(self, attn_maps: torch.Tensor) -> torch.Tensor:
        """attn_maps: [n, L*H, h, w] non-negative attention maps (probabilities).

        Returns [n, 1, s, s'] logits with (s, s') = (h, w) * max(1, upsample_input_to / max(h, w)),
        covering the same (padded-square) extent as the input.
        """
        if attn_maps.dim() != 4 or attn_maps.shape[1] != self.in_channels:
            raise ValueError(
                f"UNetMaskHead expects [n, {self.in_channels}, h, w] attention maps "
                f"(L*H channels), got {tuple(attn_maps.shape)}"
            )
        dtype = self.conv_seg.weight.dtype
        # Normalise and resize in float32: the maps are tiny probabilities that bf16 would round.
        x = attn_maps.float()
        if self.normalize_input:
            x = x / x.sum(dim=(-2, -1), keepdim=True).clamp(min=1e-12)
        if self.upsample_input_to is not None:
            h, w = x.shape[-2:]
            scale = max(1.0, self.upsample_input_to / max(h, w))
            # scale_factor (not size) on purpose: it sets the sampling grid, and the released
            # heads were trained (and the fixtures recorded) with it.
            x = F.interpolate(x, scale_factor=scale, mode="bilinear")
        x = x.to(dtype)
        h, w = x.shape[-2:]
        pad_h = math.ceil(h / self.size_divisor) * self.size_divisor - h
        pad_w = math.ceil(w / self.size_divisor) * self.size_divisor - w
        if pad_h or pad_w:
            x = F.pad(x, (0, pad_w, 0, pad_h))
        x = super().forward(x)[-1][..., :h, :w]
        return self.conv_seg(x)
