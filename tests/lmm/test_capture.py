"""Row capture: the fast feature path equals the eager reference (every attention map, then the
rows), for both adapters and for a bare Llama with grouped-query attention, padding and a KV
cache; batched extraction equals one sample at a time."""

from __future__ import annotations

import pytest
import torch

from hg_lmm.lmm.capture import RowCapture
from hg_lmm.lmm.processors import letterbox_meta
from tests.lmm._helpers import eager_reference, vision_calls

ADAPTERS = ("llava", "deepseek_vl_1.3b", "deepseek_vl_7b")
PIECES = [
    [("the red circle", 0), (" and", -1), (" the blue square", 1)],
    [("a big blue square on the left", 0)],
    [("the green star", 0), (",", -1), (" the sky", 1), (" and the grass", 2), (".", -1)],
]


@pytest.fixture(scope="module", params=ADAPTERS)
def adapter(request, tmp_path_factory):
    folder = tmp_path_factory.mktemp(request.param)
    if request.param == "llava":
        from hg_lmm.testing.tiny_models import tiny_llava_adapter

        return tiny_llava_adapter(cache_dir=folder)
    from hg_lmm.testing.tiny_deepseek_vl import tiny_deepseek_vl_adapter

    return tiny_deepseek_vl_adapter(cache_dir=folder, style=request.param.rsplit("_", 1)[1])


def _sample(adapter, pieces, seed: int) -> dict:
    tok = adapter.tokenizer
    ids = tok(adapter.train_prompt).input_ids
    caption_start = len(ids)
    mids = [-1] * len(ids)
    for text, k in pieces:
        t = tok.encode(text, add_special_tokens=False)
        ids, mids = ids + t, mids + [k] * len(t)
    size = adapter.dims.image_size
    gen = torch.Generator().manual_seed(seed)
    return {
        "input_ids": torch.tensor(ids),
        "mask_ids": torch.tensor(mids),
        "pixel_values": torch.randn(3, size, size, generator=gen),
        "meta": letterbox_meta(size, size, size),
        "caption_start": caption_start,
    }


def _close(a, b, atol: float = 1e-5) -> bool:
    return a.shape == b.shape and float((a - b).abs().max()) < atol


def test_rows_equal_the_eager_reference(adapter):
    """Same attention rows and hidden states to 1e-5 (float32), while the decoder runs SDPA
    without returning any attention map and without its LM head."""
    decoder = adapter.language_model.get_decoder()
    assert {type(layer.self_attn).__name__ for layer in decoder.layers} == {"LlamaSdpaAttention"}
    maps, head_calls = [], []
    hooks = [
        layer.self_attn.register_forward_hook(lambda _m, _i, out: maps.append(out[1]))
        for layer in decoder.layers
    ]
    hooks.append(
        adapter.language_model.lm_head.register_forward_hook(lambda *_: head_calls.append(1))
    )
    sample = _sample(adapter, PIECES[0], seed=0)
    try:
        fast = adapter.extract(sample)
    finally:
        for h in hooks:
            h.remove()
    assert len(maps) == adapter.dims.num_layers and all(m is None for m in maps)
    assert not head_calls
    with eager_reference(adapter):
        ref = adapter.extract(sample)
    d = adapter.dims
    assert fast.attn.shape == (d.num_layers, d.num_heads, len(fast.mask_ids), d.grid, d.grid)
    assert _close(fast.attn, ref.attn) and _close(fast.hidden, ref.hidden)
    assert torch.equal(fast.vision, ref.vision)
    # Probabilities over all keys, restricted to the image: positive, each row sums below 1.
    sums = fast.attn.flatten(-2).sum(-1)
    assert (fast.attn > 0).all() and (sums < 1).all()


def test_batch_equals_one_by_one(adapter):
    """Samples of different lengths share one vision pass and one padded decoder pass."""
    samples = [_sample(adapter, p, seed=i) for i, p in enumerate(PIECES)]
    assert len({len(s["input_ids"]) for s in samples}) == len(samples)
    batched = []
    assert vision_calls(adapter, lambda: batched.extend(adapter.extract_batch(samples))) == 1
    for sample, together in zip(samples, batched):
        alone = adapter.extract(sample)
        assert _close(together.attn, alone.attn) and _close(together.hidden, alone.hidden)
        assert _close(together.vision, alone.vision)
        assert torch.equal(together.mask_ids, alone.mask_ids)
        assert torch.equal(together.token_ids, alone.token_ids)
    with eager_reference(adapter):  # the reference path goes one by one and agrees too
        for together, ref in zip(batched, adapter.extract_batch(samples)):
            assert _close(together.attn, ref.attn) and _close(together.hidden, ref.hidden)


# --- a bare Llama: grouped-query attention, padding, KV cache ---------------------------------


@pytest.fixture(scope="module")
def llama():
    from transformers import LlamaConfig, LlamaModel

    config = LlamaConfig(
        vocab_size=50,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,  # grouped-query attention: keys repeated per head
        max_position_embeddings=64,
        attn_implementation="sdpa",
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return LlamaModel(config).eval()


def _reference(llama, embeds, attention_mask=None):
    with torch.no_grad():
        out = llama(
            inputs_embeds=embeds,
            attention_mask=attention_mask,
            output_attentions=True,
            output_hidden_states=True,
        )
    return torch.stack(out.attentions), torch.stack(out.hidden_states[1:])


def test_padded_batch_with_grouped_query_attention(llama):
    embeds = torch.randn(2, 12, 32)
    lengths = (12, 8)
    mask = torch.arange(12)[None] < torch.tensor(lengths)[:, None]
    rows = torch.tensor([[9, 10, 11], [5, 6, 7]])
    columns = torch.tensor([[1, 2, 3, 4], [0, 2, 4, 6]])
    with torch.no_grad(), RowCapture(llama, rows=rows, columns=columns, key_mask=mask) as cap:
        llama(inputs_embeds=embeds, attention_mask=mask.long())
    attn, hidden = _reference(llama, embeds, mask.long())
    for b in range(2):
        want = attn[:, b][:, :, rows[b]][..., columns[b]]
        assert _close(cap.attn[:, b], want)
        assert _close(cap.hidden[:, b], hidden[:, b, rows[b]])


def test_keys_from_a_released_cache_equal_keys_from_the_projection(llama):
    """A teacher-forced pass may hand the post-RoPE keys over through its KV cache, which the
    capture empties layer by layer; the rows are those of the cache-free pass."""
    embeds = torch.randn(1, 9, 32)
    rows, columns = torch.tensor([[4, 6, 8]]), torch.tensor([[0, 1, 2]])
    with torch.no_grad():
        with RowCapture(llama, rows=rows, columns=columns) as plain:
            llama(inputs_embeds=embeds, use_cache=False)
        with RowCapture(llama, rows=rows, columns=columns, release_cache=True) as cached:
            past = llama(inputs_embeds=embeds, use_cache=True).past_key_values
    assert all(k.numel() == 0 and v.numel() == 0 for k, v in past)
    assert _close(cached.attn, plain.attn) and torch.equal(cached.hidden, plain.hidden)


def test_kv_cache_steps_equal_one_full_forward(llama):
    """Rows recorded one token at a time from the cache equal those of one full forward."""
    embeds = torch.randn(1, 10, 32)
    columns = torch.tensor([[0, 1, 2, 3]])
    with torch.no_grad(), RowCapture(llama, columns=columns, from_position=7) as cap:
        past = llama(inputs_embeds=embeds[:, :7], use_cache=True).past_key_values
        assert cap.num_rows == 0  # the prompt is not recorded
        for t in range(7, 10):
            out = llama(inputs_embeds=embeds[:, t : t + 1], past_key_values=past, use_cache=True)
            past = out.past_key_values
    assert cap.num_rows == 3
    attn, hidden = _reference(llama, embeds)
    assert _close(cap.attn[:, 0], attn[:, 0, :, 7:][..., columns[0]])
    assert _close(cap.hidden[:, 0], hidden[:, 0, 7:])


def test_bad_use_is_named(llama):
    columns = torch.tensor([[0, 1]])
    with pytest.raises(ValueError, match="exactly one"):
        RowCapture(llama, columns=columns)
    with pytest.raises(TypeError, match="LlamaModel"):
        RowCapture(torch.nn.Linear(2, 2), columns=columns, from_position=0)
    embeds = torch.randn(1, 6, 32)
    with torch.no_grad():
        past = llama(inputs_embeds=embeds[:, :4], use_cache=True).past_key_values
        with pytest.raises(RuntimeError, match="not all in its chunk"):
            with RowCapture(llama, rows=torch.tensor([[0]]), columns=columns):
                llama(inputs_embeds=embeds[:, 4:], past_key_values=past, use_cache=True)
