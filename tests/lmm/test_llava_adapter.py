"""LLaVA adapter: `extract` equals a plain HF forward gathered by hand; `answer` is consistent."""

from __future__ import annotations

import pytest
import torch

from hg_lmm.lmm.llava import TRAIN_PROMPT, LlavaAdapter
from tests.lmm._helpers import check_answer_is_teacher_forced

VISION_LAYERS = (0, 1, 2, 3, 0, 1, 2, 3)  # the tiny tower has 4 blocks; 8 picks are required


def _meta(size: int) -> dict:
    return {
        "padding": {"before_height": 0, "after_height": 0, "before_width": 0, "after_width": 0},
        "image_shape": {"height": size, "width": size},
        "padded_shape": {"height": size, "width": size},
    }


def _fake_processor(size: int):
    def process(image):
        return torch.zeros(3, size, size), _meta(size)

    return process


@pytest.fixture(scope="module")
def adapter(tiny_llava):
    model, tok, _ = tiny_llava
    size = model.config.vision_config.image_size
    return LlavaAdapter(
        lmm=model, tokenizer=tok, processor=_fake_processor(size), vision_layers=VISION_LAYERS
    )


def _sample(tok, size):
    prompt = tok(TRAIN_PROMPT).input_ids
    pieces = [("the red circle", 0), (" and", -1), (" the blue square", 1)]
    ids, mids = list(prompt), [-1] * len(prompt)
    for text, k in pieces:
        t = tok.encode(text, add_special_tokens=False)
        ids += t
        mids += [k] * len(t)
    return {
        "input_ids": torch.tensor(ids),
        "mask_ids": torch.tensor(mids),
        "pixel_values": torch.randn(3, size, size),
        "meta": _meta(size),
        "caption_start": len(prompt),
    }


def test_dims_from_config(adapter, tiny_llava):
    cfg = tiny_llava[0].config
    d = adapter.dims
    assert (d.num_layers, d.num_heads, d.hidden_size) == (
        cfg.text_config.num_hidden_layers,
        cfg.text_config.num_attention_heads,
        cfg.text_config.hidden_size,
    )
    vcfg = cfg.vision_config
    assert d.grid == vcfg.image_size // vcfg.patch_size
    assert d.vision_channels == cfg.text_config.hidden_size


def test_extract_matches_plain_forward(adapter, tiny_llava):
    model, tok, _ = tiny_llava
    size = model.config.vision_config.image_size
    s = _sample(tok, size)
    feats = adapter.extract(s)

    ids = s["input_ids"][None]
    with torch.no_grad():
        out = model(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            pixel_values=s["pixel_values"][None],
            output_attentions=True,
            output_hidden_states=True,
        )
        vis = model.vision_tower(s["pixel_values"][None], output_hidden_states=True).hidden_states
        proj = torch.cat([model.multi_modal_projector(vis[i + 1][:, 1:]) for i in VISION_LAYERS])
    g, n = adapter.dims.grid, adapter.dims.grid**2
    img = int((s["input_ids"] == model.config.image_token_index).nonzero())
    caption = torch.arange(s["caption_start"], len(s["input_ids"]))
    pos = caption + n - 1  # text after the <image> token shifts by N - 1
    attn = torch.stack([a[0][:, pos][:, :, img : img + n] for a in out.attentions])
    hidden = torch.stack(out.hidden_states[1:])[:, 0, pos]

    T = len(caption)
    assert feats.attn.shape == (adapter.dims.num_layers, adapter.dims.num_heads, T, g, g)
    assert (feats.attn.flatten(-2) - attn).abs().max() < 1e-5
    assert (feats.hidden - hidden).abs().max() < 1e-5
    assert (feats.vision - proj).abs().max() < 1e-5
    assert feats.vision.shape == (8, n, adapter.dims.vision_channels)
    assert torch.equal(feats.mask_ids, s["mask_ids"][caption])
    # the caption tokens of phrase 1 decode back to its text
    assert tok.decode(feats.token_ids[feats.mask_ids == 1]).strip() == "the blue square"


def test_lmm_stays_frozen(adapter):
    adapter.train()
    assert not adapter.lmm.training
    assert not any(p.requires_grad for p in adapter.lmm.parameters())


def test_answer_features_equal_teacher_forced(adapter):
    from PIL import Image

    check_answer_is_teacher_forced(adapter, Image.new("RGB", (8, 8)), "What is in the image?")


def test_bad_vision_layers(tiny_llava):
    model, tok, _ = tiny_llava
    with pytest.raises(ValueError, match="vision_layers"):
        LlavaAdapter(lmm=model, tokenizer=tok, processor=_fake_processor(24))
