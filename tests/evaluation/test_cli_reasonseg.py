"""ReasonSeg_val/reasonseg_code/reasonseg_val.py end to end on the toy set: one rank vs two."""

from __future__ import annotations

import pytest

from tests.evaluation.conftest import MAX_NEW_TOKENS, TINY_CONFIG, read_results, run_cli


@pytest.mark.slow
def test_reasonseg_two_ranks_equal_one_rank(
    toy_root, golden_checkpoint, two_rank_runs, tmp_path, monkeypatch
) -> None:
    argv = [TINY_CONFIG, "--checkpoint", golden_checkpoint, "--data-root", toy_root]
    argv += [*MAX_NEW_TOKENS, "--split", "val", "test", "--work-dir", str(tmp_path)]
    run_cli("reasonseg", argv, monkeypatch)
    one, two = (
        read_results(tmp_path, "reasonseg"),
        read_results(two_rank_runs("reasonseg"), "reasonseg"),
    )

    assert (one["world_size"], two["world_size"]) == (1, 2)
    assert one["threshold"] == 0.3
    assert one["metrics"] == two["metrics"]  # exactly
    for split in ("reasonseg_val", "reasonseg_test"):
        assert set(one["metrics"][split]) == {"gIoU", "cIoU"}
        assert one["counts"][split] == {"samples": 4, "records": 4, "per_rank": [4]}
        assert two["counts"][split] == {"samples": 4, "records": 4, "per_rank": [2, 2]}
