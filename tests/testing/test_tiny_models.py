"""The tiny-model kit: real special tokens, save/load round trips, fast forward passes."""

from __future__ import annotations

import time

import torch

from hg_lmm.testing.tiny_models import build_once, tiny_llava, tiny_tokenizer


def test_llava_tokenizer_has_image_token(llava_tokenizer):
    tok = llava_tokenizer
    ids = tok("USER: <image>\nPlease give me a description of the image. ASSISTANT:").input_ids
    assert ids[0] == tok.bos_token_id
    assert ids.count(tok.convert_tokens_to_ids("<image>")) == 1
    assert tok.unk_token_id not in ids
    piece = tok.encode("the red circle", add_special_tokens=False)
    assert tok.decode(piece) == "the red circle"


def test_deepseek_tokenizer_specials(deepseek_tokenizer):
    tok = deepseek_tokenizer
    assert tok.eos_token == "<｜end▁of▁sentence｜>"
    text = "User: <image_placeholder><image_placeholder>Describe.\n\nAssistant:"
    ids = tok(text).input_ids
    assert ids[0] == tok.bos_token_id
    assert ids.count(tok.convert_tokens_to_ids("<image_placeholder>")) == 2
    assert tok.decode(ids, skip_special_tokens=False).endswith("Describe.\n\nAssistant:")


def test_tokenizer_rejects_unknown_kind(tmp_path):
    import pytest

    with pytest.raises(ValueError, match="unknown tokenizer kind"):
        tiny_tokenizer("qwen", tmp_path)


def test_tiny_llava_forward_and_round_trip(tiny_llava, tmp_path):
    from transformers import LlavaForConditionalGeneration

    model, tok, _ = tiny_llava
    enc = tok(
        ["USER: <image>\nPlease give me a description of the image. ASSISTANT: the red circle"],
        return_tensors="pt",
    )
    size = model.config.vision_config.image_size
    pixels = torch.randn(1, 3, size, size)
    start = time.perf_counter()
    with torch.no_grad():
        out = model(**enc, pixel_values=pixels, output_attentions=True, output_hidden_states=True)
    assert time.perf_counter() - start < 5.0
    n_img = (size // model.config.vision_config.patch_size) ** 2
    seq = enc.input_ids.shape[1] - 1 + n_img  # the one <image> token expands to N positions
    cfg = model.config.text_config
    assert len(out.attentions) == cfg.num_hidden_layers
    assert out.attentions[0].shape == (1, cfg.num_attention_heads, seq, seq)
    assert torch.allclose(out.attentions[0].sum(-1), torch.ones(()), atol=1e-5)  # probabilities
    assert len(out.hidden_states) == cfg.num_hidden_layers + 1

    model.save_pretrained(tmp_path)
    again = LlavaForConditionalGeneration.from_pretrained(tmp_path, attn_implementation="eager")
    with torch.no_grad():
        out2 = again.eval()(**enc, pixel_values=pixels)
    assert torch.equal(out.logits, out2.logits)


def test_building_the_cached_model_leaves_the_random_state(tmp_path):
    """A head seeded and built after the tiny LMM starts the same whether its cache existed:
    the demo's untrained head is then the one training starts from."""
    torch.manual_seed(0)
    before = torch.get_rng_state()
    build_once(tmp_path / "llava", tiny_llava)
    assert (tmp_path / "llava" / "config.json").is_file()
    assert torch.equal(torch.get_rng_state(), before)
