"""The RNG-free tiny U-Net+SAM pipeline behind the end-to-end golden fixture.

tests/fixtures/unet_sam/ pins the whole U-Net+SAM path (tiny LLaVA -> attention maps -> U-Net ->
F-LMM's grid crop -> SAM prompts -> SAM masks) on the tensors built here. Every weight comes from
the integer-hash rule of `hg_lmm.testing.golden` (keyed by state-dict name), so every machine and
every torch version rebuilds the same bits; the recipe lives in the fixture's JSON.

The tiny SAM has the real SAM's 1024 frame (64x64 image embedding, 256x256 mask prompts), so
F-LMM's own SAM wrapper, which hard-codes those sizes, runs on it unchanged: that is how the
expected outputs were recorded (tests/fixtures/unet_sam/README.md).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hg_lmm.testing.golden import golden_state_dict, hash_uniform


def golden_tiny_llava(save_dir: str | Path, recipe: Mapping[str, Any]) -> tuple[Any, Any, Path]:
    """A tiny LLaVA whose every tensor follows the hash rule, saved to and reloaded from save_dir.

    recipe: the fixture's "lmm" record (`tiny_llava_config` arguments under "config").
    Returns (model in eval mode with eager attention, tokenizer, save_dir).
    """
    from transformers import AutoTokenizer, LlavaForConditionalGeneration

    from hg_lmm.testing.tiny_models import tiny_llava_config, tiny_tokenizer

    save_dir = Path(save_dir)
    tokenizer = tiny_tokenizer("llava", save_dir)
    config = tiny_llava_config(tokenizer, **recipe["config"])
    with torch.random.fork_rng(devices=[]):  # the random init is overwritten just below
        model = LlavaForConditionalGeneration(config)
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    model.load_state_dict(golden_state_dict(shapes), strict=True)
    model.save_pretrained(save_dir)
    model = LlavaForConditionalGeneration.from_pretrained(save_dir, attn_implementation="eager")
    return model.eval(), AutoTokenizer.from_pretrained(save_dir), save_dir


def golden_unet_sam_head(dims: Any, recipe: Mapping[str, Any]) -> torch.nn.Module:
    """The U-Net+SAM head with a 1024-frame tiny SAM, every tensor from the hash rule.

    dims: the tiny LLaVA adapter's `LMMDims`. recipe: the fixture's "head" record ("sam":
    `tiny_sam` arguments; "conv_seg_weight_scale", "conv_seg_bias": the one adjustment, which
    spreads the coarse logits around 0 so that the box prompts are not the whole image).
    Keys are the head's own names (`mask_head.*`, `sam.model.*` with the image encoder,
    `text_proj.*`, `text_layer_weights`). Returned in eval mode.
    """
    from hg_lmm.heads.unet_sam import SAMRefiner, UNetSAMHead
    from hg_lmm.testing.tiny_sam import tiny_sam

    head = UNetSAMHead(dims=dims, sam=SAMRefiner(model=tiny_sam(**recipe["sam"])))
    shapes = {k: tuple(v.shape) for k, v in head.state_dict().items()}
    state = golden_state_dict(shapes)
    state["mask_head.conv_seg.weight"] *= float(recipe["conv_seg_weight_scale"])
    state["mask_head.conv_seg.bias"].fill_(float(recipe["conv_seg_bias"]))
    head.load_state_dict(state, strict=True)
    return head.eval()


def golden_image(height: int, width: int, seed: int) -> np.ndarray:
    """uint8 RGB [height, width, 3]: the hash values u mapped to floor((u + 1) * 127.5)."""
    u = hash_uniform((height, width, 3), seed).double().numpy()
    return np.floor((u + 1.0) * 127.5).astype(np.uint8)


def fixture_tokens(tokens: Mapping[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids [T], mask_ids [T]) from the fixture's "tokens" record (no tokenizer involved)."""
    ids: Sequence[int] = tokens["input_ids"]
    mids: Sequence[int] = tokens["mask_ids"]
    return torch.tensor(ids, dtype=torch.long), torch.tensor(mids, dtype=torch.long)
