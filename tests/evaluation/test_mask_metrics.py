"""Mask metrics (PNG, RES, ReasonSeg): the reference's recorded cases (metrics.json) and
hand-computed cases."""

from __future__ import annotations

import json
import math
import os
import pickle

import numpy as np
import pytest
import torch

from hg_lmm.evaluation import mask_metrics as M
from tests.evaluation.conftest import strip

REL = 1e-6


@pytest.fixture(scope="module")
def recorded(fixtures_dir: str) -> dict:
    with open(os.path.join(fixtures_dir, "metrics", "metrics.json")) as handle:
        return json.load(handle)


def record(sample_id, pred, target, *, ignore_index: int | None = None) -> M.MaskRecord:
    """The record the eval runner makes for one scored mask."""
    counts = M.mask_intersection_union(
        np.asarray(pred), np.asarray(target), ignore_index=ignore_index
    )
    return M.MaskRecord(str(sample_id), *counts)


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
    records = [record(k, c["pred"], c["gt"]) for k, c in enumerate(case["cases"])]
    got = M.refseg_metrics(records)
    for key, expected in case["expected"].items():
        assert got[key] == pytest.approx(expected, rel=REL), key


def test_reasonseg_matches_lisa(recorded: dict) -> None:
    case = recorded["reasonseg_giou_ciou"]
    records = [
        record(k, c["pred"], c["target"], ignore_index=255) for k, c in enumerate(case["cases"])
    ]
    got = M.reasonseg_metrics(records)
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
    pred_b = np.ones((10, 10), dtype=bool)
    pred_b[0] = False
    records = [record("a", [1, 1, 0], [1, 0, 0]), record("b", pred_b, np.ones((10, 10), bool))]
    got = M.refseg_metrics(records)
    assert got["cIoU"] == pytest.approx(100 * 91 / 102, rel=1e-12)
    assert got["mIoU"] == pytest.approx(70.0, rel=1e-12)


def test_empty_union_counts_zero_for_res_and_one_for_reasonseg() -> None:
    # Sample "e": empty target, empty prediction. Sample "q": I = 1, U = 4.
    records = [record("e", np.zeros(4), np.zeros(4)), record("q", [1, 1, 1, 0], [1, 0, 0, 1])]
    # ReasonSeg: gIoU = (1 + 0.25) / 2 = 0.625; cIoU = 1 / 4.
    assert M.reasonseg_metrics(records) == pytest.approx({"gIoU": 0.625, "cIoU": 0.25})
    # mmdet: the empty sample counts 0 -> mIoU = (0 + 25) / 2 = 12.5 %; cIoU = 25 %.
    assert M.refseg_metrics(records) == pytest.approx({"cIoU": 25.0, "mIoU": 12.5})


def test_empty_prediction_on_nonempty_target_is_zero() -> None:
    records = [record(0, np.zeros(4), [1, 1, 0, 0])]
    assert M.reasonseg_metrics(records) == {"gIoU": 0.0, "cIoU": 0.0}


# ------------------------------------------------------------------ multi-process


def _shard_like_the_runner(n: int, world: int) -> list[list[int]]:
    """Indices per rank as `EvalRunner.shard` deals them: rank, rank + world, ... (no repeats)."""
    return [list(range(rank, n, world)) for rank in range(world)]


@pytest.mark.parametrize("world", [2, 3, 4])
def test_sharded_records_reduce_to_single_process_numbers(recorded: dict, world: int) -> None:
    cases = recorded["reasonseg_giou_ciou"]["cases"]
    single = [record(k, c["pred"], c["target"], ignore_index=255) for k, c in enumerate(cases)]

    gathered = []
    for shard in reversed(_shard_like_the_runner(len(cases), world)):  # any rank order
        # what gather_object ships: pickled records, here also through JSON and back
        local = [single[k].to_dict() for k in reversed(shard)]  # any arrival order
        shipped = pickle.loads(pickle.dumps(json.loads(json.dumps(local))))
        gathered += [M.MaskRecord.from_dict(item) for item in shipped]

    assert sorted(gathered, key=lambda r: int(r.sample_id)) == single
    assert M.reasonseg_metrics(gathered) == M.reasonseg_metrics(single)
    assert M.refseg_metrics(gathered) == M.refseg_metrics(single)


def test_reductions_refuse_duplicate_or_missing_records() -> None:
    first = record("s", [1, 0], [1, 0])
    with pytest.raises(ValueError, match="duplicate"):
        M.refseg_metrics([first, first])
    with pytest.raises(ValueError, match="empty"):
        M.reasonseg_metrics([])
    with pytest.raises(ValueError, match="isthing"):
        M.png_metrics([first])
