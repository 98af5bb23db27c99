"""Tiny random DeepSeek-VL models (both released layouts) for CPU tests and the demo.

Two styles, built from configs in code, saved with `save_pretrained` and loaded back through
`AutoModelForCausalLM.from_pretrained`, so the tested path is the one real checkpoints take:

- "1.3b": one tiny SigLIP tower (32x32 input, patch 8 -> 4x4 grid) and an `mlp_gelu` aligner;
- "7b": the hybrid tower, a tiny SAM ViTDet at 64x64 (patch 8, windows of 4, resized to 16 and
  downsampled twice to 4x4) plus the tiny SigLIP at 32, and the hybrid aligner.

Both use a tiny Llama (hidden 32, 2 layers, 4 heads) and the tiny byte-level tokenizer of
`hg_lmm.testing.tiny_models` (which carries `<image_placeholder>` and `<｜end▁of▁sentence｜>`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from hg_lmm.lmm.deepseek_vl.processing import DeepseekVLImageProcessor
from hg_lmm.lmm.processors import CLIP_MEAN, CLIP_STD

STYLES = ("1.3b", "7b")
# Eight selected blocks, as both heads expect, spread over the 4-block tiny towers.
TINY_FEATURE_LAYERS = (0, 0, 1, 1, 2, 2, 3, 3)


def _tiny_siglip(image_size: int, width: int, depth: int, heads: int) -> dict[str, Any]:
    return {
        "model_name": "siglip_tiny",
        "image_size": image_size,
        "patch_size": 8,
        "width": width,
        "layers": depth,
        "heads": heads,
        "mlp_ratio": 2.0,
        "select_feature": "same",
        "select_layer": -1,
    }


def tiny_deepseek_vl_config(
    style: str = "1.3b",
    *,
    vocab_size: int,
    hidden_size: int = 32,
    text_layers: int = 2,
    heads: int = 4,
    vision_width: int = 32,
    vision_depth: int = 4,
    feature_layers: Sequence[int] = TINY_FEATURE_LAYERS,
    high_res_feature_layers: Sequence[int] = TINY_FEATURE_LAYERS,
    token_ids: dict[str, int] | None = None,
):
    """A MultiModalityConfig in the released format, with tiny towers and a tiny Llama.

    style: "1.3b" (SigLIP + mlp_gelu) or "7b" (SAM + SigLIP hybrid + hybrid aligner).
    token_ids: optional bos/eos/pad ids for the Llama config.
    The image grid is 4x4 (N = 16 image tokens); the vision input is 32 ("1.3b") or 64 ("7b").
    """
    from hg_lmm.lmm.deepseek_vl import MultiModalityConfig

    if style not in STYLES:
        raise ValueError(f"unknown tiny DeepSeek-VL style {style!r}; expected one of {STYLES}")
    siglip = _tiny_siglip(32, vision_width, vision_depth, heads)
    if style == "1.3b":
        vision = {"cls": "CLIPVisionTower", "params": siglip}
        aligner = {"projector_type": "mlp_gelu", "input_dim": vision_width}
    else:
        sam = {
            "model_name": "sam_tiny",
            "image_size": 64,
            "patch_size": 8,
            "width": 24,
            "layers": vision_depth,
            "heads": 2,
            "mlp_ratio": 2.0,
            "window_size": 4,
            "global_attn_indexes": [1, 3],
            "out_chans": 16,
            # The last downsample width must equal SigLIP's: the aligner projects both from it.
            "downsample_channels": [24, vision_width],
            "downsample_input_size": 16,
            "output_dim": vision_width,
            "pixel_mean": list(CLIP_MEAN),
            "pixel_std": list(CLIP_STD),
            "select_feature": "same",
            "select_layer": -1,
        }
        low = dict(siglip, output_dim=vision_width, pixel_mean=[0.5] * 3, pixel_std=[0.5] * 3)
        vision = {
            "cls": "HybridVisionTower",
            "params": {"concat_type": "tuple", "high_res_cfg": sam, "low_res_cfg": low},
        }
        aligner = {"projector_type": "low_high_hybrid_split_mlp_gelu", "input_dim": vision_width}
    aligner.update(depth=2, n_embed=hidden_size)
    from hg_lmm.testing.tiny_models import tiny_llama_kwargs

    language = tiny_llama_kwargs(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        text_layers=text_layers,
        heads=heads,
        rms_norm_eps=1e-6,
        tie_word_embeddings=False,
        **{f"{k}_token_id": v for k, v in (token_ids or {}).items()},
    )
    return MultiModalityConfig(
        vision_config=vision,
        aligner_config={"cls": "MlpProjector", "params": aligner},
        language_config=language,
        vision_feature_layers=list(feature_layers),
        high_res_feature_layers=list(high_res_feature_layers) if style == "7b" else None,
    )


def tiny_image_processor(style: str = "1.3b") -> DeepseekVLImageProcessor:
    """The processor of a tiny style (as released: 1.3B normalises with 0.5, 7B in the towers)."""
    if style == "1.3b":
        return DeepseekVLImageProcessor(image_size=32, image_mean=(0.5,) * 3, image_std=(0.5,) * 3)
    if style == "7b":
        return DeepseekVLImageProcessor(image_size=64, image_mean=None, image_std=None)
    raise ValueError(f"unknown tiny DeepSeek-VL style {style!r}; expected one of {STYLES}")


def randomize_(model: torch.nn.Module, seed: int = 0, scale: float = 0.1) -> torch.nn.Module:
    """Give zero-initialised tensors (SAM positions, alpha, biases, ...) small random values.

    Without this, paths gated by zero-init parameters (e.g. the SAM `hd_alpha_downsamples` branch)
    would be invisible to the tests.
    """
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if not p.any():
                p.copy_(scale * torch.randn(p.shape, generator=gen, dtype=torch.float32))
    return model


def tiny_deepseek_vl(
    save_dir: str | Path, style: str = "1.3b", *, seed: int = 0, **config_kwargs: Any
):
    """Build, save and reload a tiny random DeepSeek-VL; returns (model, tokenizer, save_dir).

    The model (SDPA attention, eval mode), the tokenizer and `preprocessor_config.json` are
    written to `save_dir`; the model is loaded back with `AutoModelForCausalLM.from_pretrained`.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from hg_lmm.lmm.deepseek_vl import MultiModalityCausalLM, register
    from hg_lmm.testing.tiny_models import tiny_tokenizer

    register()
    save_dir = Path(save_dir)
    tokenizer = tiny_tokenizer("deepseek_vl", save_dir)
    ids = {"bos": tokenizer.bos_token_id, "eos": tokenizer.eos_token_id}
    if tokenizer.pad_token_id is not None:
        ids["pad"] = tokenizer.pad_token_id
    config_kwargs.setdefault("vocab_size", len(tokenizer))
    config = tiny_deepseek_vl_config(style, token_ids=ids, **config_kwargs)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = randomize_(MultiModalityCausalLM(config), seed=seed)
    model.save_pretrained(save_dir)
    tiny_image_processor(style).save_pretrained(save_dir)
    model = AutoModelForCausalLM.from_pretrained(save_dir, attn_implementation="sdpa")
    return model.eval(), AutoTokenizer.from_pretrained(save_dir), save_dir


def _default_cache_dir(style: str) -> Path:
    if style not in STYLES:
        raise ValueError(f"unknown tiny DeepSeek-VL style {style!r}; expected one of {STYLES}")
    return Path("work_dirs/tiny_lmms") / f"deepseek_vl_{style}"


def _ensure_tiny_deepseek_vl(cache_dir: str | Path | None, style: str) -> Path:
    """Create the tiny DeepSeek-VL of `style` in `cache_dir` unless it is there; returns it."""
    from hg_lmm.testing.tiny_models import build_once

    cache_dir = _default_cache_dir(style) if cache_dir is None else Path(cache_dir)
    return build_once(cache_dir, lambda folder: tiny_deepseek_vl(folder, style))


def tiny_deepseek_vl_tokenizer(*, cache_dir: str | Path | None = None, style: str = "1.3b"):
    """The tokenizer of the cached tiny DeepSeek-VL (see `tiny_deepseek_vl_adapter`)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(_ensure_tiny_deepseek_vl(cache_dir, style))


def tiny_deepseek_vl_adapter(
    *, cache_dir: str | Path | None = None, style: str = "1.3b", **kwargs: Any
):
    """A frozen tiny DeepSeek-VL adapter of `style` ("1.3b" or "7b"), loaded from `cache_dir`.

    cache_dir defaults to work_dirs/tiny_lmms/deepseek_vl_<style>. The tiny model is created
    (deterministically, seed 0) and saved on first use; later calls load the saved copy through
    the same `build_deepseek_vl_adapter` path real checkpoints take. kwargs go to the builder
    (torch_dtype defaults to float32).
    """
    from hg_lmm.lmm.deepseek_vl.adapter import build_deepseek_vl_adapter

    cache_dir = _ensure_tiny_deepseek_vl(cache_dir, style)
    kwargs.setdefault("torch_dtype", "float32")
    return build_deepseek_vl_adapter(model_path=str(cache_dir), **kwargs)
