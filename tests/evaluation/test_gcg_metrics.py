"""GCG metrics: greedy mask matching, recall with text similarity, AP50, METEOR / CIDEr and the
BERT text similarity, on hand-computed cases."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from hg_lmm.evaluation import gcg_metrics as M
from hg_lmm.utils.rle import mask_to_rle
from tests.evaluation.conftest import strip

REL = 1e-6


# ------------------------------------------------------------------ GCG


def test_gcg_miou_greedy_one_to_one() -> None:
    # 1 x 8 masks (foreground columns):
    #   P0 = {0..7}, P1 = {0, 1, 2, 7}; G0 = {0, 1, 2, 4, 5, 7}, G1 = {0, 3, 4, 5, 6}.
    # IoU [pred, gt]:  P0-G0 = 6/8 = 3/4   P0-G1 = 5/8
    #                  P1-G0 = 4/6 = 2/3   P1-G1 = 1/8
    # Greedy takes the largest, P0-G0 (3/4), which leaves P1-G1 (1/8): mIoU = (3/4 + 1/8) / 2
    # = 7/16. The optimal assignment would give (5/8 + 2/3) / 2 = 31/48, and best-match-per-
    # prediction without one-to-one would give (3/4 + 2/3) / 2 = 17/24.
    preds = strip({0, 1, 2, 3, 4, 5, 6, 7}, {0, 1, 2, 7})
    gts = strip({0, 1, 2, 4, 5, 7}, {0, 3, 4, 5, 6})
    assert M.gcg_image_miou(preds, gts) == pytest.approx(7 / 16, rel=1e-12)
    # Zero-IoU pairs are never matched and unmatched masks are not penalised:
    # P0 = {0, 1} matches G0 = {0, 1} (IoU 1); P1 = {5} overlaps nothing -> mIoU = 1.
    assert M.gcg_image_miou(strip({0, 1}, {5}), strip({0, 1}, {3})) == 1.0
    assert M.gcg_image_miou(np.zeros((0, 1, 8), bool), gts) == 0.0
    assert M.gcg_image_miou(strip({6}), strip({0})) == 0.0


def exact_text(a: str, b: str) -> float:
    return 1.0 if a == b else 0.0


def test_gcg_recall_needs_iou_and_text() -> None:
    # Image 1: "a man" predicted with IoU 1 and the same phrase -> match.
    #          "a dog": same phrase but IoU = 1/3 (< 0.5) -> no match.        => 1 of 2
    # Image 2: "the sky": IoU 1 but the predicted phrase is "a horse" (similarity 0) => 0 of 1
    gt1, pred1 = strip({0, 1}, {4}), strip({0, 1}, {4, 5, 6})
    n1 = M.gcg_image_recall_matches(gt1, ["a man", "a dog"], pred1, ["a man", "a dog"], exact_text)
    gt2 = strip({0, 1, 2})
    n2 = M.gcg_image_recall_matches(gt2, ["the sky"], gt2, ["a horse"], exact_text)
    assert (n1, n2) == (1, 0)
    # GLaMM stops at the first rejected pair: the best-IoU pair (IoU 1) fails on text, so the
    # second pair (IoU 2/3, same phrase) is not examined.
    gt3, pred3 = strip({0, 1}, {4, 5}), strip({0, 1}, {4, 5, 6})
    n3 = M.gcg_image_recall_matches(gt3, ["a cat", "a cup"], pred3, ["a hat", "a cup"], exact_text)
    assert n3 == 0
    with pytest.raises(ValueError, match="one mask per phrase"):
        M.gcg_image_recall_matches(gt1, ["a man"], pred1, ["a man", "a dog"], exact_text)


def _sample(image_id, caption, phrases, masks) -> M.GcgSample:
    return M.GcgSample(image_id, caption, phrases, [mask_to_rle(m) for m in masks])


def test_mask_ap50_obvious_cases() -> None:
    a, b = strip({0, 1, 2}), strip({5, 6, 7})
    gt = {"img1": [mask_to_rle(a[0]), mask_to_rle(b[0])]}
    # Both ground truths predicted exactly: precision 1 at every recall -> AP50 = 1.
    assert M.mask_ap50(gt, {"img1": gt["img1"]}) == pytest.approx(1.0)
    # Only one of two found: precision 1 up to recall 0.5, then nothing. COCO averages the
    # interpolated precision over the 101 recall points 0, 0.01, ..., 1: 51 of them are <= 0.5
    # -> AP50 = 51 / 101.
    assert M.mask_ap50(gt, {"img1": gt["img1"][:1]}) == pytest.approx(51 / 101)
    assert M.mask_ap50(gt, {"img1": []}) == 0.0
    with pytest.raises(ValueError, match="without ground truth"):
        M.mask_ap50(gt, {"other": []})


def test_gcg_metrics_without_captions() -> None:
    g0, g1 = strip({0, 1, 2}), strip({5, 6, 7})
    gts = [
        _sample("x", "a man and a dog", ["a man", "a dog"], [g0[0], g1[0]]),
        _sample("y", "the sky", ["the sky"], [g0[0]]),
    ]
    preds = [
        _sample("y", "a horse", ["a horse"], [g0[0]]),  # IoU 1, wrong phrase
        _sample("x", "a man", ["a man"], [g0[0]]),  # finds one of two
        _sample("x", "ignored repeat", [], []),  # distributed padding repeat: dropped
    ]
    got = M.gcg_metrics(gts, preds, text_similarity=exact_text, compute_captions=False)
    # mIoU: x -> 1 (one pair, IoU 1), y -> 1; recall: 1 matched of 3 gt phrases.
    # AP50: 3 gt masks, 2 detections both true positives -> precision 1 up to recall 2/3: the
    # recall points 0 .. 0.66 (67 of 101) -> 67 / 101.
    assert got == pytest.approx({"mIoU": 1.0, "recall": 1 / 3, "AP50": 67 / 101})
    with pytest.raises(ValueError, match="without a prediction"):
        M.gcg_metrics(gts, preds[:1], text_similarity=exact_text, compute_captions=False)


CAPTION_REFS = {
    1: ["A man is riding a brown horse on the beach."],
    2: ["Two dogs play with a red ball in the park."],
}
CAPTION_CANDS = {1: "A man rides a horse on a beach.", 2: "A dog plays with a ball on the grass."}


@pytest.mark.slow  # two JVM start-ups (tokenizer, METEOR): about 8 s
@pytest.mark.skipif(shutil.which("java") is None, reason="METEOR/PTB tokenizer need java on PATH")
def test_meteor_and_cider_two_images() -> None:
    # Literals computed once with pycocoevalcap 1.2 (PTB tokenizer, meteor-1.5, CIDEr-D).
    got = M.caption_metrics(CAPTION_REFS, CAPTION_CANDS)
    assert got["METEOR"] == pytest.approx(0.28889413000597114, rel=REL)
    assert got["CIDEr"] == pytest.approx(1.5985797660940029, rel=REL)


def test_caption_metrics_name_the_java_fix(monkeypatch) -> None:
    monkeypatch.setattr(M.shutil, "which", lambda _name: None)
    with pytest.raises(RuntimeError, match="apt-get install default-jre-headless"):
        M.caption_metrics(CAPTION_REFS, CAPTION_CANDS)
    with pytest.raises(ValueError, match="ids differ"):
        M.caption_metrics(CAPTION_REFS, {1: "a"})


def test_bert_text_similarity_is_lazy_and_cosine(tmp_path) -> None:
    from transformers import BertConfig, BertModel, BertTokenizer

    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "man", "dog", "the", "sky"]
    (tmp_path / "vocab.txt").write_text("\n".join(words) + "\n")
    BertTokenizer(str(tmp_path / "vocab.txt")).save_pretrained(tmp_path)
    config = BertConfig(
        vocab_size=len(words),
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=32,
    )
    BertModel(config).save_pretrained(tmp_path)

    similarity = M.bert_text_similarity(str(tmp_path))
    assert similarity._model is None  # nothing loaded before the first comparison
    assert similarity("a man", "a man") == pytest.approx(1.0, abs=1e-6)
    ab, ba = similarity("a man", "the sky"), similarity("the sky", "a man")
    assert ab == pytest.approx(ba) and -1.0 <= ab < 1.0 - 1e-6
    # the definition: cosine of the mean-pooled last hidden states, [CLS]/[SEP] included
    model = BertModel.from_pretrained(tmp_path).eval()
    tokenizer = BertTokenizer.from_pretrained(tmp_path)
    with torch.no_grad():
        emb = [
            model(**tokenizer(t, return_tensors="pt")).last_hidden_state[0].mean(0).double()
            for t in ("a man", "the sky")
        ]
    assert ab == pytest.approx(float(torch.nn.functional.cosine_similarity(*emb, dim=0)), rel=1e-5)
