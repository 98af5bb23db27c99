"""GCG_val/gcg_code/gcg_infer.py and gcg_evaluate.py end to end on the toy set: one rank vs two
ranks, and an interrupted inference that resumes to the same files as an uninterrupted one."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.evaluation.conftest import (
    CLI,
    MAX_NEW_TOKENS,
    REPO,
    TINY_CONFIG,
    read_results,
    run_cli,
)


def _infer_argv(toy_root, checkpoint, out_dir, work_dir, *extra) -> list[str]:
    return [
        TINY_CONFIG, "--checkpoint", checkpoint, "--data-root", toy_root, *MAX_NEW_TOKENS,
        "--output-dir", str(out_dir), "--work-dir", str(work_dir), *extra,
    ]  # fmt: skip


def _files(folder: Path) -> dict[str, bytes]:
    """The prediction files (the manifest and stray temporary files excluded)."""
    return {p.name: p.read_bytes() for p in folder.glob("*.json") if p.name != "run.json"}


@pytest.fixture(scope="module")
def uninterrupted(toy_root, golden_checkpoint, tmp_path_factory) -> Path:
    """One uninterrupted single-rank inference; returns its folder (predictions in pred/)."""
    root = tmp_path_factory.mktemp("gcg_one")
    with pytest.MonkeyPatch.context() as patch:
        run_cli("gcg_infer", _infer_argv(toy_root, golden_checkpoint, root / "pred", root), patch)
    return root


@pytest.mark.slow
def test_infer_two_ranks_write_the_same_files(uninterrupted, two_rank_runs, toy_root) -> None:
    one = read_results(uninterrupted, "gcg_infer")
    two = read_results(two_rank_runs("gcg_infer"), "gcg_infer")
    assert one["metrics"] == two["metrics"] == {"gcg_val": {"new": 4, "resumed": 0, "deferred": 0}}
    assert one["counts"]["gcg_val"] == {"samples": 4, "records": 4, "per_rank": [4]}
    assert two["counts"]["gcg_val"] == {"samples": 4, "records": 4, "per_rank": [2, 2]}
    files = _files(uninterrupted / "pred")
    assert sorted(files) == [f"sa_10000{i}.json" for i in range(4)]
    assert files == _files(Path(two["output_dir"]))


@pytest.mark.slow
def test_stopped_inference_resumes_to_the_same_files(
    uninterrupted, toy_root, golden_checkpoint, tmp_path, monkeypatch
) -> None:
    out = tmp_path / "pred"
    run_cli(
        "gcg_infer",
        _infer_argv(toy_root, golden_checkpoint, out, tmp_path, "--max-images", "1"),
        monkeypatch,
    )
    first = read_results(tmp_path, "gcg_infer")["metrics"]["gcg_val"]
    assert first == {"new": 1, "resumed": 0, "deferred": 3}
    assert len(_files(out)) == 1
    # What a kill during a write leaves behind: the writer's temporary file, never a torn json.
    (out / ".sa_100002.json.abc123.tmp").write_text('{"image_id": "sa_1000')
    run_cli("gcg_infer", _infer_argv(toy_root, golden_checkpoint, out, tmp_path), monkeypatch)
    second = read_results(tmp_path, "gcg_infer")["metrics"]["gcg_val"]
    assert second == {"new": 3, "resumed": 1, "deferred": 0}
    assert _files(out) == _files(uninterrupted / "pred")


@pytest.mark.slow
def test_killed_inference_resumes_to_the_same_files(
    uninterrupted, toy_root, golden_checkpoint, tmp_path, monkeypatch
) -> None:
    """SIGKILL a real run as soon as its first prediction exists, then restart it."""
    out = tmp_path / "pred"
    env = dict(os.environ, ACCELERATE_USE_CPU="1", CUDA_VISIBLE_DEVICES="", OMP_NUM_THREADS="1")
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    argv = _infer_argv(toy_root, golden_checkpoint, out, tmp_path)
    proc = subprocess.Popen(
        [sys.executable, str(CLI["gcg_infer"]), *argv],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 120
        while not _files(out) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    written = len(_files(out))
    if written == len(_files(uninterrupted / "pred")):
        pytest.skip("the run finished before it could be killed")
    assert proc.returncode == -signal.SIGKILL and written >= 1
    run_cli("gcg_infer", argv, monkeypatch)
    resumed = read_results(tmp_path, "gcg_infer")["metrics"]["gcg_val"]
    assert resumed == {"new": 4 - written, "resumed": written, "deferred": 0}
    assert _files(out) == _files(uninterrupted / "pred")


@pytest.mark.slow
def test_evaluate_one_rank_and_two_rank_predictions_alike(
    uninterrupted, two_rank_runs, toy_root, tiny_bert, tmp_path, monkeypatch
) -> None:
    two_ranks = read_results(two_rank_runs("gcg_infer"), "gcg_infer")["output_dir"]
    # METEOR and CIDEr need Java, and identical files give identical captions anyway, so only
    # the single-rank predictions are scored with them.
    java = shutil.which("java") is not None
    metrics = {}
    for name, pred_dir in (("one", uninterrupted / "pred"), ("two", two_ranks)):
        argv = ["--prediction-dir", str(pred_dir), "--data-root", toy_root]
        argv += ["--text-model", tiny_bert, "--work-dir", str(tmp_path / name)]
        if name == "two" or not java:
            argv.append("--no-captions")
        run_cli("gcg_evaluate", argv, monkeypatch)
        metrics[name] = read_results(tmp_path / name, "gcg")["metrics"]["gcg_val"]
    assert set(metrics["two"]) == {"mIoU", "recall", "AP50"}
    assert {k: metrics["one"][k] for k in metrics["two"]} == metrics["two"]  # exactly
    if java:
        assert {"METEOR", "CIDEr"} <= set(metrics["one"])
    assert 0.0 <= metrics["one"]["mIoU"] <= 1.0 and 0.0 <= metrics["one"]["recall"] <= 1.0


def test_evaluate_names_missing_predictions(toy_root, tiny_bert, tmp_path, monkeypatch) -> None:
    argv = ["--prediction-dir", str(tmp_path / "none"), "--data-root", toy_root]
    with pytest.raises(SystemExit, match="run \\(or resume\\) GCG_val/gcg_code/gcg_infer.py"):
        run_cli("gcg_evaluate", [*argv, "--text-model", tiny_bert, "--no-captions"], monkeypatch)
