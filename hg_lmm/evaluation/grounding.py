"""Grounding phrases of a generated answer: character spans -> answer token indices -> masks.

GCG and ReasonSeg (and the demo) let the LMM answer first and then ground parts of the answer.
`model.ground` wants, per phrase, indices into `answer.token_ids`; spaCy gives character spans in
`answer.text`. The bridge is `token_char_offsets`, which reads each generated token's span off the
decoded prefixes of the *generated ids themselves*. Re-encoding the text instead (as the
reference does) can tokenize differently from what the model generated, and then the indices
point at the wrong tokens.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from hg_lmm.evaluation.phrases import NounPhrase, extract_noun_phrases, phrase_token_span

logger = logging.getLogger(__name__)


def decode_answer(tokenizer: Any, token_ids: Sequence[int]) -> str:
    """The answer text exactly as the adapter decodes it (`FrozenLMMAdapter.answer`)."""
    return tokenizer.decode([int(t) for t in token_ids], skip_special_tokens=True)


def token_char_offsets(tokenizer: Any, token_ids: Sequence[int]) -> list[tuple[int, int]]:
    """Character span of every token in `decode_answer(tokenizer, token_ids)`.

    Arguments:
      tokenizer: the LMM's tokenizer (any HF tokenizer with `batch_decode`).
      token_ids: [T] generated token ids.

    Returns:
      T spans `(start, end)`, non-overlapping and in order; `end` of the last token is the text
      length. A token that adds no character of its own (a special token, or a byte that only
      completes a multi-byte character together with the next token) gets an empty span and is
      therefore never part of a phrase (`phrase_token_span` ignores empty spans).
    """
    ids = [int(t) for t in token_ids]
    text = decode_answer(tokenizer, ids)
    prefixes = tokenizer.batch_decode(
        [ids[: i + 1] for i in range(len(ids))], skip_special_tokens=True
    )
    ends = []
    for prefix in prefixes:
        # A prefix that stops inside a multi-byte character decodes to a replacement character
        # that the full text does not have; count only the part the full text shares.
        shared = 0
        for a, b in zip(prefix, text):
            if a != b:
                break
            shared += 1
        ends.append(shared)
    # Ends must never decrease: a later token can only extend the text (suffix minimum keeps the
    # earliest token that completes a character as its owner).
    running = len(text)
    for i in range(len(ends) - 1, -1, -1):
        running = min(running, ends[i])
        ends[i] = running
    if ends:
        ends[-1] = len(text)
    starts = [0] + ends[:-1]
    return list(zip(starts, ends))


def phrase_token_ids(
    phrases: Sequence[NounPhrase], offsets: Sequence[tuple[int, int]]
) -> list[list[int]]:
    """Per phrase, the indices of the tokens that overlap its characters.

    Arguments:
      phrases: phrases with character spans in the decoded answer.
      offsets: [T] token spans from `token_char_offsets`.

    Returns:
      One list of token indices per phrase (same order). Empty-span tokens right before a
      phrase's first token are included: they are the leading bytes of its first character.
    """
    out = []
    for phrase in phrases:
        first, last = phrase_token_span(phrase.start, phrase.end, offsets)
        while first > 0 and offsets[first - 1][0] == offsets[first - 1][1] == offsets[first][0]:
            first -= 1
        out.append(list(range(first, last)))
    return out


@dataclass
class GroundedAnswer:
    """A generated answer and the masks of its grounded phrases.

    Fields:
      text: the answer.
      phrases: the grounded phrases (their texts), in answer order.
      masks: [n, H, W] bool masks at the original image size, `masks[k]` for `phrases[k]`.
      spans: n character spans `(start, end)` of the phrases in `text` (empty when not recorded).
    """

    text: str
    phrases: list[str]
    masks: torch.Tensor
    spans: list[tuple[int, int]] = field(default_factory=list)


def _empty_masks(image: Any) -> torch.Tensor:
    return torch.zeros((0, image.height, image.width), dtype=torch.bool)


def answer_or_none(model: Any, image: Any, question: str, max_new_tokens: int) -> Any:
    """`model.lmm.answer(...)`, or None when the LMM generated nothing (logged), because an empty
    answer is a legitimate model output that the metrics must count, not a crash."""
    try:
        return model.lmm.answer(image, question, max_new_tokens=max_new_tokens)
    except ValueError as error:
        if "empty answer" not in str(error):
            raise
        logger.warning("%s; scoring an empty prediction", error)
        return None


def caption_and_ground(
    model: Any,
    image: Any,
    question: str,
    *,
    max_new_tokens: int,
    threshold: float | None = None,
    nlp: Any = None,
) -> GroundedAnswer:
    """Answer `question`, extract the answer's noun phrases (spaCy) and ground each one (GCG).

    Arguments:
      model: a `GroundingModel`.
      image: the PIL image.
      question: the instruction, e.g. "Please give me a detailed description of the image."
      max_new_tokens: generation budget.
      threshold: mask threshold (default: the model's).
      nlp: a loaded spaCy pipeline (default `load_spacy()`).

    Returns:
      The answer, its phrases and their [n, H, W] masks (n may be 0).
    """
    answer = answer_or_none(model, image, question, max_new_tokens)
    if answer is None:
        return GroundedAnswer("", [], _empty_masks(image))
    # As the reference: when spaCy finds no noun chunk at all, the whole answer is the phrase.
    phrases = extract_noun_phrases(answer.text, nlp=nlp, fallback_to_text=True)
    if not phrases:
        return GroundedAnswer(answer.text, [], _empty_masks(image))
    ids = phrase_token_ids(phrases, token_char_offsets(model.lmm.tokenizer, answer.token_ids))
    masks = model.ground(ids, answer, image, threshold=threshold).cpu()
    spans = [(p.start, p.end) for p in phrases]
    return GroundedAnswer(answer.text, [p.text for p in phrases], masks, spans)


def answer_and_ground_all(
    model: Any, image: Any, question: str, *, max_new_tokens: int, threshold: float
) -> GroundedAnswer:
    """Answer `question` and ground the whole answer as one phrase (ReasonSeg).

    Returns:
      The answer and one [1, H, W] mask (all False when the answer is empty).
    """
    answer = answer_or_none(model, image, question, max_new_tokens)
    if answer is None:
        empty = torch.zeros((1, image.height, image.width), dtype=torch.bool)
        return GroundedAnswer("", [""], empty)
    all_tokens = [list(range(len(answer.token_ids)))]
    masks = model.ground(all_tokens, answer, image, threshold=threshold).cpu()
    return GroundedAnswer(answer.text, [answer.text], masks)


def refer(
    model: Any, image: Any, expression: str, *, threshold: float | None = None
) -> GroundedAnswer:
    """Referring segmentation without generation: one mask for `expression`.

    The expression is teacher-forced after the LMM's training prompt, followed by a period, as
    one RefCOCO expression is in evaluation (`refseg_records` without --concat); its features go
    through the same `model.ground` as a generated answer's, so the threshold works alike.

    Arguments:
      model: a `GroundingModel`.
      image: the PIL image.
      expression: e.g. "the red circle on the left".
      threshold: mask threshold (default: the model's).

    Returns:
      A `GroundedAnswer` whose text and single phrase are the expression, with a [1, H, W] mask.
    """
    from hg_lmm.datasets.sample import Piece
    from hg_lmm.datasets.transforms import encode_pieces
    from hg_lmm.lmm.adapter import Answer

    expression = expression.strip()
    if not expression:
        raise ValueError("the referring expression is empty; pass the phrase to segment")
    input_ids, mask_ids, start = encode_pieces(
        model.lmm.tokenizer,
        model.lmm.train_prompt,
        [Piece(expression, mask_id=0, period_after=True)],
        source=f"expression {expression!r}",
    )
    features = model.lmm.extract(
        {"image": image, "input_ids": input_ids, "mask_ids": mask_ids, "caption_start": start}
    )
    tokens = (features.mask_ids == 0).nonzero()[:, 0].tolist()
    answer = Answer(text=expression, token_ids=features.token_ids, features=features)
    masks = model.ground([tokens], answer, image, threshold=threshold).cpu()
    return GroundedAnswer(expression, [expression], masks, [(0, len(expression))])


__all__ = [
    "GroundedAnswer",
    "answer_and_ground_all",
    "answer_or_none",
    "caption_and_ground",
    "decode_answer",
    "phrase_token_ids",
    "refer",
    "token_char_offsets",
]
