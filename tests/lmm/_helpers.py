"""Checks shared by the adapter tests of every LMM family."""

from __future__ import annotations

from contextlib import contextmanager

import torch


def block_outputs(blocks, run) -> dict[int, torch.Tensor]:
    """Outputs of every block in `blocks` during `run()`, captured with forward hooks."""
    seen: dict[int, torch.Tensor] = {}
    hooks = [
        blk.register_forward_hook(lambda _m, _i, out, i=i: seen.__setitem__(i, out))
        for i, blk in enumerate(blocks)
    ]
    try:
        run()
    finally:
        for h in hooks:
            h.remove()
    return seen


@contextmanager
def eager_reference(adapter):
    """The adapter switched to its reference feature path (eager, every attention map) inside
    the block."""
    before = adapter.eager_features
    adapter.eager_features = True
    try:
        yield adapter
    finally:
        adapter.eager_features = before


def vision_calls(adapter, run) -> int:
    """How many vision passes (`encode_images` calls) `run()` makes."""
    calls = []
    encode = adapter.encode_images

    def counted(pixel_values):
        calls.append(len(pixel_values))
        return encode(pixel_values)

    adapter.encode_images = counted
    try:
        run()
    finally:
        del adapter.encode_images
    return len(calls)


def check_answer_is_teacher_forced(adapter, image, question: str, max_new_tokens: int = 6):
    """`answer` generates greedily, recording the answer tokens' features during generation with
    one vision pass; they equal the reference (generate, then a teacher-forced eager pass over
    prompt + answer) to 1e-4. Returns the Answer for family-specific checks."""
    tok = adapter.tokenizer
    answers = []
    assert (
        vision_calls(
            adapter, lambda: answers.append(adapter.answer(image, question, max_new_tokens))
        )
        == 1
    )
    ans = answers[0]
    assert 0 < len(ans.token_ids) <= max_new_tokens
    assert ans.text == tok.decode(ans.token_ids, skip_special_tokens=True)
    assert torch.equal(ans.features.mask_ids, torch.full_like(ans.token_ids, -1))
    prompt = torch.tensor(tok(adapter.chat_prompt(question)).input_ids)
    ids = torch.cat([prompt, ans.token_ids])
    with eager_reference(adapter):
        ref = adapter.answer(image, question, max_new_tokens)
        forced = adapter.extract(
            {
                "input_ids": ids,
                "mask_ids": torch.cat(
                    [torch.full_like(prompt, -1), torch.zeros_like(ans.token_ids)]
                ),
                "pixel_values": ans.features.pixel_values,
                "meta": ans.features.meta,
                "caption_start": len(prompt),
            }
        )
    assert torch.equal(ref.token_ids, ans.token_ids) and ref.text == ans.text
    for reference in (ref.features, forced):
        assert reference.attn.shape == ans.features.attn.shape
        assert (reference.attn - ans.features.attn).abs().max() < 1e-4
        assert (reference.hidden - ans.features.hidden).abs().max() < 1e-4
        assert torch.equal(reference.vision, ans.features.vision)
    # Greedy: the teacher-forced argmax reproduces the generated tokens, so `generate` with
    # inputs_embeds returned only the new tokens, aligned with the prompt's end.
    with torch.no_grad():
        image_embeds, _ = adapter.encode_image(ans.features.pixel_values[None])
        inputs = adapter.embed_inputs(ids, image_embeds)
        logits = adapter.language_model(inputs_embeds=inputs.embeds).logits[0]
    pred = logits[inputs.token_positions[len(prompt) - 1 : len(ids) - 1]].argmax(-1)
    assert torch.equal(pred, ans.token_ids)
    return ans
