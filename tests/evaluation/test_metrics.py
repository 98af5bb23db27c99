"""Metrics: the reference's recorded cases (metrics.json) and hand-computed cases."""

from __future__ import annotations

import json
import math
import os
import pickle
import shutil

import numpy as np
import pytest
import torch

from hg_lmm.evaluation import metrics as M
from hg_lmm.utils.rle import mask_to_rle

REL = 1e-6


@pytest.fixture(scope="module")
def recorded(fixtures_dir: str) -> dict:
    with open(os.path.join(fixtures_dir, "metrics", "metrics.json")) as handle:
        return json.load(handle)


def strip(*pixel_sets: set[int], width: int = 8) -> np.ndarray:
    """[N, 1, width] bool masks from sets of foreground columns (hand-made masks)."""
    out = np.zeros((len(pixel_sets), 1, width), dtype=bool)
    for k, pixels in enumerate(pixel_sets):
        out[k, 0, sorted(pixels)] = True
    return out


# ------------------------------------------------------------------ recorded reference cases


def test_png_average_recall_matches_reference(recorded: dict) -> None:
    case = recorded["png_average_recall"]
    got = M.png_summary(case["ious"], case["isthing"], case["plural"])
    assert set(got) == set(case["expected"])
    for key, expected in case["expected"].items():
        assert got[key] == pytest.approx(expected, rel=REL), key


def test_png_metrics_from_records_matches_summary(recorded: dict) -> None:
    # Records carry counts; IoU = I / U must give the same numbers as the raw IoU list when the
    # counts reproduce those IoUs (I = round(iou * 1e6), U = 1e6 is exact to ~1e-6 relative).
    case = recorded["png_average_recall"]
    records = [
        M.MaskRecord(str(k), int(round(iou * 10**6)), 10**6, {"isthing": t, "plural": p})
        for k, (iou, t, p) in enumerate(zip(case["ious"], case["isthing"], case["plural"]))
    ]
    got = M.png_metrics(records)
    for key, expected in case["expected"].items():
        assert got[key] == pytest.approx(expected, rel=1e-5), key


def test_refseg_metric_matches_mmdet(recorded: dict) -> None:
    case = recorded["res_refseg_metric"]
    acc = M.MaskIoUAccumulator()
    for k, sample in enumerate(case["cases"]):
        acc.add(k, np.array(sample["pred"]), np.array(sample["gt"]))
    got = M.refseg_metrics(acc.records())
    for key, expected in case["expected"].items():
        assert got[key] == pytest.approx(expected, rel=REL), key


def test_reasonseg_matches_lisa(recorded: dict) -> None:
    case = recorded["reasonseg_giou_ciou"]
    acc = M.MaskIoUAccumulator()
    for k, sample in enumerate(case["cases"]):
        acc.add(k, np.array(sample["pred"]), np.array(sample["target"]), ignore_index=255)
    got = M.reasonseg_metrics(acc.records())
    for key, expected in case["expected"].items():
        assert got[key] == pytest.approx(expected, rel=REL), key


# ------------------------------------------------------------------ primitives


def test_intersection_union_types_and_torch_input() -> None:
    pred = torch.tensor([[1, 1, 0, 0]], dtype=torch.bool)
    target = np.array([[0, 1, 1, 0]], dtype=np.uint8)
    inter, union = M.mask_intersection_union(pred, target)
    assert (inter, union) == (1, 3) and type(inter) is int and type(union) is int
    assert M.mask_iou(pred, target) == pytest.approx(1 / 3)
    assert type(M.mask_iou(pred, target)) is float
    empty = np.zeros((2, 2), dtype=bool)
    assert M.mask_iou(empty, empty) == 0.0
    assert M.mask_iou(empty, empty, empty=1.0) == 1.0


def test_ignore_region_is_excluded() -> None:
    # The prediction covers the ignore pixel (255): it counts in neither I nor U.
    pred = np.array([1, 1, 1, 0])
    target = np.array([1, 255, 0, 0])
    assert M.mask_intersection_union(pred, target, ignore_index=255) == (1, 2)
    # Valid pixels: 0 (1 vs 1), 2 (1 vs 0), 3 (0 vs 0) -> 2 of 3 correct.
    assert M.pixel_accuracy(pred, target, ignore_index=255) == pytest.approx(2 / 3)
    assert M.pixel_accuracy(pred, np.array([1, 1, 0, 0])) == pytest.approx(3 / 4)


def test_soft_or_mismatched_masks_are_rejected() -> None:
    with pytest.raises(ValueError, match="threshold"):
        M.mask_iou(np.array([0.2, 0.9]), np.array([0, 1]))
    with pytest.raises(ValueError, match="shapes differ"):
        M.mask_iou(np.zeros((2, 2)), np.zeros((2, 3)))
    with pytest.raises(ValueError, match="ignore"):
        M.mask_iou(np.array([0, 1]), np.array([0, 255]))  # 255 without ignore_index


def test_pairwise_iou_shape() -> None:
    ious = M.pairwise_mask_iou(strip({0, 1}, {2}), strip({0}, {1, 2}, {5}))
    np.testing.assert_allclose(ious, [[1 / 2, 1 / 3, 0], [0, 1 / 2, 0]])


# ------------------------------------------------------------------ PNG, hand-computed


def test_average_recall_hand_computed() -> None:
    # Grid np.arange(0, 1, 0.25) = [0, .25, .5, .75]; the reference sums the three cells between
    # consecutive grid points: 0.25 * (recall(0) + recall(.25) + recall(.5)).
    # IoUs [0.1, 0.3, 0.6, 0.9]: recall(0) = 4/4, recall(.25) = 3/4, recall(.5) = 2/4
    # -> AR = 0.25 * (1 + 0.75 + 0.5) = 0.5625.
    assert M.average_recall([0.1, 0.3, 0.6, 0.9], step=0.25) == pytest.approx(0.5625, abs=1e-12)
    # On the fine default grid the area approaches the mean IoU (0.475), short by at most a step.
    assert M.average_recall([0.1, 0.3, 0.6, 0.9]) == pytest.approx(0.475, abs=2e-5)
    assert M.average_recall(np.ones(3)) == pytest.approx(1 - 1e-5, abs=1e-9)
    assert math.isnan(M.average_recall([]))


def test_png_accuracy_is_strict_and_groups_split() -> None:
    got = M.png_summary(
        [0.5, 0.6, 0.2, 1.0], isthing=[True, True, False, False], plural=[False, True, True, True]
    )
    assert got["acc_at_0_5"] == pytest.approx(0.5)  # 0.5 itself does not count
    assert got["AR_singulars"] == pytest.approx(M.average_recall([0.5]))
    assert got["AR_stuff"] == pytest.approx(M.average_recall([0.2, 1.0]))
    assert math.isnan(M.png_summary([0.3], [True], [False])["AR_plurals"])


# ------------------------------------------------------------------ RES and ReasonSeg, by hand


def test_ciou_and_miou_differ() -> None:
    # Sample a: I = 1, U = 2 (IoU 0.5). Sample b: a 10x10 target, prediction misses 10 pixels:
    # I = 90, U = 100 (IoU 0.9).
    # cIoU = (1 + 90) / (2 + 100) = 89.2157 %; mIoU = (0.5 + 0.9) / 2 = 70 %.
    acc = M.MaskIoUAccumulator()
    acc.add("a", np.array([1, 1, 0]), np.array([1, 0, 0]))
    pred_b = np.ones((10, 10), dtype=bool)
    pred_b[0] = False
    acc.add("b", pred_b, np.ones((10, 10), dtype=bool))
    got = M.refseg_metrics(acc.records())
    assert got["cIoU"] == pytest.approx(100 * 91 / 102, rel=1e-12)
    assert got["mIoU"] == pytest.approx(70.0, rel=1e-12)


def test_empty_union_counts_zero_for_res_and_one_for_reasonseg() -> None:
    # Sample "e": empty target, empty prediction. Sample "q": I = 1, U = 4.
    acc = M.MaskIoUAccumulator()
    acc.add("e", np.zeros(4), np.zeros(4))
    acc.add("q", np.array([1, 1, 1, 0]), np.array([1, 0, 0, 1]))
    records = acc.records()
    # ReasonSeg: gIoU = (1 + 0.25) / 2 = 0.625; cIoU = 1 / 4.
    assert M.reasonseg_metrics(records) == pytest.approx({"gIoU": 0.625, "cIoU": 0.25})
    # mmdet: the empty sample counts 0 -> mIoU = (0 + 25) / 2 = 12.5 %; cIoU = 25 %.
    assert M.refseg_metrics(records) == pytest.approx({"cIoU": 25.0, "mIoU": 12.5})


def test_empty_prediction_on_nonempty_target_is_zero() -> None:
    acc = M.MaskIoUAccumulator()
    acc.add(0, np.zeros(4), np.array([1, 1, 0, 0]))
    assert M.reasonseg_metrics(acc.records()) == {"gIoU": 0.0, "cIoU": 0.0}


# ------------------------------------------------------------------ accumulator / multi-process


def _shard_like_distributed_sampler(n: int, world: int) -> list[list[int]]:
    """Indices per rank as torch's DistributedSampler (no shuffle) deals them, padding repeats."""
    total = math.ceil(n / world) * world
    indices = list(range(n)) + list(range(total - n))
    return [indices[rank:total:world] for rank in range(world)]


@pytest.mark.parametrize("world", [2, 3, 4])
def test_sharded_records_reduce_to_single_process_numbers(recorded: dict, world: int) -> None:
    cases = recorded["reasonseg_giou_ciou"]["cases"]
    single = M.MaskIoUAccumulator()
    for k, case in enumerate(cases):
        single.add(k, np.array(case["pred"]), np.array(case["target"]), ignore_index=255)

    states = []
    for shard in _shard_like_distributed_sampler(len(cases), world):
        rank_acc = M.MaskIoUAccumulator()
        for k in reversed(shard):  # arrival order must not matter
            rank_acc.add(
                k, np.array(cases[k]["pred"]), np.array(cases[k]["target"]), ignore_index=255
            )
        # what all_gather_object would ship: pickled plain dicts (also JSON-safe)
        states.append(pickle.loads(pickle.dumps(json.loads(json.dumps(rank_acc.state())))))
    merged = M.MaskIoUAccumulator()
    for state in reversed(states):
        merged.load_state(state)

    assert len(merged) == len(cases)  # padding repeats were dropped
    assert merged.records() == single.records()
    assert M.reasonseg_metrics(merged.records()) == M.reasonseg_metrics(single.records())
    assert M.refseg_metrics(merged.records()) == M.refseg_metrics(single.records())


def test_duplicate_ids_keep_first_and_reductions_refuse_duplicates(caplog) -> None:
    acc = M.MaskIoUAccumulator()
    first = acc.add("s", np.array([1, 0]), np.array([1, 0]))
    assert acc.add("s", np.array([1, 1]), np.array([1, 0])) == first
    assert "scored twice" in caplog.text
    assert len(acc) == 1
    duplicated = [first, first]
    with pytest.raises(ValueError, match="duplicate"):
        M.refseg_metrics(duplicated)
    with pytest.raises(ValueError, match="empty"):
        M.reasonseg_metrics([])


def test_gather_without_process_group_is_identity() -> None:
    acc = M.MaskIoUAccumulator()
    acc.add(1, np.array([1, 0]), np.array([1, 1]))
    assert acc.gather().records() == acc.records()
    assert M.all_gather_objects([1, 2]) == [1, 2]


def _gloo_worker(rank: int, world: int, init_file: str, out_dir: str, cases: list) -> None:
    torch.distributed.init_process_group(
        "gloo", init_method=f"file://{init_file}", rank=rank, world_size=world
    )
    try:
        acc = M.MaskIoUAccumulator()
        for k in _shard_like_distributed_sampler(len(cases), world)[rank]:
            acc.add(k, np.array(cases[k]["pred"]), np.array(cases[k]["target"]), ignore_index=255)
        gathered = acc.gather()
        with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as handle:
            json.dump(M.reasonseg_metrics(gathered.records()), handle)
    finally:
        torch.distributed.destroy_process_group()


@pytest.mark.slow
def test_two_real_processes_match_one(recorded: dict, tmp_path) -> None:
    cases = recorded["reasonseg_giou_ciou"]["cases"]
    single = M.MaskIoUAccumulator()
    for k, case in enumerate(cases):
        single.add(k, np.array(case["pred"]), np.array(case["target"]), ignore_index=255)
    torch.multiprocessing.spawn(
        _gloo_worker, args=(2, str(tmp_path / "pg"), str(tmp_path), cases), nprocs=2
    )
    expected = M.reasonseg_metrics(single.records())
    for rank in range(2):
        with open(tmp_path / f"rank{rank}.json") as handle:
            assert json.load(handle) == expected


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
