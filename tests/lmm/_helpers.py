"""Checks shared by the adapter tests of every LMM family."""

from __future__ import annotations

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


def check_answer_is_teacher_forced(adapter, image, question: str, max_new_tokens: int = 6):
    """`answer` generates greedily and returns exactly the features `extract` gives for the same
    prompt + generated ids; returns the Answer for family-specific checks."""
    tok = adapter.tokenizer
    ans = adapter.answer(image, question, max_new_tokens=max_new_tokens)
    assert 0 < len(ans.token_ids) <= max_new_tokens
    assert ans.text == tok.decode(ans.token_ids, skip_special_tokens=True)
    assert torch.equal(ans.features.mask_ids, torch.full_like(ans.token_ids, -1))
    prompt = torch.tensor(tok(adapter.chat_prompt(question)).input_ids)
    ids = torch.cat([prompt, ans.token_ids])
    forced = adapter.extract(
        {
            "input_ids": ids,
            "mask_ids": torch.cat([torch.full_like(prompt, -1), torch.zeros_like(ans.token_ids)]),
            "pixel_values": ans.features.pixel_values,
            "meta": ans.features.meta,
            "caption_start": len(prompt),
        }
    )
    assert torch.allclose(forced.attn, ans.features.attn, atol=1e-6)
    assert torch.allclose(forced.hidden, ans.features.hidden, atol=1e-6)
    assert torch.equal(forced.vision, ans.features.vision)
    # Greedy: the teacher-forced argmax reproduces the generated tokens, so `generate` with
    # inputs_embeds returned only the new tokens, aligned with the prompt's end.
    with torch.no_grad():
        image_embeds, _ = adapter.encode_image(ans.features.pixel_values[None])
        inputs = adapter.embed_inputs(ids, image_embeds)
        logits = adapter.language_model(inputs_embeds=inputs.embeds).logits[0]
    pred = logits[inputs.token_positions[len(prompt) - 1 : len(ids) - 1]].argmax(-1)
    assert torch.equal(pred, ans.token_ids)
    return ans
