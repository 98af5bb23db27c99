"""Tiny random LLaVA-NeXT models (Vicuna/Llama or Mistral decoder) for CPU tests and tiny configs.

The CLIP tower sees 24 x 24 views in 8 x 8 patches (a 3 x 3 base grid), and the grid pinpoints
are the real ones scaled by 24/336, so every aspect-ratio case of the 7B models (1x2, 2x1, 2x2,
1x3, 3x1 crops, unpadding, the newline column) happens at toy size.
"""

from __future__ import annotations

from pathlib import Path

import torch

from hg_lmm.testing.tiny_models import build_once, tiny_llama_kwargs, tiny_tokenizer

TINY_IMAGE_SIZE = 24
TINY_PINPOINTS = ((24, 48), (48, 24), (48, 48), (72, 24), (24, 72))
TINY_LLAVA_NEXT_VISION_LAYERS = (0, 1, 2, 3, 0, 1, 2, 3)  # 4 CLIP blocks; the head takes 8


def llava_next_config(tokenizer, vision: dict, text: dict, *, decoder: str, pinpoints):
    """A LlavaNextConfig of a CLIP tower (`vision`: CLIPVisionConfig arguments) and a decoder
    (`text`: LlamaConfig / MistralConfig arguments; decoder "vicuna" or "mistral"), wired to the
    special tokens of `tokenizer`, with LLaVA-v1.6's feature selection (penultimate layer, no
    CLS) and `pinpoints` (h, w)."""
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaNextConfig, MistralConfig

    text_cls = {"vicuna": LlamaConfig, "mistral": MistralConfig}[decoder]
    text = text_cls(
        **text,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return LlavaNextConfig(
        vision_config=CLIPVisionConfig(**vision),
        text_config=text,
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        pad_token_id=tokenizer.pad_token_id,
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
        image_grid_pinpoints=[list(p) for p in pinpoints],
    )


def tiny_llava_next_config(
    tokenizer,
    *,
    decoder: str = "vicuna",
    image_size: int = TINY_IMAGE_SIZE,
    patch_size: int = 8,
    vision_layers: int = 4,
    hidden_size: int = 32,
    text_layers: int = 2,
    heads: int = 4,
    kv_heads: int | None = None,
):
    """The tiny LlavaNextConfig (grid = image_size // patch_size; pinpoints scaled to
    image_size). kv_heads: the decoder's key/value heads (default: Mistral 2, as its 7B uses
    grouped queries; Llama `heads`)."""
    vision = dict(
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=vision_layers,
        num_attention_heads=heads,
        image_size=image_size,
        patch_size=patch_size,
        projection_dim=hidden_size,
    )
    text = tiny_llama_kwargs(
        vocab_size=len(tokenizer), hidden_size=hidden_size, text_layers=text_layers, heads=heads
    )
    if kv_heads is None:
        kv_heads = 2 if decoder == "mistral" else heads
    text["num_key_value_heads"] = kv_heads
    if decoder == "mistral":
        text["sliding_window"] = text["max_position_embeddings"]
    scale = image_size / TINY_IMAGE_SIZE
    pinpoints = [(int(h * scale), int(w * scale)) for h, w in TINY_PINPOINTS]
    return llava_next_config(tokenizer, vision, text, decoder=decoder, pinpoints=pinpoints)


def tiny_llava_next(save_dir: str | Path, *, seed: int = 0, decoder: str = "vicuna", **kwargs):
    """Build, save and reload a tiny random LLaVA-NeXT; returns (model, tokenizer, save_dir).

    Loaded back with `from_pretrained` and SDPA attention, as real checkpoints are; a
    `preprocessor_config.json` with the tiny view size and pinpoints is written next to it.
    """
    import json

    from transformers import AutoTokenizer, LlavaNextForConditionalGeneration

    save_dir = Path(save_dir)
    tokenizer = tiny_tokenizer("llava", save_dir)
    config = tiny_llava_next_config(tokenizer, decoder=decoder, **kwargs)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlavaNextForConditionalGeneration(config)
        # The stock init leaves image_newline uninitialised (torch.empty).
        model.image_newline.data.normal_(0, 1 / config.text_config.hidden_size**0.5)
    model.save_pretrained(save_dir)
    size = config.vision_config.image_size
    (save_dir / "preprocessor_config.json").write_text(
        json.dumps(
            {
                "crop_size": {"height": size, "width": size},
                "size": {"shortest_edge": size},
                "image_grid_pinpoints": config.image_grid_pinpoints,
                "image_processor_type": "LlavaNextImageProcessor",
            }
        )
    )
    model = LlavaNextForConditionalGeneration.from_pretrained(save_dir, attn_implementation="sdpa")
    return model.eval(), AutoTokenizer.from_pretrained(save_dir), save_dir


def _ensure_tiny_llava_next(decoder: str, cache_dir: str | Path | None) -> Path:
    cache_dir = Path(cache_dir or f"work_dirs/tiny_lmms/llava_next_{decoder}")
    return build_once(cache_dir, lambda folder: tiny_llava_next(folder, decoder=decoder))


def tiny_llava_next_tokenizer(*, decoder: str = "vicuna", cache_dir: str | Path | None = None):
    """The tokenizer of the cached tiny LLaVA-NeXT (see `tiny_llava_next_adapter`)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(_ensure_tiny_llava_next(decoder, cache_dir))


def tiny_llava_next_adapter(
    *,
    decoder: str = "vicuna",
    attention_grid: str = "fine",
    cache_dir: str | Path | None = None,
    **kwargs,
):
    """A frozen tiny LLaVA-NeXT adapter for tiny configs and the demo, loaded from `cache_dir`
    (default work_dirs/tiny_lmms/llava_next_<decoder>), built deterministically on first use."""
    from hg_lmm.lmm.llava_next import build_llava_next_adapter

    cache_dir = _ensure_tiny_llava_next(decoder, cache_dir)
    kwargs.setdefault("vision_layers", TINY_LLAVA_NEXT_VISION_LAYERS)
    kwargs.setdefault("torch_dtype", "float32")
    return build_llava_next_adapter(
        model_path=str(cache_dir), template=decoder, attention_grid=attention_grid, **kwargs
    )


def golden_tiny_llava_next(save_dir: str | Path, recipe: dict) -> tuple[object, object, Path]:
    """A tiny LLaVA-NeXT whose every tensor follows the hash rule of `hg_lmm.testing.golden`
    (keyed by state-dict name), saved to and reloaded from save_dir (the end-to-end fixture,
    tests/fixtures/llava_next).

    recipe: {"decoder": "vicuna" | "mistral", "config": `tiny_llava_next_config` arguments}.
    Returns (model in eval mode with eager attention, tokenizer, save_dir).
    """
    from transformers import AutoTokenizer, LlavaNextForConditionalGeneration

    from hg_lmm.testing.golden import golden_state_dict

    save_dir = Path(save_dir)
    tokenizer = tiny_tokenizer("llava", save_dir)
    config = tiny_llava_next_config(tokenizer, decoder=recipe["decoder"], **recipe["config"])
    with torch.random.fork_rng(devices=[]):  # the random init is overwritten just below
        model = LlavaNextForConditionalGeneration(config)
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    model.load_state_dict(golden_state_dict(shapes), strict=True)
    model.save_pretrained(save_dir)
    model = LlavaNextForConditionalGeneration.from_pretrained(save_dir, attn_implementation="eager")
    return model.eval(), AutoTokenizer.from_pretrained(save_dir), save_dir


def llava_next_7b_config(tokenizer, decoder: str):
    """llava-hf/llava-v1.6-{vicuna,mistral}-7b-hf's LlavaNextConfig (CLIP-L/14-336 and Vicuna-7B
    or Mistral-7B-Instruct-v0.2, vocabulary 32064 / 32064), with the special-token ids of
    `tokenizer`; for meta-device key lists and benchmarks at the real shapes."""
    from hg_lmm.lmm.llava_next.processing import DEFAULT_GRID_PINPOINTS
    from hg_lmm.testing.real_shapes import CLIP_L_336

    vision = dict(CLIP_L_336)
    text = dict(
        vocab_size=32064,
        hidden_size=4096,
        num_hidden_layers=32,
        num_attention_heads=32,
        rms_norm_eps=1e-5,
    )
    if decoder == "vicuna":
        text.update(intermediate_size=11008, num_key_value_heads=32, max_position_embeddings=4096)
    else:
        text.update(
            intermediate_size=14336,
            num_key_value_heads=8,
            max_position_embeddings=32768,
            rope_theta=1e6,
            sliding_window=None,
        )
    return llava_next_config(
        tokenizer, vision, text, decoder=decoder, pinpoints=DEFAULT_GRID_PINPOINTS
    )
