"""scripts/multiprocess_eval_png.py end to end on the toy set: one rank vs two ranks."""

from __future__ import annotations

import pytest

from tests.evaluation.conftest import TINY_CONFIG, read_results, run_cli


@pytest.mark.slow
def test_png_two_ranks_equal_one_rank(
    toy_root, golden_checkpoint, two_rank_runs, tmp_path, monkeypatch
) -> None:
    from hg_lmm.datasets.layout import png_dataset

    argv = [TINY_CONFIG, "--checkpoint", golden_checkpoint, "--data-root", toy_root]
    run_cli("png", [*argv, "--work-dir", str(tmp_path)], monkeypatch)
    one, two = read_results(tmp_path, "png"), read_results(two_rank_runs("png"), "png")

    assert (one["world_size"], two["world_size"]) == (1, 2)
    assert one["metrics"] == two["metrics"]  # exactly, not approximately
    metrics = one["metrics"]["png_val"]
    for key in ("AR", "AR_things", "AR_stuff", "AR_singulars", "AR_plurals", "acc_at_0_5"):
        assert 0.0 <= metrics[key] <= 1.0, key
    assert 0.0 < metrics["pixel_acc"] < 1.0

    # Each narrative is scored once, and each grounded utterance gives one record.
    dataset = png_dataset(toy_root, "val2017")
    masks = sum(dataset[i].num_masks for i in range(len(dataset)))
    assert one["counts"]["png_val"] == {"samples": len(dataset), "records": masks, "per_rank": [6]}
    assert two["counts"]["png_val"] == {"samples": 6, "records": masks, "per_rank": [3, 3]}
