"""Tiny random LMMs and tokenizers for CPU tests, the demo and benchmarks.

Everything is built from configs in code in seconds, with no download, then saved with
`save_pretrained` and loaded back with `from_pretrained`, so that the tested loading path is the one
real checkpoints take.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

# Words the toy data and the prompts use; the BPE merges learnt from it keep sequences short.
_CORPUS = [
    "Please give me a description of the image.",
    "You are a helpful language and vision assistant. You are able to understand the visual "
    "content that the user provides, and assist the user with a variety of tasks using natural "
    "language.",
    "the red circle. the green square. the blue triangle. the yellow star. the two red circles.",
    "a big blue square on the left, a small green circle on the right, grass and sky.",
    "the white background, the black shape, orange purple pink brown gray cyan magenta.",
    "What is in the image? Where is the object? Segment the thing that is round.",
    "There is a red circle and a blue square in the image. Sure, it is the red circle.",
    "User: Assistant: USER: ASSISTANT: top bottom middle center upper lower corner above below.",
    "0 1 2 3 4 5 6 7 8 9 , . ; : ! ? ' \" ( ) [ ] - _ / \\ @ # $ % & * + = < > ^ ` { } | ~",
]

_SPECIALS = {
    # LLaVA-1.5 (Vicuna) uses the Llama sentencepiece tokenizer plus one added `<image>` token.
    "llava": dict(bos="<s>", eos="</s>", unk="<unk>", pad="<pad>", extra=["<image>"]),
    # MGM's released tokenizers have no `<image>` (F-LMM adds it): Vicuna's Llama tokenizer, and
    # Gemma's with its turn markers.
    "mgm_vicuna": dict(bos="<s>", eos="</s>", unk="<unk>", pad="<pad>", extra=[]),
    "mgm_gemma": dict(
        bos="<bos>",
        eos="<eos>",
        unk="<unk>",
        pad="<pad>",
        extra=["<start_of_turn>", "<end_of_turn>"],
    ),
    # DeepSeek-VL uses a byte-level BPE LlamaTokenizerFast with these names.
    "deepseek_vl": dict(
        bos="<｜begin▁of▁sentence｜>",
        eos="<｜end▁of▁sentence｜>",
        unk=None,
        pad="<｜▁pad▁｜>",
        extra=["<image_placeholder>"],
    ),
}


def tiny_tokenizer(kind: str, save_dir: str | Path, vocab_size: int = 400):
    """Train a tiny `LlamaTokenizerFast` that carries the real special tokens of `kind`.

    kind: "llava" (sentencepiece-style metaspace BPE, `<image>`) or "deepseek_vl" (byte-level BPE,
    `<image_placeholder>`, `<｜end▁of▁sentence｜>`). Saved to `save_dir` and loaded back through
    `AutoTokenizer.from_pretrained`.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import AutoTokenizer, LlamaTokenizerFast

    if kind not in _SPECIALS:
        raise ValueError(f"unknown tokenizer kind {kind!r}; expected one of {sorted(_SPECIALS)}")
    spec = _SPECIALS[kind]
    specials = [t for t in (spec["unk"], spec["bos"], spec["eos"], spec["pad"]) if t]
    if kind in ("llava", "mgm_vicuna", "mgm_gemma"):
        tok = Tokenizer(models.BPE(unk_token=spec["unk"]))
        tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", add_prefix_space=True)
        tok.decoder = decoders.Metaspace(replacement="▁", add_prefix_space=True)
        alphabet = ["\n"] + [chr(c) for c in range(32, 127)]
    else:
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        alphabet = pre_tokenizers.ByteLevel.alphabet()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=alphabet,
        show_progress=False,
    )
    tok.train_from_iterator(_CORPUS, trainer=trainer)
    fast = LlamaTokenizerFast(
        tokenizer_object=tok,
        bos_token=spec["bos"],
        eos_token=spec["eos"],
        unk_token=spec["unk"],
        pad_token=spec["pad"],
        add_bos_token=True,
        add_eos_token=False,
        legacy=False,
    )
    if spec["extra"]:
        fast.add_special_tokens({"additional_special_tokens": spec["extra"]})
    save_dir = Path(save_dir)
    fast.save_pretrained(save_dir)
    return AutoTokenizer.from_pretrained(save_dir)


def tiny_llama_kwargs(
    *, vocab_size: int, hidden_size: int, text_layers: int, heads: int, **extra: object
) -> dict[str, object]:
    """LlamaConfig arguments of the tiny decoders (both LMM families use a Llama)."""
    return dict(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=text_layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        max_position_embeddings=512,
        **extra,
    )


def llava_config(tokenizer, vision: dict, text: dict, **llava: object):
    """A LlavaConfig of a CLIP vision tower (`vision`: CLIPVisionConfig arguments) and a Llama
    (`text`: LlamaConfig arguments), wired to the special tokens of `tokenizer`: bos/eos/pad ids
    and the `<image>` token; LLaVA-1.5's feature selection (penultimate layer, no CLS)."""
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig

    text = LlamaConfig(
        **text,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return LlavaConfig(
        vision_config=CLIPVisionConfig(**vision),
        text_config=text,
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        pad_token_id=tokenizer.pad_token_id,
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
        **llava,
    )


def tiny_llava_config(
    tokenizer,
    *,
    image_size: int = 64,
    patch_size: int = 8,
    vision_layers: int = 4,
    hidden_size: int = 32,
    text_layers: int = 2,
    heads: int = 4,
):
    """A LlavaConfig with a CLIP-L-shaped (but tiny) vision tower and a tiny Llama.

    grid = image_size // patch_size (64 // 8 = 8 by default, N = 64 image tokens).
    """
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
    return llava_config(tokenizer, vision, text)


def tiny_llava(save_dir: str | Path, *, seed: int = 0, **config_kwargs):
    """Build, save and reload a tiny random LLaVA; returns (model, tokenizer, save_dir).

    The model and tokenizer are written to `save_dir` with `save_pretrained` and read back with
    `from_pretrained` (SDPA attention, as the builders load real models; `output_attentions=True`
    falls back to the eager attention and returns probabilities).
    """
    from transformers import AutoTokenizer, LlavaForConditionalGeneration

    save_dir = Path(save_dir)
    tokenizer = tiny_tokenizer("llava", save_dir)
    config = tiny_llava_config(tokenizer, **config_kwargs)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlavaForConditionalGeneration(config)
    model.save_pretrained(save_dir)
    model = LlavaForConditionalGeneration.from_pretrained(save_dir, attn_implementation="sdpa")
    return model.eval(), AutoTokenizer.from_pretrained(save_dir), save_dir


TINY_LLAVA_VISION_LAYERS = (0, 1, 2, 3, 0, 1, 2, 3)  # the tiny CLIP has 4 blocks; the head takes 8


def build_once(cache_dir: str | Path, build: Callable[[Path], object]) -> Path:
    """Run `build(folder)` to fill `cache_dir` unless it already holds a model; returns it.

    The model is built next to the target and renamed into place, so concurrent processes (e.g.
    two evaluation ranks) never see half a model.
    """
    cache_dir = Path(cache_dir)
    if not (cache_dir / "config.json").is_file():
        import shutil
        import tempfile

        cache_dir.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=cache_dir.parent, prefix=".building-"))
        # The caller's random state is left as it was: a model built after this (e.g. a head
        # seeded by the training config) starts the same whether the cache existed or not.
        with torch.random.fork_rng(devices=[]):
            build(tmp)
        try:
            tmp.rename(cache_dir)
        except OSError:  # another process finished first; its copy is identical
            shutil.rmtree(tmp, ignore_errors=True)
    return cache_dir


def _ensure_tiny_llava(cache_dir: str | Path) -> Path:
    """Create the tiny LLaVA in `cache_dir` unless it is already there; returns the folder."""
    return build_once(cache_dir, tiny_llava)


def tiny_llava_tokenizer(*, cache_dir: str | Path = "work_dirs/tiny_lmms/llava"):
    """The tokenizer of the cached tiny LLaVA (see `tiny_llava_adapter`)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(_ensure_tiny_llava(cache_dir))


def tiny_llava_adapter(*, cache_dir: str | Path = "work_dirs/tiny_lmms/llava", **kwargs):
    """A frozen tiny LLaVA adapter for tiny configs and the demo, loaded from `cache_dir`.

    The tiny model is created (deterministically, seed 0) and saved on first use; later calls
    load the saved copy through the same `from_pretrained` path real checkpoints take.
    """
    from hg_lmm.lmm.llava import build_llava_adapter

    cache_dir = _ensure_tiny_llava(cache_dir)
    kwargs.setdefault("vision_layers", TINY_LLAVA_VISION_LAYERS)
    kwargs.setdefault("torch_dtype", "float32")
    return build_llava_adapter(model_path=str(cache_dir), **kwargs)
