"""`lcb`: the low-level conv branch on the pixels (docs/architecture.md, "HG head")."""

from __future__ import annotations

import torch
from torch import nn


def conv_bn_relu(in_channels: int, out_channels: int, stride: int) -> nn.Sequential:
    """Sequential(Conv3x3, BatchNorm2d, ReLU): the `convX` unit whose keys are `convX.{0,1}.*`."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=stride, padding=1),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(),
    )


class LCB(nn.Module):
    """Shallow pixel features at the finest stage's resolution.

    `conv1` (stride 2), then `extra_halvings` pairs `conv1_{2j}` (stride 1) + `conv1_{2j+1}`
    (stride 2), then `conv2`, `conv3`, a 3/2/1 max-pool and `proj` (1x1). One pair is the 7B
    head's `conv1_2`/`conv1_3`; the 1.3B head has none.

    Arguments:
      extra_halvings: k, the number of extra stride-2 pairs (see hg_lmm.heads.hg.sizes).
      in_channels: image channels.
      base_channels: width of the conv units.
      out_channels: width of `proj` (the 128 that `ldsi.spm_adapters` takes).
    """

    def __init__(
        self,
        *,
        extra_halvings: int,
        in_channels: int = 3,
        base_channels: int = 64,
        out_channels: int = 128,
    ) -> None:
        super().__init__()
        self.conv1 = conv_bn_relu(in_channels, base_channels, stride=2)
        self._convs = ["conv1"]
        for j in range(1, extra_halvings + 1):
            for name, stride in ((f"conv1_{2 * j}", 1), (f"conv1_{2 * j + 1}", 2)):
                self.add_module(name, conv_bn_relu(base_channels, base_channels, stride))
                self._convs.append(name)
        self.conv2 = conv_bn_relu(base_channels, base_channels, stride=1)
        self.conv3 = conv_bn_relu(base_channels, base_channels, stride=1)
        self._convs += ["conv2", "conv3"]
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.proj = nn.Conv2d(base_channels, out_channels, kernel_size=1)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """pixels: [B, 3, S, S] -> [B, 128, s1, s1], s1 = S halved 2 + k times (ceil)."""
        x = pixels
        for name in self._convs:
            x = getattr(self, name)(x)
        return self.proj(self.maxpool(x))
