"""Random LMMs at the released shapes, for benchmarks (scripts/benchmark.py).

`random_lmm_folder(name, folder)` writes, once, a model folder that the adapters' builders load
like a released checkpoint: the released config with random weights (bf16), a small tokenizer that
carries the family's special tokens (its ids are valid in the full vocabulary), and the image
processor config. Names:

- "deepseek-vl-1.3b", "deepseek-vl-7b": the released `config.json` of deepseek-ai/deepseek-vl-
  {1.3b,7b}-chat (tests/testing/test_real_shapes.py checks them against the test fixtures);
- "llava-1.5-7b": llava-hf/llava-1.5-7b-hf (CLIP-L/14-336 + Vicuna-7B, vocabulary 32064);
- "mgm-2b", "mgm-7b", "mgm-7b-hd": YanweiLi/MGM-2B, MGM-7B, MGM-7B-HD (`MGM_CONFIGS`; the
  folder holds every tensor, towers included, so it loads without the towers' repos);
- "tiny-deepseek-vl", "tiny-llava", "tiny-mgm": the tiny test models (seconds on CPU, for smoke
  runs).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch

_LANGUAGE = dict(
    model_type="llama",
    vocab_size=102400,
    max_position_embeddings=16384,
    rms_norm_eps=1e-06,
    rope_theta=10000.0,
    tie_word_embeddings=False,
    torch_dtype="bfloat16",
)
_SIGLIP = dict(image_size=384, model_name="siglip_large_patch16_384", select_feature="same")
# The CLIP-L/14-336 vision tower of LLaVA-1.5 and LLaVA-NeXT (CLIPVisionConfig arguments).
CLIP_L_336 = dict(
    hidden_size=1024,
    intermediate_size=4096,
    num_hidden_layers=24,
    num_attention_heads=16,
    image_size=336,
    patch_size=14,
    projection_dim=768,
    hidden_act="quick_gelu",
)
_CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
_CLIP_STD = [0.26862954, 0.26130258, 0.27577711]

# The released config.json files (architectures / model_type / torch_dtype fields aside).
DEEPSEEK_VL_CONFIGS: dict[str, dict[str, Any]] = {
    "deepseek-vl-1.3b": dict(
        vision_config=dict(
            cls="CLIPVisionTower", model_type="vision", params=dict(_SIGLIP, select_layer=-1)
        ),
        aligner_config=dict(
            cls="MlpProjector",
            model_type="aligner",
            params=dict(depth=2, input_dim=1024, n_embed=2048, projector_type="mlp_gelu"),
        ),
        language_config=dict(
            _LANGUAGE,
            hidden_size=2048,
            intermediate_size=5632,
            num_attention_heads=16,
            num_key_value_heads=16,
            num_hidden_layers=24,
        ),
    ),
    "deepseek-vl-7b": dict(
        vision_config=dict(
            cls="HybridVisionTower",
            model_type="vision",
            params=dict(
                concat_type="tuple",
                freeze_high=True,
                freeze_low=True,
                high_res_cfg=dict(
                    ckpt_path="",
                    image_size=1024,
                    model_name="sam_b_downsample",
                    output_dim=1024,
                    pixel_mean=_CLIP_MEAN,
                    pixel_std=_CLIP_STD,
                    select_feature="same",
                    select_layer=-1,
                ),
                low_res_cfg=dict(
                    _SIGLIP,
                    ckpt_path="",
                    output_dim=1024,
                    pixel_mean=[0.5, 0.5, 0.5],
                    pixel_std=[0.5, 0.5, 0.5],
                    select_layer=-1,
                ),
            ),
        ),
        aligner_config=dict(
            cls="MlpProjector",
            model_type="aligner",
            params=dict(
                depth=2,
                input_dim=1024,
                n_embed=4096,
                projector_type="low_high_hybrid_split_mlp_gelu",
            ),
        ),
        language_config=dict(
            _LANGUAGE,
            hidden_size=4096,
            intermediate_size=11008,
            num_attention_heads=32,
            num_key_value_heads=32,
            num_hidden_layers=30,
        ),
    ),
}
# YanweiLi/MGM-2B, MGM-7B and MGM-7B-HD: the decoder sizes of Gemma-2B and Vicuna-7B-v1.5 and MGM's
# fields as the model cards and upstream's training scripts give them (the hub is not reachable
# here to read the config.json files; tests/fixtures/mgm pins the resulting key lists).
_MGM_FIELDS = dict(
    mm_hidden_size=1024,
    mm_hidden_size_aux=2880,
    mm_projector_type="mlp2x_gelu",
    mm_vision_select_layer=-2,
    mm_vision_select_feature="patch",
    mm_vision_tower="openai/clip-vit-large-patch14-336",
    mm_vision_tower_aux="laion/CLIP-convnext_large_d_320.laion2B-s29B-b131K-ft-soup",
    image_size_aux=768,
    image_grid=1,
    image_global=False,
)
_VICUNA_7B = dict(
    vocab_size=32000,
    hidden_size=4096,
    intermediate_size=11008,
    num_hidden_layers=32,
    num_attention_heads=32,
    num_key_value_heads=32,
    max_position_embeddings=4096,
    rms_norm_eps=1e-5,
)
MGM_CONFIGS: dict[str, dict[str, Any]] = {
    "mgm-2b": dict(
        _MGM_FIELDS,
        model_type="mgm_gemma",
        vocab_size=256000,
        hidden_size=2048,
        intermediate_size=16384,
        num_hidden_layers=18,
        num_attention_heads=8,
        num_key_value_heads=1,
        head_dim=256,
        max_position_embeddings=8192,
        rms_norm_eps=1e-6,
    ),
    "mgm-7b": dict(_MGM_FIELDS, **_VICUNA_7B, model_type="mgm"),
    "mgm-7b-hd": dict(
        _MGM_FIELDS,
        **_VICUNA_7B,
        model_type="mgm",
        image_size_aux=1536,
        image_grid=2,
        image_global=True,
    ),  # fmt: skip
}
REAL_SHAPES = (*DEEPSEEK_VL_CONFIGS, "llava-1.5-7b", *MGM_CONFIGS)
TINY = ("tiny-deepseek-vl", "tiny-llava", "tiny-mgm")
NAMES = (*REAL_SHAPES, *TINY)


def family(name: str) -> str:
    """ "deepseek_vl", "llava" or "mgm"."""
    if name not in NAMES:
        raise ValueError(f"unknown LMM {name!r}; expected one of {NAMES}")
    for kind in ("llava", "mgm"):
        if kind in name:
            return kind
    return "deepseek_vl"


def _mgm_template(name: str) -> str:
    """The prompt template of an MGM name ("gemma" for MGM-2B)."""
    return "gemma" if name == "mgm-2b" else "vicuna"


def mgm_config(name: str, **overrides: Any) -> Any:
    """The MGM config of "mgm-2b", "mgm-7b" or "mgm-7b-hd" at its released sizes."""
    from hg_lmm.lmm.mgm import MGMGemmaConfig, MGMLlamaConfig

    fields = dict(MGM_CONFIGS[name], **overrides)
    gemma = fields.pop("model_type") == "mgm_gemma"
    return (MGMGemmaConfig if gemma else MGMLlamaConfig)(**fields)


def meta_mgm(name: str, **overrides: Any) -> Any:
    """Our MGM model of `name` (`mgm_config`) with its parameters on the meta device."""
    from accelerate import init_empty_weights

    from hg_lmm.lmm.mgm import mgm_model_class

    config = mgm_config(name, **overrides)
    with init_empty_weights(include_buffers=False):
        return mgm_model_class(config)(config)


def llava_1_5_7b_config(tokenizer: Any) -> Any:
    """llava-hf/llava-1.5-7b-hf's LlavaConfig, with the special-token ids of `tokenizer`."""
    from hg_lmm.testing.tiny_models import llava_config

    vision = dict(CLIP_L_336)
    text = dict(
        vocab_size=32064,
        hidden_size=4096,
        intermediate_size=11008,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=32,
        max_position_embeddings=4096,
        rms_norm_eps=1e-5,
    )
    return llava_config(tokenizer, vision, text, projector_hidden_act="gelu")


def _released_config(name: str, tokenizer: Any, num_layers: int | None = None) -> tuple[Any, Any]:
    """(config, model class) of `name` at its released shapes, wired to `tokenizer`'s special
    tokens; `num_layers` decoder layers instead of the released count when given."""
    if family(name) == "mgm":
        from hg_lmm.lmm.mgm import mgm_model_class

        config = mgm_config(
            name,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
        if num_layers is not None:
            config.num_hidden_layers = num_layers
        return config, mgm_model_class(config)
    if family(name) == "llava":
        from transformers import LlavaForConditionalGeneration

        config = llava_1_5_7b_config(tokenizer)
        if num_layers is not None:
            config.text_config.num_hidden_layers = num_layers
        return config, LlavaForConditionalGeneration
    from hg_lmm.lmm.deepseek_vl import MultiModalityCausalLM, MultiModalityConfig

    spec = copy.deepcopy(DEEPSEEK_VL_CONFIGS[name])
    spec["language_config"].update(
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id
    )
    if num_layers is not None:
        spec["language_config"]["num_hidden_layers"] = num_layers
    return MultiModalityConfig(**spec), MultiModalityCausalLM


def _build_random(name: str, folder: Path, seed: int, num_layers: int | None) -> None:
    """Write a random `name` model (bf16), its tokenizer and processor config to `folder`."""
    from hg_lmm.testing.tiny_models import tiny_tokenizer

    # A vocabulary large enough for whole words, so that prompts take about as many tokens as
    # with the released tokenizers (e.g. 18 for DeepSeek-VL's training prompt text).
    tokenizer = tiny_tokenizer(_tokenizer_kind(name), folder, vocab_size=4000)
    config, model_cls = _released_config(name, tokenizer, num_layers)
    if family(name) == "deepseek_vl":
        from hg_lmm.lmm.deepseek_vl.adapter import default_image_processor

        default_image_processor(config).save_pretrained(folder)
    default = torch.get_default_dtype()
    try:
        # Built directly in bf16: half the memory of a float32 build, the dtype it runs in.
        torch.set_default_dtype(torch.bfloat16)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = model_cls(config)
    finally:
        torch.set_default_dtype(default)
    model.save_pretrained(folder)


def _tokenizer_kind(name: str) -> str:
    if family(name) == "mgm":
        return f"mgm_{_mgm_template(name)}"
    return family(name)


def meta_adapter(*, name: str, tokenizer_dir: str | Path) -> Any:
    """The frozen adapter of `name` at its released shapes, its LMM on the meta device (no
    memory, no weights, no download), with a small tokenizer saved to `tokenizer_dir`.

    It has the released `dims`, so a head built on it has the released checkpoints' shapes: for
    checking a checkpoint's keys through the real config and loading path. It cannot run.
    """
    from hg_lmm.testing.tiny_models import tiny_tokenizer

    if name not in REAL_SHAPES:
        raise ValueError(f"unknown LMM {name!r}; expected one of {REAL_SHAPES}")
    tokenizer = tiny_tokenizer(_tokenizer_kind(name), tokenizer_dir, vocab_size=400)
    config, model_cls = _released_config(name, tokenizer)
    from accelerate import init_empty_weights

    # Parameters on the meta device, buffers real (timm calls .item() while building).
    with init_empty_weights(include_buffers=False):
        lmm = model_cls(config)
    if family(name) == "llava":
        from hg_lmm.lmm.llava import LlavaAdapter, LlavaImageProcessor

        processor = LlavaImageProcessor(image_size=config.vision_config.image_size)
        return LlavaAdapter(lmm=lmm, tokenizer=tokenizer, processor=processor)
    if family(name) == "mgm":
        from hg_lmm.lmm.mgm import MGMAdapter, MGMImageProcessor

        processor = MGMImageProcessor(image_size=config.image_size_aux)
        return MGMAdapter(
            lmm=lmm, tokenizer=tokenizer, processor=processor, template=_mgm_template(name)
        )
    from hg_lmm.lmm.deepseek_vl import DeepseekVLAdapter
    from hg_lmm.lmm.deepseek_vl.adapter import default_image_processor

    processor = default_image_processor(config)
    return DeepseekVLAdapter(lmm=lmm, tokenizer=tokenizer, processor=processor)


def random_lmm_folder(
    name: str, folder: str | Path, *, seed: int = 0, num_layers: int | None = None
) -> Path:
    """A model folder for `name` (see the module docstring), built on first use; returns it.

    num_layers: fewer decoder layers than released (quick runs); None keeps the released count.
    The tiny names ignore it and build the tiny test models.
    """
    from hg_lmm.testing.tiny_models import build_once

    if name == "tiny-llava":
        from hg_lmm.testing.tiny_models import tiny_llava

        return build_once(folder, tiny_llava)
    if name == "tiny-deepseek-vl":
        from hg_lmm.testing.tiny_deepseek_vl import tiny_deepseek_vl

        return build_once(folder, lambda f: tiny_deepseek_vl(f, "1.3b"))
    if name == "tiny-mgm":
        from hg_lmm.testing.tiny_mgm import tiny_mgm

        return build_once(folder, lambda f: tiny_mgm(f, variant="vicuna"))
    family(name)  # validates the name
    return build_once(folder, lambda f: _build_random(name, f, seed, num_layers))


def load_adapter(name: str, model_path: str | Path, **kwargs: Any) -> Any:
    """The frozen adapter of `name`'s family loaded from `model_path` through its builder (the
    path released checkpoints take). kwargs go to the builder (torch_dtype, eager_features)."""
    if family(name) == "mgm":
        from hg_lmm.lmm.mgm import build_mgm_adapter

        template = "vicuna" if name == "tiny-mgm" else _mgm_template(name)
        kwargs.setdefault("attention_grid", "base")  # the HG head's reading (MGM-7B-HD)
        return build_mgm_adapter(model_path=model_path, template=template, **kwargs)
    if family(name) == "llava":
        from hg_lmm.lmm.llava import build_llava_adapter
        from hg_lmm.testing.tiny_models import TINY_LLAVA_VISION_LAYERS

        if name == "tiny-llava":
            kwargs.setdefault("vision_layers", TINY_LLAVA_VISION_LAYERS)
        return build_llava_adapter(model_path=model_path, **kwargs)
    from hg_lmm.lmm.deepseek_vl import build_deepseek_vl_adapter

    return build_deepseek_vl_adapter(model_path=model_path, **kwargs)
