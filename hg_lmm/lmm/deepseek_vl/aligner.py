"""DeepSeek-VL's aligner (the official `MlpProjector`): vision features -> LLM embedding space."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

PROJECTOR_TYPES = ("identity", "linear", "mlp_gelu", "low_high_hybrid_split_mlp_gelu")


class MlpProjector(nn.Module):
    """The aligner, with the released module names.

    Arguments (the released `aligner_config.params`):
      projector_type: "identity", "linear", "mlp_gelu" (`layers` = Linear, then (GELU, Linear) x
        (depth - 1)) or "low_high_hybrid_split_mlp_gelu" (`high_up_proj` and `low_up_proj`, each
        input_dim -> n_embed / 2, a concat, then `layers` = (GELU, Linear) x (depth - 1)).
      input_dim: width of the vision features.
      n_embed: output width (the LLM hidden size).
      depth: Linear layers on the main path, the input projection(s) counting as one (default 1).
    """

    def __init__(self, params: Mapping[str, Any]) -> None:
        super().__init__()
        kind = params.get("projector_type")
        if kind not in PROJECTOR_TYPES:
            raise ValueError(
                f"aligner projector_type {kind!r} is not supported; "
                f"expected one of {PROJECTOR_TYPES}"
            )
        self.projector_type = kind
        if kind == "identity":
            self.layers: nn.Module = nn.Identity()
            return
        c_in, c_out = int(params["input_dim"]), int(params["n_embed"])
        depth = int(params.get("depth", 1))
        if kind == "linear":
            self.layers = nn.Linear(c_in, c_out)
            return
        mods: list[nn.Module] = []
        if kind == "mlp_gelu":
            mods.append(nn.Linear(c_in, c_out))
        else:
            if c_out % 2:
                raise ValueError(f"hybrid aligner n_embed must be even, got {c_out}")
            self.high_up_proj = nn.Linear(c_in, c_out // 2)
            self.low_up_proj = nn.Linear(c_in, c_out // 2)
        for _ in range(depth - 1):
            mods += [nn.GELU(), nn.Linear(c_out, c_out)]
        self.layers = nn.Sequential(*mods)

    def forward(self, x: torch.Tensor | tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        """[..., input_dim] (or a (high, low) pair for the hybrid type) -> [..., n_embed]."""
        if isinstance(x, tuple):
            if self.projector_type != "low_high_hybrid_split_mlp_gelu":
                raise ValueError(
                    f"a (high, low) pair needs the hybrid aligner, not {self.projector_type!r}"
                )
            high, low = x
            x = torch.cat([self.high_up_proj(high), self.low_up_proj(low)], dim=-1)
        elif self.projector_type == "low_high_hybrid_split_mlp_gelu":
            raise ValueError("the hybrid aligner takes a (high, low) pair of feature tensors")
        return self.layers(x)
