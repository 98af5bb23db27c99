"""`fuse_maskhead`: DPT-style fusion of the stage maps into mask logits (docs/architecture.md)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class ResidualConvUnit(nn.Module):
    """RCU(x) = x + conv(relu(conv(x))), 3x3 convs; keys `conv.0.*` and `conv.2.*`."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv2d(channels, channels, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.Conv2d(channels, channels, kernel_size=3, padding=1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [B, c, h, w] -> [B, c, h, w]."""
        return x + self.conv(x)


class RefineBlock(nn.Module):
    """RCU, bilinear resize to a given size, 3x3 conv.

    The children are named "0" and "2" so that checkpoint keys match the reference, whose index 1
    was a parameter-free x2 upsample. Resizing to the skip's size instead is identical wherever x2
    fits and also chains stage sizes that do not halve exactly (LLaVA: 10 -> 21 -> 42 -> 84).
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.add_module("0", ResidualConvUnit(channels))
        self.add_module("2", nn.Conv2d(channels, channels, kernel_size=3, padding=1))

    def forward(self, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """x: [B, c, h, w] -> [B, c, *size]."""
        x = getattr(self, "0")(x)
        x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
        return getattr(self, "2")(x)


class FuseMaskHead(nn.Module):
    """Fuses the four stage maps coarse to fine and predicts one logit map per phrase.

    Arguments:
      channels: width of the stage maps (64).
      num_stages: number of stage maps (4).
    """

    def __init__(self, *, channels: int = 64, num_stages: int = 4) -> None:
        super().__init__()
        self.resconvunit = ResidualConvUnit(channels)  # shared by every skip connection
        self.refine_blocks = nn.ModuleList(RefineBlock(channels) for _ in range(num_stages))
        self.mask_head_fpn = nn.Sequential(
            nn.Conv2d(channels, channels, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.BatchNorm2d(channels),
            nn.Dropout(p=0.1),
            nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False),
            nn.Conv2d(channels, 32, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.Conv2d(32, 1, kernel_size=1),
        )

    def forward(self, stages: list[torch.Tensor]) -> torch.Tensor:
        """stages: [n, 64, s_i, s_i], finest first -> logits [n, 1, 4*s_1, 4*s_1].

        The coarsest map goes through the last refine block; then each finer skip j = 0, 1, ...
        (coarse to fine) is added after the shared RCU and refined by block j. Each block resizes
        to the next skip's size, the last one by x2.
        """
        last = len(stages) - 1
        skips = stages[:last][::-1]  # coarse to fine
        sizes = [tuple(s.shape[-2:]) for s in skips]
        sizes.append(tuple(2 * d for d in stages[0].shape[-2:]))
        x = self.refine_blocks[last](stages[last], sizes[0])
        for j, skip in enumerate(skips):
            x = self.refine_blocks[j](x + self.resconvunit(skip), sizes[j + 1])
        return self.mask_head_fpn(x)
