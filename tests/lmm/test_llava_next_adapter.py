"""LLaVA-NeXT adapter: captured features equal the stock model's own eager forward read as F-LMM
reads it; batching images of different token counts equals one by one; `answer` is consistent."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from transformers.models.llava_next.modeling_llava_next import (
    get_anyres_image_grid_shape,
    unpad_image,
)

from hg_lmm.lmm.llava_next import LlavaNextAdapter, load_processor
from hg_lmm.testing.tiny_llava_next import TINY_LLAVA_NEXT_VISION_LAYERS, tiny_llava_next

DECODERS = ("vicuna", "mistral")
# (h, w): landscape, portrait, square, extreme wide (1x3 crops), extreme tall (3x1 crops).
SIZES = ((30, 70), (61, 37), (40, 40), (20, 90), (95, 21))


@pytest.fixture(scope="module", params=DECODERS)
def tiny(request, tmp_path_factory):
    return tiny_llava_next(tmp_path_factory.mktemp(f"next_{request.param}"), decoder=request.param)


def _adapter(tiny, grid: str = "fine") -> LlavaNextAdapter:
    model, tok, path = tiny
    return LlavaNextAdapter(
        lmm=model,
        tokenizer=tok,
        processor=load_processor(path, model.config),
        template="mistral" if model.config.text_config.model_type == "mistral" else "vicuna",
        attention_grid=grid,
        vision_layers=TINY_LLAVA_NEXT_VISION_LAYERS,
    )


def _image(h: int, w: int, seed: int = 0) -> Image.Image:
    return Image.fromarray((np.random.RandomState(seed).rand(h, w, 3) * 255).astype(np.uint8))


def _sample(adapter, image, phrases=("the red circle", " and", " the blue square")):
    tok = adapter.tokenizer
    ids = tok(adapter.train_prompt).input_ids
    mids = [-1] * len(ids)
    for k, text in enumerate(phrases):
        piece = tok.encode(text, add_special_tokens=False)
        ids, mids = ids + piece, mids + [k if text.strip() != "and" else -1] * len(piece)
    mids = [m if m < 0 else int(m > 0) for m in mids]  # phrases 0 and 1
    return {"input_ids": torch.tensor(ids), "mask_ids": torch.tensor(mids), "image": image}


def _stock_reference(adapter, sample, grid):
    """F-LMM's reading of the stock model's eager forward (output_attentions / hidden_states)."""
    model = adapter.lmm
    pixels, meta = adapter.preprocess(sample["image"])
    size = (meta["ori_shape"]["height"], meta["ori_shape"]["width"])
    ids = sample["input_ids"][None]
    out = model(
        input_ids=ids,
        attention_mask=torch.ones_like(ids),
        pixel_values=pixels[None],
        image_sizes=torch.tensor([size]),
        output_attentions=True,
        output_hidden_states=True,
        return_dict=True,
    )
    g = adapter.dims.grid
    rows, cols = get_anyres_image_grid_shape(size, model.config.image_grid_pinpoints, g * 8)
    fh, fw = unpad_image(torch.zeros(1, rows * g, cols * g), size).shape[1:]
    n = g * g + fh * (fw + 1)
    i = int((sample["input_ids"] == adapter.image_token_id).nonzero())
    caption = (sample["mask_ids"] >= 0).nonzero()[0, 0]
    positions = torch.arange(caption, len(sample["input_ids"])) + n - 1
    attn = torch.stack([a[0][:, positions][..., i : i + n] for a in out.attentions])
    coarse = attn[..., : g * g].unflatten(-1, (g, g))
    fine = attn[..., g * g :].unflatten(-1, (fh, fw + 1))[..., :-1]
    target = (fh, fw) if grid == "fine" else (g, g)

    def resize(x):
        L, H, T = x.shape[:3]
        return F.interpolate(x.flatten(0, 1), size=target, mode="bilinear").view(L, H, T, *target)

    hidden = torch.stack(out.hidden_states[1:])[:, 0, positions]
    return torch.cat([resize(coarse), resize(fine)]), hidden, pixels[0]


@pytest.mark.parametrize("grid", ["fine", "base"])
def test_features_equal_stock_forward(tiny, grid):
    adapter = _adapter(tiny, grid)
    for h, w in SIZES:
        sample = _sample(adapter, _image(h, w))
        attn, hidden, base = _stock_reference(adapter, sample, grid)
        f = adapter.extract(sample)
        assert f.attn.shape == attn.shape
        torch.testing.assert_close(f.attn, attn, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(f.hidden, hidden, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(f.pixel_values, base)
        L, H, g = adapter.dims.num_layers, adapter.dims.num_heads, adapter.dims.grid
        assert f.attn.shape[:2] == (2 * L, H)
        assert f.vision.shape == (8, g * g, adapter.dims.vision_channels)
        assert f.meta["padded_shape"] == f.meta["image_shape"]
        assert f.meta["anyres"]["ori_shape"] == {"height": h, "width": w}


def test_extract_batch_equals_one_by_one(tiny):
    adapter = _adapter(tiny)
    samples = [
        _sample(adapter, _image(h, w, seed), phrases)
        for (h, w), seed, phrases in zip(
            SIZES, range(5), [("the red circle", " and", " grass")] * 2 + [("sky",)] * 3
        )
    ]
    counts = {
        adapter.encode_anyres(
            adapter._pixels(
                adapter.collate_pixels(
                    [adapter.preprocess(s["image"])[0]], [adapter.preprocess(s["image"])[1]]
                )
            )
        )[2][0].num_tokens
        for s in samples
    }
    assert len(counts) > 2  # the images really give different numbers of image tokens
    batch = adapter.extract_batch(samples)
    for sample, got in zip(samples, batch):
        alone = adapter.extract(sample)
        assert got.attn.shape == alone.attn.shape
        torch.testing.assert_close(got.attn, alone.attn, atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(got.hidden, alone.hidden, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(got.vision, alone.vision, atol=1e-6, rtol=1e-5)
        assert got.meta == alone.meta


def test_preprocessed_samples_equal_images(tiny):
    adapter = _adapter(tiny)
    sample = _sample(adapter, _image(30, 70))
    pixels, meta = adapter.preprocess(sample["image"])
    pre = {
        **{k: v for k, v in sample.items() if k != "image"},
        "pixel_values": pixels,
        "meta": meta,
    }
    a, b = adapter.extract(sample), adapter.extract(pre)
    assert a.meta == b.meta and torch.equal(a.attn, b.attn)


def test_answer_features_are_teacher_forced(tiny):
    adapter = _adapter(tiny)
    image = _image(61, 37)
    ans = adapter.answer(image, "What is in the image?", max_new_tokens=6)
    t = len(ans.token_ids)
    assert t > 0 and ans.features.attn.shape[2] == t
    prompt = adapter.tokenizer(adapter.chat_prompt("What is in the image?")).input_ids
    ids = torch.cat([torch.tensor(prompt), ans.token_ids])
    mids = torch.full_like(ids, -1)
    forced = adapter.extract(
        {"input_ids": ids, "mask_ids": mids, "image": image, "caption_start": len(prompt)}
    )
    torch.testing.assert_close(ans.features.attn, forced.attn, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(ans.features.hidden, forced.hidden, atol=1e-5, rtol=1e-4)
    assert ans.features.meta == forced.meta


def test_errors_name_the_fix(tiny):
    with pytest.raises(ValueError, match="attention_grid"):
        _adapter(tiny, "coarse")
    adapter = _adapter(tiny)
    sample = _sample(adapter, _image(30, 70))
    bad = {
        **{k: v for k, v in sample.items() if k != "image"},
        "pixel_values": torch.zeros(3, 24, 24),
        "meta": {},
    }
    with pytest.raises(ValueError, match="LlavaNextImageProcessor"):
        adapter.extract(bad)


def test_mistral_longer_than_its_sliding_window_is_refused(tmp_path):
    adapter = _adapter(tiny_llava_next(tmp_path, decoder="mistral"))
    # Every layer's attention module reads this one config object.
    adapter.lmm.language_model.config.sliding_window = 8
    with pytest.raises(ValueError, match="sliding window"):
        adapter.extract(_sample(adapter, _image(30, 70)))
