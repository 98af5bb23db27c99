"""Tiny Mini-Gemini models (Gemma or Vicuna/LLaMA decoder, plain or HD) for CPU tests and tiny
configs.

The CLIP tower sees 24 x 24 views in 8 x 8 patches (a 3 x 3 grid), the ConvNeXt four stages of
widths 8..32 (one block each) at A = 48 (A / 4 = 12: 4 x 4 aux patches per CLIP token); the HD
variant cuts a 48 x 48 CLIP input into 2 x 2 crops plus a global view, with A = 96, so that every
step of the released models (mining per crop and for the global view, the stitched 2g grid)
happens at toy size.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from hg_lmm.testing.tiny_models import build_once, tiny_llama_kwargs, tiny_tokenizer

VARIANTS = {
    # variant: (decoder template, HD)
    "gemma": ("gemma", False),
    "vicuna": ("vicuna", False),
    "vicuna_hd": ("vicuna", True),
}
TINY_MGM_VISION_LAYERS = (0, 1, 2, 3, 0, 1, 2, 3)  # 4 CLIP blocks; the head takes 8


def tiny_mgm_config(
    tokenizer: Any,
    *,
    variant: str = "vicuna",
    image_size: int = 24,
    patch_size: int = 8,
    vision_layers: int = 4,
    hidden_size: int = 32,
    text_layers: int = 2,
    heads: int = 4,
    aux_dims: tuple[int, ...] = (8, 16, 24, 32),
    aux_depths: tuple[int, ...] = (1, 1, 1, 1),
) -> Any:
    """The tiny MGM config of `variant` ("gemma", "vicuna", "vicuna_hd"), wired to `tokenizer`
    (its vocabulary before `<image>` is added, as the released configs are)."""
    from hg_lmm.lmm.mgm import MGMGemmaConfig, MGMLlamaConfig

    template, hd = VARIANTS[variant]
    grid = 2 if hd else 1
    text = tiny_llama_kwargs(
        vocab_size=len(tokenizer), hidden_size=hidden_size, text_layers=text_layers, heads=heads
    )
    mgm = dict(
        # Names only (the released configs name the towers' repos; our model reads the sizes).
        mm_vision_tower="tiny-clip",
        mm_vision_tower_aux="tiny-convnext",
        vision_tower_config=dict(
            hidden_size=hidden_size,
            intermediate_size=2 * hidden_size,
            num_hidden_layers=vision_layers,
            num_attention_heads=heads,
            image_size=image_size,
            patch_size=patch_size,
            projection_dim=hidden_size,
        ),
        vision_tower_aux_config=dict(depths=list(aux_depths), dims=list(aux_dims)),
        image_size_aux=2 * image_size * grid,
        image_grid=grid,
        image_global=hd,
        vision_feature_layers=list(TINY_MGM_VISION_LAYERS),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    if template == "gemma":
        text.update(num_key_value_heads=1, head_dim=hidden_size // heads)
        return MGMGemmaConfig(**text, **mgm)
    return MGMLlamaConfig(**text, **mgm)


def _tokenizer(variant: str, save_dir: Path) -> Any:
    return tiny_tokenizer(f"mgm_{VARIANTS[variant][0]}", save_dir)


def tiny_mgm(save_dir: str | Path, *, variant: str = "vicuna", seed: int = 0, **kwargs: Any):
    """Build, save and reload a tiny random MGM; returns (model, tokenizer, save_dir). Loaded
    back with `load_mgm` (SDPA attention), as released folders are."""
    from hg_lmm.lmm.mgm import mgm_model_class
    from hg_lmm.lmm.mgm.loading import load_mgm
    from hg_lmm.lmm.mgm.processing import mgm_tokenizer

    save_dir = Path(save_dir)
    tokenizer = _tokenizer(variant, save_dir)
    config = tiny_mgm_config(tokenizer, variant=variant, **kwargs)
    model_cls = mgm_model_class(config)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = model_cls(config)
    model.save_pretrained(save_dir)
    model = load_mgm(save_dir, torch_dtype=torch.float32)
    return model, mgm_tokenizer(save_dir), save_dir


def golden_tiny_mgm(save_dir: str | Path, recipe: dict) -> tuple[Any, Any, Path]:
    """A tiny MGM whose every tensor follows the hash rule of `hg_lmm.testing.golden` (keyed by
    state-dict name), saved to and reloaded from save_dir (the end-to-end fixture,
    tests/fixtures/mgm).

    recipe: {"variant": ..., "config": `tiny_mgm_config` arguments}. Returns (model in eval mode
    with eager attention, tokenizer as saved (no `<image>`), save_dir).
    """
    from transformers import AutoTokenizer

    from hg_lmm.lmm.mgm import mgm_model_class
    from hg_lmm.lmm.mgm.loading import load_mgm
    from hg_lmm.testing.golden import golden_state_dict

    save_dir = Path(save_dir)
    tokenizer = _tokenizer(recipe["variant"], save_dir)
    config = tiny_mgm_config(tokenizer, variant=recipe["variant"], **recipe.get("config", {}))
    model_cls = mgm_model_class(config)
    with torch.random.fork_rng(devices=[]):  # the random init is overwritten just below
        model = model_cls(config)
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    model.load_state_dict(golden_state_dict(shapes), strict=True)
    model.save_pretrained(save_dir)
    model = load_mgm(save_dir, torch_dtype=torch.float32, attn_implementation="eager")
    return model, AutoTokenizer.from_pretrained(save_dir), save_dir


def _ensure_tiny_mgm(variant: str, cache_dir: str | Path | None) -> Path:
    cache_dir = Path(cache_dir or f"work_dirs/tiny_lmms/mgm_{variant}")
    return build_once(cache_dir, lambda folder: tiny_mgm(folder, variant=variant))


def tiny_mgm_tokenizer(*, variant: str = "vicuna", cache_dir: str | Path | None = None) -> Any:
    """The tokenizer (with `<image>`) of the cached tiny MGM (see `tiny_mgm_adapter`)."""
    from hg_lmm.lmm.mgm.processing import mgm_tokenizer

    return mgm_tokenizer(_ensure_tiny_mgm(variant, cache_dir))


def tiny_mgm_adapter(
    *,
    variant: str = "vicuna",
    attention_grid: str = "fine",
    cache_dir: str | Path | None = None,
    **kwargs: Any,
):
    """A frozen tiny MGM adapter for tiny configs and the demo, loaded from `cache_dir` (default
    work_dirs/tiny_lmms/mgm_<variant>), built deterministically on first use."""
    from hg_lmm.lmm.mgm import build_mgm_adapter

    cache_dir = _ensure_tiny_mgm(variant, cache_dir)
    kwargs.setdefault("torch_dtype", "float32")
    return build_mgm_adapter(
        model_path=str(cache_dir),
        template=VARIANTS[variant][0],
        attention_grid=attention_grid,
        **kwargs,
    )
