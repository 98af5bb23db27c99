"""scripts/multiprocess_eval_refcoco.py end to end on the toy set: one rank vs two ranks, with
and without --concat."""

from __future__ import annotations

import pytest

from tests.evaluation.conftest import TINY_CONFIG, read_results, run_cli

SPLITS = [
    "refcoco_val", "refcoco_testA", "refcoco_testB", "refcoco+_val", "refcoco+_testA",
    "refcoco+_testB", "refcocog_val", "refcocog_test",
]  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["refcoco", "refcoco_concat", "refcoco_share_splits"])
def test_refcoco_two_ranks_equal_one_rank(
    mode, toy_root, golden_checkpoint, two_rank_runs, tmp_path, monkeypatch
) -> None:
    """Exactly the numbers of one process; with --share-splits whole images go to the ranks."""
    concat = mode.endswith("concat")
    argv = [TINY_CONFIG, "--checkpoint", golden_checkpoint, "--data-root", toy_root, "--val"]
    argv += ["--concat"] * concat + ["--share-splits"] * mode.endswith("share_splits")
    run_cli("refcoco", [*argv, "--work-dir", str(tmp_path)], monkeypatch)
    one, two = read_results(tmp_path, "refcoco"), read_results(two_rank_runs(mode), "refcoco")

    assert (one["world_size"], two["world_size"]) == (1, 2)
    assert one["concat"] == two["concat"] == concat
    val_splits = [s for s in SPLITS if s.endswith("_val")]
    assert list(one["metrics"]) == val_splits
    assert one["metrics"] == {s: two["metrics"][s] for s in val_splits}  # exactly
    assert one["counts"] == {
        s: dict(two["counts"][s], per_rank=[two["counts"][s]["samples"]]) for s in val_splits
    }


@pytest.mark.slow
def test_two_ranks_count_every_image_and_expression_once(toy_root, two_rank_runs) -> None:
    from hg_lmm.evaluation.benchmarks import refcoco_eval_dataset

    two = read_results(two_rank_runs("refcoco_concat"), "refcoco")
    assert list(two["metrics"]) == SPLITS  # all eight benchmarks, cIoU and mIoU each
    for split in SPLITS:
        dataset = refcoco_eval_dataset(toy_root, split)
        expressions = sum(dataset[i].num_masks for i in range(len(dataset)))
        assert two["counts"][split] == {
            "samples": len(dataset),
            "records": expressions,
            "per_rank": [(len(dataset) + 1) // 2, len(dataset) // 2],
        }
        assert set(two["metrics"][split]) == {"cIoU", "mIoU"}
        assert 0.0 <= two["metrics"][split]["cIoU"] <= 100.0


def test_concat_and_single_modes_score_the_same_expressions(two_rank_runs) -> None:
    single = read_results(two_rank_runs("refcoco"), "refcoco")
    concat = read_results(two_rank_runs("refcoco_concat"), "refcoco")
    assert single["counts"] == {k: concat["counts"][k] for k in single["counts"]}
    # One forward per expression sees a different caption than one forward per image.
    assert single["metrics"] != {k: concat["metrics"][k] for k in single["metrics"]}
