"""`extract_group`: the captions of one image over its prompt's KV cache give the features of the
full-sequence path (`extract_batch`), for every adapter that shares, with captions of different
lengths batched (right padding) and in several caption passes; where sharing does not apply it
says so and runs the full path."""

from __future__ import annotations

import logging

import pytest
import torch

from hg_lmm.lmm.processors import letterbox_meta
from tests.lmm._helpers import eager_reference, vision_calls

ADAPTERS = (
    "llava",
    "deepseek_vl_1.3b",
    "deepseek_vl_7b",
    "mgm_gemma",
    "mgm_vicuna",
    "mgm_vicuna_hd",
)
# Captions of 1 to 9 tokens, one phrase or several: a batch of them is right-padded.
CAPTIONS = [
    [("the red circle", 0), (" and", -1), (" the blue square", 1)],
    [("a", 0)],
    [("the green star", 0), (",", -1), (" the sky", 1), (" and the grass", 2), (".", -1)],
    [("a big blue square on the left", 0)],
]


@pytest.fixture(scope="module", params=ADAPTERS)
def adapter(request, tmp_path_factory):
    folder = tmp_path_factory.mktemp(request.param)
    if request.param == "llava":
        from hg_lmm.testing.tiny_models import tiny_llava_adapter

        return tiny_llava_adapter(cache_dir=folder)
    if request.param.startswith("mgm_"):
        from hg_lmm.testing.tiny_mgm import tiny_mgm_adapter

        # MGM-HD reads its attention through its own grid_attention (global + crops).
        return tiny_mgm_adapter(variant=request.param[4:], cache_dir=folder)
    from hg_lmm.testing.tiny_deepseek_vl import tiny_deepseek_vl_adapter

    return tiny_deepseek_vl_adapter(cache_dir=folder, style=request.param.rsplit("_", 1)[1])


def _samples(adapter, captions=CAPTIONS) -> list[dict]:
    """One image (the same pixels), one sample per caption: prompt, then the caption pieces."""
    tok = adapter.tokenizer
    prompt = tok(adapter.train_prompt).input_ids
    size = adapter.dims.image_size
    pixels = torch.randn(3, size, size, generator=torch.Generator().manual_seed(3))
    out = []
    for pieces in captions:
        ids, mids = list(prompt), [-1] * len(prompt)
        for text, k in pieces:
            t = tok.encode(text, add_special_tokens=False)
            ids, mids = ids + t, mids + [k] * len(t)
        out.append(
            {
                "input_ids": torch.tensor(ids),
                "mask_ids": torch.tensor(mids),
                "pixel_values": pixels,
                "meta": letterbox_meta(size, size, size),
                "caption_start": len(prompt),
            }
        )
    return out


def _assert_same(shared, full, atol: float = 1e-5) -> None:
    assert len(shared) == len(full)
    for s, f in zip(shared, full):
        assert s.attn.shape == f.attn.shape and s.hidden.shape == f.hidden.shape
        assert float((s.attn - f.attn).abs().max()) < atol
        assert float((s.hidden - f.hidden).abs().max()) < atol
        # A batch of images through the 7B towers is not bit-identical to one image alone.
        assert float((s.vision - f.vision).abs().max()) < atol
        assert torch.equal(s.mask_ids, f.mask_ids) and torch.equal(s.token_ids, f.token_ids)
        assert s.meta == f.meta and torch.equal(s.pixel_values, f.pixel_values)


@pytest.mark.parametrize("batch_size", [None, 3, 1])
def test_group_equals_the_full_sequence_path(adapter, batch_size):
    """float32, 1e-5: the rows read against the cached keys and the caption tokens' hidden
    states equal those of one full forward per caption; one vision pass for the group."""
    samples = _samples(adapter)
    full = adapter.extract_batch(samples)
    groups = []
    assert (
        vision_calls(
            adapter, lambda: groups.append(adapter.extract_group(samples, batch_size=batch_size))
        )
        == 1
    )
    _assert_same(groups[0], full)
    # ... and the eager reference (every attention map of the whole sequence), one by one.
    with eager_reference(adapter):
        _assert_same(groups[0], [adapter.extract(s) for s in samples])


def test_prefix_runs_once_and_captions_in_passes(adapter):
    """The decoder runs once over the prompt, then once per batch of captions, each pass over
    the caption tokens only (the prompt is not recomputed)."""
    decoder = adapter.language_model.get_decoder()
    lengths = []
    handle = decoder.register_forward_pre_hook(
        lambda _m, _a, kw: lengths.append(tuple(kw["inputs_embeds"].shape[:2])), with_kwargs=True
    )
    try:
        samples = _samples(adapter)
        adapter.extract_group(samples, batch_size=3)
    finally:
        handle.remove()
    # The image's decoder tokens (MGM-HD: the global view's and the crops').
    image_embeds, _ = adapter.encode_image(samples[0]["pixel_values"][None])
    prompt = adapter.embed_inputs(
        samples[0]["input_ids"][: samples[0]["caption_start"]], image_embeds
    ).embeds.shape[1]
    tails = [len(s["input_ids"]) - s["caption_start"] for s in samples]
    assert lengths == [(1, prompt), (3, max(tails[:3])), (1, tails[3])]
    # iter_group hands over one pass at a time (the caller can drop it before the next).
    lengths.clear()
    handle = decoder.register_forward_pre_hook(
        lambda _m, _a, kw: lengths.append(kw["inputs_embeds"].shape[0]), with_kwargs=True
    )
    try:
        passes = adapter.iter_group(samples, batch_size=3)
        assert len(next(passes)) == 3 and lengths == [1, 3]  # prompt, then the first pass only
        assert len(next(passes)) == 1 and lengths == [1, 3, 1]
    finally:
        handle.remove()


def test_unshared_cases_say_so_and_give_the_same_features(adapter, caplog):
    samples = _samples(adapter)
    full = adapter.extract_batch(samples)
    # Different prompts before the image: nothing to share.
    other = dict(samples[1], input_ids=samples[1]["input_ids"].clone())
    other["input_ids"][1] = int(other["input_ids"][2])
    with caplog.at_level(logging.WARNING, logger="hg_lmm.lmm.adapter"):
        got = adapter.extract_group([samples[0], other])
    assert "not shared" in caplog.text and "does not hold the whole image" in caplog.text
    _assert_same(got, adapter.extract_batch([samples[0], other]))
    caplog.clear()
    with eager_reference(adapter), caplog.at_level(logging.WARNING, logger="hg_lmm.lmm.adapter"):
        got = adapter.extract_group(samples, batch_size=2)
    assert "eager_features=True" in caplog.text
    _assert_same(got, full)


def test_llava_next_falls_back_with_a_message(tmp_path, caplog):
    """LLaVA-NeXT's any-resolution prompt is not shared: extract_group logs it and returns
    extract_batch's features."""
    from hg_lmm.testing.tiny_llava_next import tiny_llava_next_adapter

    adapter = tiny_llava_next_adapter(cache_dir=tmp_path)
    from PIL import Image

    image = Image.new("RGB", (40, 24), (200, 30, 30))
    samples = [{k: v for k, v in s.items() if k not in ("pixel_values", "meta")} for s in
               _samples(adapter, CAPTIONS[:2])]  # fmt: skip
    for s in samples:
        s["image"] = image
    with caplog.at_level(logging.WARNING, logger="hg_lmm.lmm.adapter"):
        got = adapter.extract_group(samples, batch_size=1)
    assert "LlavaNextAdapter" in caplog.text and "not shared" in caplog.text
    _assert_same(got, adapter.extract_batch(samples))
