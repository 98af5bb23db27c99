"""`ldsi`: multi-scale injection of the attention prior (docs/architecture.md, "HG head")."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class LDSI(nn.Module):
    """Builds the four stage maps from the phrase features, the attention prior and `lcb`.

    Arguments:
      attn_channels: channel chain reducing the attention prior, e.g. (960, 384, 96); each step
        is a 3x3 conv named `conv{a}to{b}`, with no activation in between.
      stage_sizes: side of each stage map, finest first (4 entries).
      strided_last_stage: the coarsest stage is a stride-2 3x3 conv on the grid instead of a
        bilinear resize (the 1.3B head's `reassemble_projs.stage4.1`).
    """

    def __init__(
        self,
        *,
        attn_channels: tuple[int, ...],
        stage_sizes: tuple[int, ...],
        strided_last_stage: bool,
    ) -> None:
        super().__init__()
        # 96: the prior ends at the width of one stage's phrase features (2 x 48 from `lifg`).
        if attn_channels[-1] != 96:
            raise ValueError(f"attention prior must end at 96 channels, got {attn_channels}")
        self.stage_sizes = tuple(stage_sizes)
        self._attn_convs = []
        for cin, cout in zip(attn_channels[:-1], attn_channels[1:]):
            name = f"conv{cin}to{cout}"
            self.add_module(name, nn.Conv2d(cin, cout, kernel_size=3, padding=1))
            self._attn_convs.append(name)
        self.conv96to128 = nn.Conv2d(96, 128, kernel_size=3, padding=1)
        # The attention prior (96) is concatenated before the phrase features (96).
        self.conv192to128 = nn.Conv2d(192, 128, kernel_size=3, padding=1)
        # Stage maps leave at the fusion's width, 64.
        projs = {}
        for i in range(len(stage_sizes)):
            layers = [nn.Conv2d(128, 64, kernel_size=1)]
            if strided_last_stage and i == len(stage_sizes) - 1:
                layers.append(nn.Conv2d(64, 64, kernel_size=3, stride=2, padding=1))
            projs[f"stage{i + 1}"] = nn.Sequential(*layers)
        self.reassemble_projs = nn.ModuleDict(projs)
        # `lcb`'s 128 channels join the finest stage.
        self.spm_adapters = nn.Sequential(
            nn.Conv2d(128, 64, kernel_size=1), nn.BatchNorm2d(64), nn.ReLU()
        )

    def forward(
        self, phrase_features: torch.Tensor, prior: torch.Tensor, shallow: torch.Tensor
    ) -> list[torch.Tensor]:
        """Stage maps, finest first.

        phrase_features: F [4, n, 96, g, g] from `lifg`.
        prior: A [n, L*H, g, g], the attention prior.
        shallow: [1, 128, s1, s1] from `lcb`.
        Returns 4 tensors [n, 64, s_i, s_i].
        """
        m = prior
        for name in self._attn_convs:
            m = getattr(self, name)(m)
        stages = [self.conv96to128(phrase_features[0])]
        for f in phrase_features[1:]:
            stages.append(self.conv192to128(torch.cat([m, f], dim=1)))
        out = []
        for i, (z, size) in enumerate(zip(stages, self.stage_sizes)):
            z = self.reassemble_projs[f"stage{i + 1}"](z)
            if tuple(z.shape[-2:]) != (size, size):
                z = F.interpolate(z, size=(size, size), mode="bilinear", align_corners=False)
            if i == 0:
                z = z + self.spm_adapters(shallow)
            out.append(z)
        return out
