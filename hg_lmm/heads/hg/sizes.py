"""Every size of the HG head, derived from the LMM's dims record (docs/architecture.md).

The reference hard-codes one copy of the head per LMM. The rules below reproduce both released
DeepSeek-VL heads exactly (the golden fixtures pin them) and give LLaVA-1.5 a head whose fusion
chains:

| LMM            | S    | g  | L*H  | lcb halvings | stage sizes        | stage 4      | output |
|----------------|------|----|------|--------------|--------------------|--------------|--------|
| DeepSeek-VL-1.3B | 384 | 24 | 384  | 2 (S/4)     | 96, 48, 24, 12     | stride-2 conv | 384   |
| DeepSeek-VL-7B | 1024 | 24 | 960  | 3 (S/8)      | 128, 64, 32, 16    | bilinear     | 512    |
| LLaVA-1.5-7B   | 336  | 24 | 1024 | 2 (S/4)      | 84, 42, 21, 10     | bilinear     | 336    |

Rules:
1. `lcb` always halves the image twice (`conv1` stride 2, then the max-pool). It adds `k` more
   halvings, each as a pair `conv1_{2j}` (stride 1) + `conv1_{2j+1}` (stride 2), choosing the `k`
   whose output side lies closest (in log scale) to `4 * g`: the finest stage a x2 fusion chain
   reaches from the grid (g/2 -> g -> 2g -> 4g). 1.3B: 96 is exactly 4g, so k = 0; 7B: 256, 128
   or 64 against 96 gives k = 1 (the reference's `conv1_2`/`conv1_3`); LLaVA: 84 against 96 gives
   k = 0.
2. Stage i (1-based) has side `max(1, s1 // 2**(i-1))`, with `s1` the `lcb` output side, because
   stage 1 adds the `lcb` features. These are the reference's own target sizes for all three
   LMMs (LLaVA's 84/42/21/10 included).
3. Stages 1-3 are a 1x1 conv then a bilinear resize from the g x g grid. Stage 4 uses the
   reference's learned stride-2 3x3 conv on the grid when that conv lands exactly on its size
   (1.3B: 24 -> 12), and a bilinear resize otherwise (7B: 16; LLaVA: 10, where the reference's
   stride-2 conv gave 12 and broke the fusion chain).
4. The fusion resizes to the next (finer) stage's size, and by x2 after stage 1; the mask head
   doubles once more, so the logits have side `4 * s1` (S / 2**k).
5. The attention prior is reduced from L*H channels to 96 by `conv{LH}to384` + `conv384to96`
   when L*H > 384, else by one `conv{LH}to96`.
6. `lifg.conv1` has `C // 16` outputs (128 for C = 2048, 256 for C = 4096).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from hg_lmm.heads.hg.lifg import NUM_STAGES
from hg_lmm.lmm.base import LMMDims

# The fixed widths of the head (256, 192, 96, 64...) sit in the modules that build them, where the
# checkpoint keys pin them; this module holds only the sizes that follow from the LMM.


def _halve(side: int) -> int:
    """Output side of a 3x3/stride-2/pad-1 conv or a 3/2/1 max-pool: ceil(side / 2)."""
    return (side + 1) // 2


@dataclass(frozen=True)
class HGGeometry:
    """Sizes of one HG head.

    Fields:
      lifg_width: `lifg.conv1` output channels (C // 16).
      attn_channels: channel chain of the attention-prior convs, e.g. (960, 384, 96).
      lcb_extra_halvings: k, the number of (conv1_{2j}, conv1_{2j+1}) pairs in `lcb`.
      stage_sizes: side of each of the 4 stage maps, finest first.
      strided_last_stage: stage 4 is a stride-2 conv on the grid (else a bilinear resize).
      output_size: side of the low-res logits, 4 * stage_sizes[0].
    """

    lifg_width: int
    attn_channels: tuple[int, ...]
    lcb_extra_halvings: int
    stage_sizes: tuple[int, ...]
    strided_last_stage: bool
    output_size: int


def lcb_output_size(image_size: int, extra_halvings: int) -> int:
    """Side of `lcb`'s output for an S x S input and k extra halvings."""
    side = image_size
    for _ in range(2 + extra_halvings):
        side = _halve(side)
    return side


def choose_lcb_halvings(image_size: int, grid: int) -> int:
    """k >= 0 putting lcb's output side closest to 4 * grid in log scale (ties: smaller k)."""
    target = math.log2(4 * grid)
    best_k, best_err = 0, math.inf
    k = 0
    while True:
        side = lcb_output_size(image_size, k)
        err = abs(math.log2(side) - target)
        if err < best_err - 1e-9:
            best_k, best_err = k, err
        if side <= 1 or math.log2(side) < target:
            return best_k
        k += 1


def hg_geometry(dims: LMMDims) -> HGGeometry:
    """All sizes of the HG head for an LMM (rules in the module docstring)."""
    for name in ("num_layers", "num_heads", "hidden_size", "grid", "vision_channels", "image_size"):
        if getattr(dims, name) < 1:
            raise ValueError(f"LMMDims.{name} must be positive, got {getattr(dims, name)}")
    if not dims.fixed_grid:
        raise ValueError(
            "the HG head needs the attention on one fixed g x g grid, but these LMMDims read it on "
            "a per-image grid; build the LLaVA-NeXT or MGM adapter with attention_grid='base'"
        )
    if dims.vision_channels < 16:
        raise ValueError(
            f"LMMDims.vision_channels={dims.vision_channels} is too small for the HG head: "
            "lifg.conv1 has C // 16 channels; use C >= 16"
        )
    lh = dims.attn_channels
    # Rule 5: down to ldsi's 96 prior channels, through 384 when L*H is larger (`conv960to384`).
    attn = (lh, 384, 96) if lh > 384 else (lh, 96)
    k = choose_lcb_halvings(dims.image_size, dims.grid)
    s1 = lcb_output_size(dims.image_size, k)
    sizes = tuple(max(1, s1 // 2**i) for i in range(NUM_STAGES))
    return HGGeometry(
        lifg_width=dims.vision_channels // 16,
        attn_channels=attn,
        lcb_extra_halvings=k,
        stage_sizes=sizes,
        strided_last_stage=_halve(dims.grid) == sizes[-1],
        output_size=4 * s1,
    )
