"""DeepSeek-VL adapter, both tiny styles: `extract` equals a plain forward gathered by hand, the
vision features equal the aligner on hook-captured blocks, `answer` is consistent, loading
round-trips through the builder, and the HG head runs on the features."""

from __future__ import annotations

import copy
import logging

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from hg_lmm.lmm.deepseek_vl import DeepseekVLAdapter, build_deepseek_vl_adapter
from hg_lmm.lmm.deepseek_vl.processing import (
    DEEPSEEK_VL_IMAGE_TAG,
    DEEPSEEK_VL_STOP,
    deepseek_vl_chat_prompt,
    encode_deepseek_vl_prompt,
)
from hg_lmm.testing.tiny_deepseek_vl import (
    STYLES,
    tiny_deepseek_vl,
    tiny_deepseek_vl_adapter,
    tiny_deepseek_vl_tokenizer,
    tiny_image_processor,
)
from tests.lmm._helpers import block_outputs, check_answer_is_teacher_forced

QUESTION = "What is in the image?"


@pytest.fixture(scope="module", params=STYLES)
def built(request, tmp_path_factory):
    """(style, model folder, adapter loaded from it by the builder), once per style."""
    style = request.param
    _, _, save_dir = tiny_deepseek_vl(tmp_path_factory.mktemp(f"tiny_ds_{style}"), style)
    adapter = build_deepseek_vl_adapter(model_path=save_dir, torch_dtype="float32")
    return style, save_dir, adapter


def _image(seed: int = 0, size: tuple[int, int] = (30, 20)) -> Image.Image:
    """A non-square RGB image (w, h), so the meta record has padding."""
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


def _sample(adapter: DeepseekVLAdapter) -> dict:
    """Training prompt (BOS, expanded placeholders) + a caption built piece by piece."""
    tok = adapter.tokenizer
    prompt = tok(adapter.train_prompt).input_ids
    pieces = [("the red circle", 0), (" and", -1), (" the blue square", 1), (".", -1)]
    ids, mids = list(prompt), [-1] * len(prompt)
    for text, k in pieces:
        t = tok.encode(text, add_special_tokens=False)
        ids += t
        mids += [k] * len(t)
    pixel_values, meta = adapter.preprocess(_image())
    return {
        "input_ids": torch.tensor(ids),
        "mask_ids": torch.tensor(mids),
        "pixel_values": pixel_values,
        "meta": meta,
        "caption_start": len(prompt),
    }


def _hand_vision_features(model, pixel_values: torch.Tensor) -> torch.Tensor:
    """[3, S, S] -> [V, N, C]: the selected blocks, captured during a plain vision forward, each
    through the aligner (7B: SAM block -> neck -> bilinear resize -> downsamples, paired with the
    SigLIP block, through the hybrid aligner)."""
    low_layers, high_layers = model.config.feature_layers()
    x = pixel_values[None]
    vm = model.vision_model
    if high_layers is None:
        lo = block_outputs(vm.vision_tower.blocks, lambda: vm(x))
        return torch.cat([model.aligner(lo[i]) for i in low_layers])
    sam = vm.vision_tower_high.vision_tower
    vit = vm.vision_tower_low.vision_tower
    lo = block_outputs(vit.blocks, lambda: vm(x))
    hi = block_outputs(sam.blocks, lambda: vm(x))
    size = sam.settings.downsample_input_size

    def project(tokens: torch.Tensor) -> torch.Tensor:
        y = F.interpolate(sam.neck(tokens.permute(0, 3, 1, 2)), size=(size, size), mode="bilinear")
        return sam.downsamples(y).flatten(2).transpose(1, 2)

    high = torch.cat([project(hi[i]) for i in high_layers])
    low = torch.cat([lo[i] for i in low_layers])
    return model.aligner((high, low))


def test_dims_and_prompts_from_config(built):
    style, _, adapter = built
    cfg = adapter.lmm.config
    lcfg, d = cfg.language_config, adapter.dims
    assert (d.num_layers, d.num_heads, d.hidden_size) == (
        lcfg.num_hidden_layers,
        lcfg.num_attention_heads,
        lcfg.hidden_size,
    )
    assert d.grid == 4 and d.num_image_tokens == cfg.num_image_tokens == 16
    assert d.vision_channels == cfg.aligner_config.params["n_embed"]
    assert d.vision_layers == cfg.feature_layers()[0]
    assert d.image_size == {"1.3b": 32, "7b": 64}[style]  # 7B: the SAM (high-res) input
    assert adapter.processor.image_size == d.image_size

    tok, n = adapter.tokenizer, d.num_image_tokens
    assert adapter.train_prompt == (
        "User: " + DEEPSEEK_VL_IMAGE_TAG * n + "Please give me a description of the image.\n\n"
        "Assistant:"
    )
    ids = torch.tensor(tok(adapter.train_prompt).input_ids)
    assert ids[0] == tok.bos_token_id
    assert int((ids == adapter.image_token_id).sum()) == n
    # The chat prompt is the official template with the tag already expanded: its ids equal
    # those of tokenising the one-tag prompt and expanding afterwards, as upstream does.
    chat = torch.tensor(tok(adapter.chat_prompt(QUESTION)).input_ids)
    official = deepseek_vl_chat_prompt(DEEPSEEK_VL_IMAGE_TAG + QUESTION)
    assert adapter.chat_prompt(QUESTION).startswith("You are a helpful language")
    assert torch.equal(chat, encode_deepseek_vl_prompt(tok, official, n))
    assert tok.eos_token == DEEPSEEK_VL_STOP
    assert tok.eos_token_id == adapter.language_model.config.eos_token_id


def test_extract_matches_plain_forward(built):
    _, _, adapter = built
    model, tok = adapter.lmm, adapter.tokenizer
    s = _sample(adapter)
    feats = adapter.extract(s)

    ids = s["input_ids"][None]
    image_mask = ids == tok.convert_tokens_to_ids(DEEPSEEK_VL_IMAGE_TAG)
    with torch.no_grad():
        out = model(
            input_ids=ids,
            pixel_values=s["pixel_values"][None, None],
            images_seq_mask=image_mask,
            output_attentions=True,
            output_hidden_states=True,
        )
        vision = _hand_vision_features(model, s["pixel_values"])
    img = image_mask[0].nonzero().flatten()
    caption = torch.arange(s["caption_start"], ids.shape[1])  # positions do not move
    attn = torch.stack([a[0][:, caption][:, :, img] for a in out.attentions])
    hidden = torch.stack(out.hidden_states[1:])[:, 0, caption]

    d, T = adapter.dims, len(caption)
    assert feats.attn.shape == (d.num_layers, d.num_heads, T, d.grid, d.grid)
    assert feats.hidden.shape == (d.num_layers, T, d.hidden_size)
    assert feats.vision.shape == (8, d.num_image_tokens, d.vision_channels)
    assert feats.pixel_values.shape == (3, d.image_size, d.image_size)
    assert (feats.attn.flatten(-2) - attn).abs().max() < 1e-5
    assert (feats.hidden - hidden).abs().max() < 1e-5
    assert (feats.vision - vision).abs().max() < 1e-5
    assert torch.equal(feats.mask_ids, s["mask_ids"][caption])
    assert tok.decode(feats.token_ids[feats.mask_ids == 1]).strip() == "the blue square"
    assert feats.meta == s["meta"]


def test_extract_from_image_uses_the_processor(built):
    _, _, adapter = built
    s = _sample(adapter)
    from_pixels = adapter.extract(s)
    from_image = adapter.extract(
        {k: s[k] for k in ("input_ids", "mask_ids", "caption_start")} | {"image": _image()}
    )
    assert torch.equal(from_image.attn, from_pixels.attn)
    assert from_image.meta == from_pixels.meta
    assert from_image.meta["image_shape"] != from_image.meta["padded_shape"]


def test_lmm_stays_frozen(built):
    _, _, adapter = built
    adapter.train()
    assert adapter.training and not adapter.lmm.training
    assert not any(m.training for m in adapter.lmm.modules())
    assert not any(p.requires_grad for p in adapter.lmm.parameters())


def test_answer_features_equal_teacher_forced(built):
    check_answer_is_teacher_forced(built[2], _image(1), QUESTION)


def test_generation_stops_at_eos_and_drops_it(built, monkeypatch):
    """With the stop token set to a later greedy token, decoding ends just before it."""
    _, _, adapter = built
    pixel_values, _ = adapter.preprocess(_image(1))
    prompt = torch.tensor(adapter.tokenizer(adapter.chat_prompt(QUESTION)).input_ids)
    full = adapter.generate_ids(prompt, pixel_values, max_new_tokens=6)
    assert len(full) == 6, "the random tiny model should not emit its eos within 6 tokens"
    later = [int(t) for t in full[1:] if t != full[0]]
    assert later, f"the tiny model repeats one token ({full.tolist()}); pick another image"
    stop = later[0]  # the answer before it is not empty
    tok = copy.deepcopy(adapter.tokenizer)
    tok.eos_token = tok.convert_ids_to_tokens(stop)
    monkeypatch.setattr(adapter, "tokenizer", tok)
    cut = adapter.generate_ids(prompt, pixel_values, max_new_tokens=6)
    first = int((full == stop).nonzero()[0])
    assert torch.equal(cut, full[:first])
    # Stopped by the stop token, every answer token was fed back during generation (no extra
    # step); its features still equal the teacher-forced ones.
    ans = check_answer_is_teacher_forced(adapter, _image(1), QUESTION)
    assert torch.equal(ans.token_ids, cut)


def test_embed_inputs_needs_one_expanded_image(built):
    _, _, adapter = built
    tok = adapter.tokenizer
    image_embeds = torch.zeros(adapter.dims.num_image_tokens, adapter.dims.hidden_size)
    one_tag = torch.tensor(tok("User: " + DEEPSEEK_VL_IMAGE_TAG + "Hi").input_ids)
    with pytest.raises(ValueError, match="expanded"):
        adapter.embed_inputs(one_tag, image_embeds)
    ids = torch.tensor(tok(adapter.train_prompt).input_ids)
    inputs = adapter.embed_inputs(ids, image_embeds)
    text = ids != adapter.image_token_id
    assert torch.equal(inputs.image_positions, (~text).nonzero().flatten())
    assert torch.equal(inputs.token_positions[text], torch.arange(len(ids))[text])
    assert (inputs.token_positions[~text] == -1).all()


def test_builder_round_trip(built, tmp_path, caplog):
    style, _, adapter = built
    adapter.lmm.save_pretrained(tmp_path)
    adapter.tokenizer.save_pretrained(tmp_path)
    # Without preprocessor_config.json the builder falls back to the config's defaults, which
    # are the tiny styles' own processors, and says so.
    with caplog.at_level(logging.WARNING, logger="hg_lmm.lmm.deepseek_vl.adapter"):
        loaded = build_deepseek_vl_adapter(model_path=tmp_path, torch_dtype="float32")
    assert "preprocessor_config.json" in caplog.text
    assert vars(loaded.processor) == vars(tiny_image_processor(style))
    # The builder loads the decoder with SDPA: features record their rows alongside it.
    assert loaded.lmm.config.language_config._attn_implementation == "sdpa"
    layer = loaded.language_model.model.layers[0]
    assert type(layer.self_attn).__name__ == "LlamaSdpaAttention"
    ref, new = adapter.lmm.state_dict(), loaded.lmm.state_dict()
    assert ref.keys() == new.keys() and all(torch.equal(ref[k], new[k]) for k in ref)
    assert loaded.dims == adapter.dims
    s = _sample(adapter)
    a, b = adapter.extract(s), loaded.extract(s)
    assert torch.equal(a.attn, b.attn) and torch.equal(a.hidden, b.hidden)
    assert torch.equal(a.vision, b.vision)


def test_builder_dtype_and_layer_overrides(built):
    _, save_dir, _ = built
    layers = (3, 2, 1, 0, 0, 1, 2, 3)
    adapter = build_deepseek_vl_adapter(
        model_path=save_dir, torch_dtype="bfloat16", vision_layers=layers, high_res_layers=layers
    )
    assert adapter.dtype == torch.bfloat16 and adapter.dims.vision_layers == layers
    sample = _sample(adapter)
    feats = adapter.extract(sample)
    assert feats.attn.dtype == torch.float32 and feats.vision.shape[0] == len(layers)
    # In the LMM's own dtype (what a training step keeps): the same values, rounded.
    native = adapter.extract_batch([sample], dtype=None)[0]
    assert {native.attn.dtype, native.hidden.dtype, native.vision.dtype} == {torch.bfloat16}
    assert torch.equal(native.vision.float(), feats.vision)
    assert torch.equal(native.hidden.float(), feats.hidden)
    assert torch.allclose(native.attn.float(), feats.attn, rtol=1e-2, atol=1e-6)
    assert native.pixel_values.dtype == torch.float32


def test_bad_tokenizer(built, tmp_path):
    _, _, adapter = built
    from hg_lmm.testing.tiny_models import tiny_tokenizer

    with pytest.raises(ValueError, match="<image_placeholder>"):
        DeepseekVLAdapter(
            lmm=adapter.lmm,
            tokenizer=tiny_tokenizer("llava", tmp_path),
            processor=adapter.processor,
        )


@pytest.mark.parametrize("style", STYLES)
def test_cached_tiny_adapter(style, tmp_path):
    cache = tmp_path / "cache" / style
    first = tiny_deepseek_vl_adapter(cache_dir=cache, style=style)
    again = tiny_deepseek_vl_adapter(cache_dir=cache, style=style)
    assert sorted(p.name for p in cache.parent.iterdir()) == [style]  # no half-built leftovers
    assert isinstance(first, DeepseekVLAdapter) and first.dims == again.dims
    assert first.dims.image_size == {"1.3b": 32, "7b": 64}[style]
    a, b = first.lmm.state_dict(), again.lmm.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    tok = tiny_deepseek_vl_tokenizer(cache_dir=cache, style=style)
    assert tok.get_vocab() == first.tokenizer.get_vocab()


def test_hg_head_runs_on_the_features(built):
    from hg_lmm.heads.hg import HGHead

    _, _, adapter = built
    s = _sample(adapter)
    feats = adapter.extract(s)
    head = HGHead(dims=adapter.dims).eval()
    with torch.no_grad():
        logits = head(feats)["logits"]
    shape = s["meta"]["image_shape"]
    n = int(feats.mask_ids.max()) + 1
    assert logits.shape == (n, shape["height"], shape["width"])
    assert torch.isfinite(logits).all()
