"""A tiny random SAM from segment_anything's own modules, for CPU tests of the SAM refiner.

Same module classes and wiring as `segment_anything.build_sam_vit_*`, only smaller: a 2-block
ViT on a 64x64 frame (4x4 image embedding, 16x16 mask prompts), 32-wide prompts and a 2-layer
two-way transformer.
"""

from __future__ import annotations

from functools import partial

import torch
from segment_anything.modeling import (
    ImageEncoderViT,
    MaskDecoder,
    PromptEncoder,
    Sam,
    TwoWayTransformer,
)


def tiny_sam(
    *,
    image_size: int = 64,
    patch_size: int = 16,
    encoder_dim: int = 32,
    encoder_depth: int = 2,
    encoder_heads: int = 2,
    prompt_dim: int = 32,
    decoder_heads: int = 2,
    decoder_mlp_dim: int = 64,
    seed: int = 0,
) -> Sam:
    """A randomly initialised (seeded, global RNG untouched) `Sam` in eval mode.

    Constraints from segment_anything's modules: prompt_dim must be divisible by 8 (the mask
    decoder upscales to prompt_dim // 8 channels) and prompt_dim // 2 by decoder_heads (the
    token-to-image attention works at half width); image_size must be divisible by patch_size.
    """
    if prompt_dim % 8 or (prompt_dim // 2) % decoder_heads:
        raise ValueError(
            f"prompt_dim={prompt_dim} must be divisible by 8, and prompt_dim // 2 by "
            f"decoder_heads={decoder_heads}"
        )
    if image_size % patch_size:
        raise ValueError(f"image_size={image_size} must be divisible by patch_size={patch_size}")
    embedding_size = image_size // patch_size
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        sam = Sam(
            image_encoder=ImageEncoderViT(
                img_size=image_size,
                patch_size=patch_size,
                embed_dim=encoder_dim,
                depth=encoder_depth,
                num_heads=encoder_heads,
                mlp_ratio=2,
                out_chans=prompt_dim,
                qkv_bias=True,
                norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
                use_rel_pos=True,
                window_size=2,
                global_attn_indexes=(encoder_depth - 1,),
            ),
            prompt_encoder=PromptEncoder(
                embed_dim=prompt_dim,
                image_embedding_size=(embedding_size, embedding_size),
                input_image_size=(image_size, image_size),
                mask_in_chans=8,
            ),
            mask_decoder=MaskDecoder(
                num_multimask_outputs=3,
                transformer=TwoWayTransformer(
                    depth=2,
                    embedding_dim=prompt_dim,
                    mlp_dim=decoder_mlp_dim,
                    num_heads=decoder_heads,
                ),
                transformer_dim=prompt_dim,
                iou_head_depth=3,
                iou_head_hidden_dim=prompt_dim,
            ),
        )
    return sam.eval()
