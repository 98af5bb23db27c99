"""The shared eval runner and the per-benchmark pieces it drives (cheap, single process)."""

from __future__ import annotations

import argparse
import json
import math

import pytest
import torch

from hg_lmm.datasets.sample import GroundingSample, Piece
from hg_lmm.evaluation import gcg
from hg_lmm.evaluation.benchmarks import (
    REFCOCO_SPLITS,
    png_pixel_accuracy,
    png_records,
    reasonseg_question,
    refseg_records,
)
from hg_lmm.evaluation.mask_metrics import MaskRecord
from hg_lmm.evaluation.runner import (
    EvalRunner,
    default_work_dir,
    eval_arg_parser,
    flatten,
    format_table,
    load_model,
    write_report,
)
from tests.evaluation.conftest import REPO, TINY_CONFIG

# --- command line ---------------------------------------------------------------------------


def test_every_cli_shares_these_flags() -> None:
    args = eval_arg_parser("x").parse_args(["cfg.py", "--checkpoint", "c.pth"])
    assert (args.config, args.checkpoint, args.unsafe_load) == ("cfg.py", "c.pth", False)
    assert (args.data_root, args.work_dir, args.limit, args.num_workers) == ("data/", None, None, 0)
    args = eval_arg_parser("x").parse_args(
        ["cfg.py", "--checkpoint", "c", "--unsafe-load", "--data-root", "data/toy", "--limit", "3"]
    )
    assert (args.unsafe_load, args.data_root, args.limit) == (True, "data/toy", 3)
    with pytest.raises(SystemExit):
        eval_arg_parser("x").parse_args(["cfg.py"])  # --checkpoint is required
    metric_only = eval_arg_parser("x", with_model=False).parse_args([])
    assert not hasattr(metric_only, "config") and not hasattr(metric_only, "num_workers")
    assert (metric_only.data_root, metric_only.limit) == ("data/", None)


def test_default_work_dir_follows_the_config_name() -> None:
    assert default_work_dir("configs/tiny/hg_tiny_llava_toy.py") == "work_dirs/hg_tiny_llava_toy"
    assert default_work_dir(None, "gcg_result") == "work_dirs/gcg_result"


# --- the loop ---------------------------------------------------------------------------------


def _runner(tmp_path, limit=None) -> EvalRunner:
    args = argparse.Namespace(
        data_root="data/toy", work_dir=str(tmp_path), limit=limit, num_workers=0
    )
    return EvalRunner(args, "unit", load=False)


def test_run_scores_every_sample_once_in_index_order(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("ACCELERATE_USE_CPU", "1")
    runner = _runner(tmp_path)
    assert runner.shard(5) == [0, 1, 2, 3, 4]
    seen = []

    def step(index, sample):
        seen.append(index)
        assert not torch.is_grad_enabled()
        return [f"{sample}-a", f"{sample}-b"] if index % 2 else f"{sample}"

    results = runner.run("letters", list("abcde"), step)
    assert seen == [0, 1, 2, 3, 4]
    assert results == ["a", ["b-a", "b-b"], "c", ["d-a", "d-b"], "e"]
    assert runner.counts["letters"] == {"samples": 5, "records": 7, "per_rank": [5]}


def test_limit_scores_only_the_first_samples(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("ACCELERATE_USE_CPU", "1")
    runner = _runner(tmp_path, limit=2)
    assert runner.run("letters", list("abcde"), lambda i, s: s) == ["a", "b"]
    assert runner.counts["letters"]["samples"] == 2


def test_sharding_partitions_the_indices() -> None:
    shards = [list(range(rank, 7, 3)) for rank in range(3)]  # what rank r of 3 takes
    assert sorted(i for shard in shards for i in shard) == list(range(7))
    EvalRunner._check_coverage("ok", [i for shard in shards for i in shard], 7)


@pytest.mark.parametrize(
    ("indices", "message"),
    [([0, 1, 1, 2], r"repeated \[1\]"), ([0, 2], r"missing \[1\]")],
)
def test_coverage_check_names_repeats_and_gaps(indices, message) -> None:
    with pytest.raises(RuntimeError, match=message):
        EvalRunner._check_coverage("toy", indices, 3)


def test_report_writes_strict_json_and_prints_a_table(tmp_path, capsys) -> None:
    metrics = {"png_val": {"AR": 0.25, "AR_plurals": math.nan}, "other": {"cIoU": 12.0}}
    path = write_report(tmp_path / "out", "png", metrics, counts={"png_val": {"samples": 3}})
    data = json.loads(path.read_text())  # NaN is written as null, so strict JSON parses
    assert path.name == "png_results.json"
    assert data["metrics"]["png_val"] == {"AR": 0.25, "AR_plurals": None}
    assert data["counts"] == {"png_val": {"samples": 3}}
    printed = capsys.readouterr().out
    assert "png_val  0.2500  -" in printed and "12.0000" in printed
    assert format_table({"a": {"x": 1.0}}).splitlines() == ["dataset  x", "a        1.0000"]


def test_flatten() -> None:
    assert flatten([[1, 2], [], [3]]) == [1, 2, 3]


# --- model loading ----------------------------------------------------------------------------


def test_missing_config_says_what_to_pass(tmp_path) -> None:
    with pytest.raises(SystemExit, match="config file .* not found"):
        load_model(str(tmp_path / "nope.py"), None)


@pytest.mark.slow
def test_checkpoint_errors_and_unsafe_load(golden_checkpoint, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("ACCELERATE_USE_CPU", "1")
    monkeypatch.chdir(REPO)  # the tiny config caches its LMM below the repo's work_dirs/
    bad = tmp_path / "bad.pth"
    torch.save({"state_dict": {"not.a.key": torch.zeros(1)}}, bad)
    with pytest.raises(SystemExit, match="cannot evaluate .*bad.pth.*does not fit"):
        load_model(TINY_CONFIG, str(bad))

    # A checkpoint that needs unpickling loads only with --unsafe-load, passed through the CLI.
    pickled = tmp_path / "pickled.pth"
    state = torch.load(golden_checkpoint, weights_only=True)["state_dict"]
    torch.save({"state_dict": state, "args": argparse.Namespace(lr=1.0)}, pickled)
    argv = [TINY_CONFIG, "--checkpoint", str(pickled), "--work-dir", str(tmp_path)]
    with pytest.raises(SystemExit, match="--unsafe-load"):
        EvalRunner(eval_arg_parser("x").parse_args(argv), "unit")
    runner = EvalRunner(eval_arg_parser("x").parse_args([*argv, "--unsafe-load"]), "unit")
    loaded = runner.model.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in state.items())
    assert not runner.model.training

    # A diverged run's checkpoint (all NaN) would load and score 0: refused by name.
    diverged = tmp_path / "diverged.pth"
    nan = {
        k: v.float().fill_(float("nan")) if v.is_floating_point() else v for k, v in state.items()
    }
    torch.save({"state_dict": nan}, diverged)
    with pytest.raises(SystemExit, match="cannot evaluate .*diverged.pth.*hold NaN or Inf"):
        load_model(TINY_CONFIG, str(diverged))


# --- benchmarks -------------------------------------------------------------------------------


class _FakeModel:
    """Predicts, for every phrase k of a sample, the mask of its k-th token count (recorded)."""

    def __init__(self) -> None:
        self.calls: list[list[list[str]]] = []
        self.grouped: list[int] = []  # samples per predict_group call

    def predict_group(self, samples, batch_size=None):
        self.grouped.append(len(samples))
        return self(samples)

    def __call__(self, samples, mode="predict"):
        assert mode == "predict"
        self.calls.append([[p.text for p in s.pieces] for s in samples])
        out = []
        for s in samples:
            masks = torch.zeros_like(s.masks)
            masks[:, 0, :] = True  # the first row of every mask
            out.append({"masks": masks, "logits": masks.float()})
        return out


def _refcoco_like_sample() -> GroundingSample:
    masks = torch.zeros(2, 4, 5, dtype=torch.bool)
    masks[0, :2] = True
    masks[1, 0, :1] = True
    texts = ["the red circle", "the blue square"]
    return GroundingSample(
        image=None,
        pieces=[Piece(t, k, period_after=True) for k, t in enumerate(texts)],
        masks=masks,
        plural=[False, False],
        isthing=[True, True],
        source="unit",
    )


@pytest.mark.parametrize("concat", [True, False])
def test_refseg_records_per_expression_in_both_modes(concat) -> None:
    model, tokenized = _FakeModel(), []

    def tokenize(sample):
        tokenized.append([(p.text, p.mask_id, p.period_after) for p in sample.pieces])
        return sample

    records = refseg_records(model, 7, _refcoco_like_sample(), tokenize=tokenize, concat=concat)
    # Prediction: first row (5 px). Mask 0: 10 px incl. that row; mask 1: 1 px in that row.
    assert records == [MaskRecord("7/0", 5, 10), MaskRecord("7/1", 1, 5)]
    if concat:
        assert tokenized == [[("the red circle", 0, True), ("the blue square", 1, True)]]
        assert len(model.calls) == 1 and len(model.calls[0]) == 1
    else:  # each expression alone, as phrase 0, still followed by its period
        assert tokenized == [[("the red circle", 0, True)], [("the blue square", 0, True)]]
        assert model.calls == [[["the red circle"], ["the blue square"]]]


def test_png_records_carry_tags_and_pixels() -> None:
    sample = _refcoco_like_sample()
    sample.plural[1] = True
    sample.isthing[1] = False
    records = png_records(_FakeModel(), 3, sample)
    assert [r.meta for r in records] == [
        {"isthing": True, "plural": False, "pixels": 20},
        {"isthing": False, "plural": True, "pixels": 20},
    ]
    # Wrong pixels = U - I: 5 + 4 of 40, so accuracy 31 / 40.
    assert png_pixel_accuracy(records) == pytest.approx(31 / 40)


def test_refcoco_splits_are_the_eight_benchmarks() -> None:
    assert list(REFCOCO_SPLITS) == [
        "refcoco_val", "refcoco_testA", "refcoco_testB", "refcoco+_val", "refcoco+_testA",
        "refcoco+_testB", "refcocog_val", "refcocog_test",
    ]  # fmt: skip


def test_reasonseg_question_asks_for_a_short_answer() -> None:
    asked = reasonseg_question("What is round?")
    assert asked.startswith("What is round? Based on the image, answer the name of the object")
    assert reasonseg_question("Find the red thing").startswith("Find the red thing? Based")


# --- GCG prediction files -----------------------------------------------------------------------


def test_prediction_files_round_trip(tmp_path) -> None:
    masks = torch.zeros(2, 3, 4, dtype=torch.bool)
    masks[1, 1:, 2:] = True
    record = gcg.prediction_record("sa_1", "A cat.", ["A cat", "x"], masks)
    assert set(record) == {"image_id", "caption", "phrases", "pred_masks"}
    gcg.prediction_path(tmp_path, "sa_1").write_text(json.dumps(record))
    assert gcg.has_prediction(tmp_path, "sa_1") and not gcg.has_prediction(tmp_path, "sa_2")
    (loaded,) = gcg.load_predictions(tmp_path, ["sa_1"])
    assert (loaded.image_id, loaded.caption, loaded.phrases) == ("sa_1", "A cat.", ("A cat", "x"))
    assert loaded.masks == tuple(record["pred_masks"])
    with pytest.raises(SystemExit, match=r"lacks predictions of 1 of 2 images \(e.g. \['sa_2'\]\)"):
        gcg.load_predictions(tmp_path, ["sa_1", "sa_2"])


def test_unreadable_prediction_is_redone(tmp_path) -> None:
    gcg.prediction_path(tmp_path, "sa_1").write_text('{"image_id": "sa_')
    gcg.prediction_path(tmp_path, "sa_2").write_text('{"image_id": "sa_9"}')
    assert not gcg.has_prediction(tmp_path, "sa_1")
    assert not gcg.has_prediction(tmp_path, "sa_2")


def test_manifest_refuses_to_mix_runs(tmp_path) -> None:
    first = {"checkpoint": "a.pth", "checkpoint_sha256": "aa", "split": "val"}
    gcg.check_manifest(tmp_path, first)
    gcg.check_manifest(tmp_path, first, write=False)  # same setting: resume
    (tmp_path / "sa_1.json").write_text("{}")
    other = dict(first, checkpoint="b.pth", checkpoint_sha256="bb")
    with pytest.raises(SystemExit, match="checkpoint_sha256: 'aa' -> 'bb'.*'a.pth'.*--overwrite"):
        gcg.check_manifest(tmp_path, other)
    gcg.check_manifest(tmp_path, other, overwrite=True, write=False)  # other ranks: no-op
    assert (tmp_path / "sa_1.json").exists()
    gcg.check_manifest(tmp_path, other, overwrite=True)  # rank 0 clears and restarts
    assert not (tmp_path / "sa_1.json").exists()
    assert json.loads((tmp_path / gcg.MANIFEST).read_text()) == other
