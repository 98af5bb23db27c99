"""Evaluation under bad inputs: each problem is found early and named; no result is lost."""

from __future__ import annotations

import argparse
import json
import logging
import shutil

import pytest
import torch

from hg_lmm.datasets.layout import gcg_dataset
from hg_lmm.datasets.sample import GroundingSample, Piece
from hg_lmm.evaluation import gcg
from hg_lmm.evaluation.benchmarks import refseg_records
from hg_lmm.evaluation.mask_metrics import EMPTY_TARGET, MaskRecord, refseg_metrics
from hg_lmm.evaluation.runner import EvalRunner, write_report
from hg_lmm.utils.files import default_file_mode
from tests.evaluation.conftest import TINY_CONFIG, read_results, run_cli


@pytest.fixture
def not_a_dir(tmp_path):
    """A --work-dir that cannot be created whoever runs the tests (root included)."""
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    return blocker / "results"


# --- 1. results are never lost to an unwritable work dir ----------------------------------------


def test_unwritable_work_dir_stops_the_run_at_start(not_a_dir, toy_root, monkeypatch) -> None:
    # The config and checkpoint are not even read: the check comes before the model is built.
    argv = ["missing_config.py", "--checkpoint", "x.pth", "--work-dir", str(not_a_dir)]
    with pytest.raises(SystemExit, match=f"cannot write to {not_a_dir}.*--work-dir"):
        run_cli("png", [*argv, "--data-root", toy_root], monkeypatch)
    with pytest.raises(SystemExit, match="cannot write to .*--work-dir"):
        run_cli("gcg_evaluate", ["--work-dir", str(not_a_dir)], monkeypatch)
    argv = [*argv[:3], "--output-dir", str(not_a_dir)]
    with pytest.raises(SystemExit, match="cannot write to .*--output-dir"):
        run_cli("gcg_infer", argv, monkeypatch)


def test_table_is_printed_before_the_file_is_written(not_a_dir, capsys) -> None:
    with pytest.raises(SystemExit, match="metrics are printed above.*--work-dir"):
        write_report(not_a_dir, "png", {"png_val": {"AR": 0.25}})
    assert "png_val  0.2500" in capsys.readouterr().out


def test_results_file_is_readable_by_others(tmp_path) -> None:
    path = write_report(tmp_path, "png", {"png_val": {"AR": 0.25}})
    assert path.stat().st_mode & 0o777 == default_file_mode()  # 0644 under umask 022


# --- 2. a resumed GCG inference never mixes two models ------------------------------------------


def test_manifest_follows_content_not_paths(tmp_path) -> None:
    ckpt = tmp_path / "head.pth"
    torch.save({"state_dict": {"head.w": torch.zeros(2)}}, ckpt)
    first = gcg.run_manifest(TINY_CONFIG, str(ckpt), split="val", max_new_tokens=12)
    assert len(first["checkpoint_sha256"]) == len(first["config_sha256"]) == 64
    out = tmp_path / "pred"
    gcg.check_manifest(out, first)
    (out / "sa_1.json").write_text("{}")
    # Another model saved at the same path: refused, naming what changed.
    torch.save({"state_dict": {"head.w": torch.ones(2)}}, ckpt)
    second = gcg.run_manifest(TINY_CONFIG, str(ckpt), split="val", max_new_tokens=12)
    with pytest.raises(SystemExit, match="checkpoint_sha256: .* -> .*--overwrite"):
        gcg.check_manifest(out, second)
    # The same file copied elsewhere: the same model, so the run resumes.
    torch.save({"state_dict": {"head.w": torch.zeros(2)}}, ckpt)
    moved = tmp_path / "moved.pth"
    shutil.copy(ckpt, moved)
    gcg.check_manifest(
        out, gcg.run_manifest(TINY_CONFIG, str(moved), split="val", max_new_tokens=12)
    )


def test_run_that_predicted_nothing_does_not_block_the_next(tmp_path) -> None:
    out = tmp_path / "pred"
    gcg.check_manifest(out, {"checkpoint_sha256": "aaa", "split": "val"})  # then it crashed
    gcg.check_manifest(out, {"checkpoint_sha256": "bbb", "split": "val"})
    assert json.loads((out / gcg.MANIFEST).read_text())["checkpoint_sha256"] == "bbb"


# --- 5. empty targets are scored by the metric's rule and counted -------------------------------


class _PredictNothing:
    def __call__(self, samples, mode="predict"):
        return [{"masks": torch.zeros_like(s.masks)} for s in samples]

    def predict_group(self, samples, batch_size=None):
        return self(samples)


def test_empty_target_is_scored_and_counted(tmp_path, monkeypatch, caplog) -> None:
    masks = torch.zeros(2, 4, 4, dtype=torch.bool)
    masks[0, :2] = True  # mask 1 is empty
    sample = GroundingSample(
        image=None,
        pieces=[Piece("the circle", 0), Piece("the square", 1)],
        masks=masks,
        plural=[False, False],
        isthing=[True, True],
        source="unit",
    )
    records = refseg_records(_PredictNothing(), 0, sample, tokenize=lambda s: s, concat=True)
    assert records == [MaskRecord("0/0", 0, 8), MaskRecord("0/1", 0, 0, {EMPTY_TARGET: True})]
    assert refseg_metrics(records)["mIoU"] == 0.0  # mmdet: an empty union counts 0

    monkeypatch.setenv("ACCELERATE_USE_CPU", "1")
    args = argparse.Namespace(data_root="x", work_dir=str(tmp_path), limit=None, num_workers=0)
    runner = EvalRunner(args, "unit", load=False)
    with caplog.at_level(logging.WARNING, logger="hg_lmm.evaluation.runner"):
        runner.run("refcoco_val", [sample, sample], lambda i, s: records)
    assert runner.counts["refcoco_val"]["empty_targets"] == 2
    assert any("2 of 4 ground-truth masks are empty" in r.getMessage() for r in caplog.records)


# --- 6. a torn GCG prediction file is named ------------------------------------------------


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('{"image_id": "sa_1", "capt', "is not valid JSON .*torn or damaged; delete it"),
        ('["a list"]', "is not a GCG prediction"),
        ('{"caption": "x", "phrases": ["a"], "pred_masks": []}', "1 phrases but 0 masks"),
    ],
)
def test_torn_prediction_file_is_named(tmp_path, content, message) -> None:
    gcg.prediction_path(tmp_path, "sa_1").write_text(content)
    with pytest.raises(SystemExit, match=message) as error:
        gcg.load_predictions(tmp_path, ["sa_1"])
    assert "sa_1.json" in str(error.value) and "gcg_infer.py" in str(error.value)


# --- 7. GCG evaluation checks Java and the text model first, and keeps the mask metrics ---------


def test_gcg_evaluate_without_java_fails_before_any_work(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(shutil, "which", lambda name: None)
    argv = ["--data-root", str(tmp_path / "no_data"), "--work-dir", str(tmp_path)]
    with pytest.raises(SystemExit, match="need Java .*--no-captions"):
        run_cli("gcg_evaluate", argv, monkeypatch)


def test_gcg_evaluate_names_the_text_model_flag(tmp_path, monkeypatch) -> None:
    argv = ["--no-captions", "--text-model", str(tmp_path / "no_bert"), "--work-dir", str(tmp_path)]
    with pytest.raises(SystemExit, match="no_bert.*pass --text-model"):
        run_cli("gcg_evaluate", argv, monkeypatch)


def test_gcg_mask_metrics_are_saved_when_captions_fail(
    toy_root, tiny_bert, tmp_path, monkeypatch
) -> None:
    from hg_lmm.evaluation import gcg_metrics

    pred_dir = tmp_path / "pred"
    dataset = gcg_dataset(toy_root, "val")
    for i in range(len(dataset)):  # the ground truth itself as the prediction
        gt = dataset[i]
        record = gcg.prediction_record(gt.image_id, gt.caption, gt.labels, gt.masks)
        gcg.prediction_path(pred_dir, gt.image_id).parent.mkdir(exist_ok=True)
        gcg.prediction_path(pred_dir, gt.image_id).write_text(json.dumps(record))

    def meteor_crash(*args, **kwargs):
        raise RuntimeError("meteor-1.5.jar died")

    monkeypatch.setattr(shutil, "which", lambda name: "/usr/bin/java")
    monkeypatch.setattr(gcg_metrics, "caption_metrics", meteor_crash)
    argv = ["--prediction-dir", str(pred_dir), "--data-root", toy_root, "--text-model", tiny_bert]
    with pytest.raises(SystemExit, match="meteor-1.5.jar died.*saved above.*--no-captions"):
        run_cli("gcg_evaluate", [*argv, "--work-dir", str(tmp_path)], monkeypatch)
    saved = read_results(tmp_path, "gcg")
    assert saved["metrics"]["gcg_val"] == {"mIoU": 1.0, "recall": 1.0, "AP50": 1.0}
    assert "meteor-1.5.jar died" in saved["caption_metrics_error"]


# --- 9. arguments are validated and --help is true --------------------------------------------


@pytest.mark.parametrize(
    ("cli", "flag", "value", "message"),
    [
        ("png", "--limit", "0", "must be at least 1"),
        ("png", "--limit", "-1", "must be at least 1"),
        ("reasonseg", "--threshold", "1.5", "strictly between 0 and 1"),
        ("reasonseg", "--threshold", "0", "strictly between 0 and 1"),
        ("gcg_infer", "--max-images", "0", "must be at least 1"),
    ],
)
def test_out_of_range_arguments_are_refused(cli, flag, value, message, monkeypatch, capsys):
    with pytest.raises(SystemExit) as error:
        run_cli(cli, [TINY_CONFIG, "--checkpoint", "x.pth", flag, value], monkeypatch)
    assert error.value.code == 2 and message in capsys.readouterr().err


def test_gcg_evaluate_help_shows_its_real_work_dir_default(monkeypatch, capsys) -> None:
    with pytest.raises(SystemExit):
        run_cli("gcg_evaluate", ["--help"], monkeypatch)
    assert "default work_dirs/gcg_result" in " ".join(capsys.readouterr().out.split())
