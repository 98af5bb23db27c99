"""`lifg`: language-guided image features (docs/architecture.md, "HG head")."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

# The vision features come as 8 layers, read in consecutive pairs: one pair per stage.
NUM_STAGES = 4
NUM_VISION_LAYERS = 2 * NUM_STAGES
# Width of the phrase embeddings e_k: `text_proj`'s output and the dynamic conv's input.
TEXT_DIM = 256


class DynamicConv(nn.Module):
    """Two 1x1 convs whose weights a controller predicts from each phrase embedding.

    Arguments:
      text_dim: width of the phrase embeddings e_k.
      in_channels: channels of the image features it filters (`lifg.conv3`'s 256).
      out_channels: channels it produces (48 in every released head; names `ln48`).
    """

    def __init__(
        self, *, text_dim: int = TEXT_DIM, in_channels: int = 256, out_channels: int = 48
    ) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        # theta_k = [W1 (out x in), W2 (out x out), b1 (out), b2 (out)], in this order.
        num_params = in_channels * out_channels + out_channels * out_channels + 2 * out_channels
        self.controller = nn.Sequential(
            nn.Linear(text_dim, 256), nn.ReLU(), nn.Linear(256, num_params)
        )
        self.add_module(f"ln{out_channels}", nn.LayerNorm(out_channels))

    @property
    def norm(self) -> nn.LayerNorm:
        return getattr(self, f"ln{self.out_channels}")

    def forward(self, image: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """image: [V, in, g, g]; text: [n, text_dim] -> [V, n, out, g, g] (layer-normed)."""
        cin, cout = self.in_channels, self.out_channels
        theta = self.controller(text)
        w1, w2, b1, b2 = torch.split(theta, [cin * cout, cout * cout, cout, cout], dim=1)
        w1 = w1.reshape(-1, cout, cin)
        w2 = w2.reshape(-1, cout, cout)
        hidden = torch.einsum("noc,vcxy->vnoxy", w1, image) + b1[None, :, :, None, None]
        out = torch.einsum("npo,vnoxy->vnpxy", w2, F.relu(hidden)) + b2[None, :, :, None, None]
        return self.norm(out.movedim(2, -1)).movedim(-1, 2)


class LIFG(nn.Module):
    """Language-guided image features from the LMM's multi-layer vision features.

    Arguments:
      vision_channels: C, width of the projected vision features (names the LayerNorm `ln{C}`).
      width: channels of `conv1` (C // 16 in the released heads).
      grid: g, side of the vision token grid.
    """

    def __init__(self, *, vision_channels: int, width: int, grid: int) -> None:
        super().__init__()
        self.vision_channels = vision_channels
        self.grid = grid
        self.dynamic_conv = DynamicConv()
        self.conv1 = nn.Conv2d(vision_channels, width, kernel_size=1)
        self.conv2 = nn.Conv2d(width, 192, kernel_size=3, padding=1)
        self.conv3 = nn.Conv2d(192, self.dynamic_conv.in_channels, kernel_size=3, padding=1)
        self.add_module(f"ln{vision_channels}", nn.LayerNorm(vision_channels))

    @property
    def norm(self) -> nn.LayerNorm:
        return getattr(self, f"ln{self.vision_channels}")

    def forward(self, vision: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """vision: [8, N, C] (N = g*g); text: [n, 256] -> F [4, n, 96, g, g] (96 = 2 x 48).

        Consecutive vision layers (0,1), (2,3), ... form one stage; the first of each pair takes
        the first 48 channels.
        """
        v, _, c = vision.shape
        g = self.grid
        x = self.norm(vision).transpose(1, 2).reshape(v, c, g, g)
        x = F.relu(self.conv3(F.relu(self.conv2(F.relu(self.conv1(x))))))
        y = self.dynamic_conv(x, text)  # [V, n, 48, g, g]
        n = y.shape[1]
        y = y.reshape(NUM_STAGES, 2, n, -1, g, g).transpose(1, 2)
        return y.reshape(NUM_STAGES, n, -1, g, g)
