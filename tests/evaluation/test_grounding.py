"""Answer tokens <-> characters, and grounding the phrases of a generated answer."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from hg_lmm.evaluation.grounding import (
    answer_and_ground_all,
    caption_and_ground,
    decode_answer,
    phrase_token_ids,
    token_char_offsets,
)
from hg_lmm.evaluation.phrases import NounPhrase
from hg_lmm.lmm.adapter import Answer

TEXTS = [
    "There is a red circle and a blue square in the image.",
    "the red circle, it's (round); two  spaces",
    " héllo wörld 😀 end",
]


@pytest.mark.parametrize("kind", ["llava_tokenizer", "deepseek_tokenizer"])
@pytest.mark.parametrize("text", TEXTS)
def test_offsets_tile_the_decoded_answer(kind, text, request) -> None:
    tokenizer = request.getfixturevalue(kind)
    ids = tokenizer.encode(text, add_special_tokens=False) + [tokenizer.eos_token_id]
    offsets = token_char_offsets(tokenizer, ids)
    decoded = decode_answer(tokenizer, ids)
    assert len(offsets) == len(ids)
    # Contiguous, ordered, covering the whole text; the stop token adds nothing.
    assert offsets[0][0] == 0 and offsets[-1] == (len(decoded), len(decoded))
    assert all(a[1] == b[0] and a[0] <= a[1] for a, b in zip(offsets, offsets[1:]))
    # Each token's span is what that token decodes to (up to the leading-space rule).
    for i, (start, end) in enumerate(offsets[:-1]):
        piece = tokenizer.decode(ids[i : i + 1], skip_special_tokens=True)
        if start < end and "\ufffd" not in piece:
            assert decoded[start:end].strip() == piece.strip()


def test_multibyte_character_keeps_all_its_bytes(deepseek_tokenizer) -> None:
    text = "a 😀 b"
    ids = deepseek_tokenizer.encode(text, add_special_tokens=False)
    offsets = token_char_offsets(deepseek_tokenizer, ids)
    (ids_of_emoji,) = phrase_token_ids([NounPhrase("😀", 2, 3)], offsets)
    assert deepseek_tokenizer.decode([ids[i] for i in ids_of_emoji]) == "😀"


def test_phrase_token_ids_pick_the_phrase_tokens(llava_tokenizer) -> None:
    text = "There is a red circle and a blue square on the grass"
    ids = llava_tokenizer.encode(text, add_special_tokens=False)
    offsets = token_char_offsets(llava_tokenizer, ids)
    phrases = [NounPhrase("a red circle", 9, 21), NounPhrase("a blue square", 26, 39)]
    got = phrase_token_ids(phrases, offsets)
    decoded = [llava_tokenizer.decode([ids[i] for i in idx]).strip() for idx in got]
    assert decoded == ["a red circle", "a blue square"]


class _FakeLMM:
    def __init__(self, tokenizer, text: str) -> None:
        self.tokenizer = tokenizer
        self.text = text
        self.questions: list[str] = []

    def answer(self, image, question, max_new_tokens=64):
        self.questions.append(question)
        ids = torch.tensor(self.tokenizer.encode(self.text, add_special_tokens=False))
        if len(ids) == 0:
            raise ValueError(f"the LMM generated an empty answer to {question!r}")
        return Answer(text=decode_answer(self.tokenizer, ids), token_ids=ids, features=None)


class _FakeModel:
    """Grounds phrase k as a mask whose first row holds k + 1 foreground pixels."""

    def __init__(self, tokenizer, text: str) -> None:
        self.lmm = _FakeLMM(tokenizer, text)
        self.grounded: list[list[int]] = []
        self.thresholds: list[float | None] = []

    def ground(self, phrase_token_ids, answer, image=None, threshold=None):
        self.grounded = [list(p) for p in phrase_token_ids]
        self.thresholds.append(threshold)
        masks = torch.zeros(len(phrase_token_ids), image.height, image.width, dtype=torch.bool)
        for k in range(len(phrase_token_ids)):
            masks[k, 0, : k + 1] = True
        return masks


@pytest.fixture(scope="module")
def nlp():
    from hg_lmm.evaluation.phrases import load_spacy

    try:
        return load_spacy()
    except (ImportError, OSError) as error:
        pytest.skip(f"no spaCy English pipeline installed: {error}")


def test_caption_and_ground_grounds_each_noun_phrase(llava_tokenizer, nlp) -> None:
    model = _FakeModel(llava_tokenizer, "A red circle sits next to a blue square in the image.")
    image = Image.new("RGB", (8, 6))
    out = caption_and_ground(model, image, "Describe.", max_new_tokens=8, nlp=nlp)
    assert out.phrases == ["A red circle", "a blue square"]
    ids = model.lmm.tokenizer.encode(model.lmm.text, add_special_tokens=False)
    spans = [llava_tokenizer.decode([ids[i] for i in p]).strip() for p in model.grounded]
    assert spans == ["A red circle", "a blue square"]
    assert out.masks.shape == (2, 6, 8) and out.masks.dtype == torch.bool


def test_empty_answer_scores_an_empty_prediction(llava_tokenizer, nlp) -> None:
    model = _FakeModel(llava_tokenizer, "")
    image = Image.new("RGB", (8, 6))
    out = caption_and_ground(model, image, "Describe.", max_new_tokens=8, nlp=nlp)
    assert (out.text, out.phrases, tuple(out.masks.shape)) == ("", [], (0, 6, 8))
    whole = answer_and_ground_all(model, image, "Which?", max_new_tokens=8, threshold=0.3)
    assert tuple(whole.masks.shape) == (1, 6, 8) and not whole.masks.any()


def test_answer_and_ground_all_uses_every_token(llava_tokenizer) -> None:
    model = _FakeModel(llava_tokenizer, "the red circle")
    image = Image.new("RGB", (5, 4))
    out = answer_and_ground_all(model, image, "Which?", max_new_tokens=8, threshold=0.3)
    n = len(llava_tokenizer.encode("the red circle", add_special_tokens=False))
    assert model.grounded == [list(range(n))] and model.thresholds == [0.3]
    assert out.text == "the red circle" and tuple(out.masks.shape) == (1, 4, 5)


def test_other_answer_errors_are_not_swallowed(llava_tokenizer) -> None:
    model = _FakeModel(llava_tokenizer, "x")

    def broken(*args, **kwargs):
        raise ValueError("expected exactly one <image> token, found 0")

    model.lmm.answer = broken
    with pytest.raises(ValueError, match="exactly one <image>"):
        answer_and_ground_all(model, Image.new("RGB", (4, 4)), "q", max_new_tokens=4, threshold=0.3)
