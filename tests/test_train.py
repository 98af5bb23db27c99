"""Training on the tiny config through `scripts/train.py` (xtuner's training process, exit status
kept): checkpoints our loader reads, a bit-identical resume, atomic checkpoint files, and failures
that exit non-zero with a message naming the file."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "tiny" / "hg_tiny_llava_toy.py"


def _train(cwd: Path, *args: str, ok: bool = True) -> str:
    """Run `scripts/train.py CONFIG ARGS` (xtuner's training process) in `cwd`; returns the log.

    `ok`: whether the run must succeed (exit 0) or fail (a non-zero exit)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = f"{ROOT}{os.pathsep}{env.get('PYTHONPATH', '')}"
    cmd = [sys.executable, str(ROOT / "scripts" / "train.py"), str(CONFIG), *args]
    out = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    log = out.stdout + out.stderr
    assert (out.returncode == 0) == ok, (out.returncode, log[-4000:])
    return log


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    from hg_lmm.testing.toy import ToyConfig, make_toy_data

    cwd = tmp_path_factory.mktemp("train")
    make_toy_data(str(cwd / "data" / "toy"), ToyConfig.small(png_train=6))
    return cwd


def _check_curves(wd: Path, n_iters: int) -> None:
    """learning_curve.json has a point every 2 iterations with the loss terms and the learning
    rate, it is drawn as learning_curve.png, and TensorBoard's event file holds the losses."""
    from PIL import Image
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    points = json.loads((wd / "learning_curve.json").read_text())["points"]
    assert [p["iter"] for p in points] == list(range(2, n_iters + 1, 2))
    assert all({"loss", "lr"} <= p.keys() and p["lr"] > 0 for p in points), points
    # The tiny config's schedule: warm-up over by iteration 2, then the cosine decay.
    lrs = [p["lr"] for p in points]
    assert lrs == sorted(lrs, reverse=True) and lrs[-1] < lrs[0] <= 1e-3, lrs
    with Image.open(wd / "learning_curve.png") as image:
        assert image.format == "PNG" and image.size == (700, 550)
    events = list(wd.glob("*/vis_data/events.out.tfevents.*"))
    assert len(events) == 1, list(wd.rglob("*"))
    tags = EventAccumulator(str(events[0])).Reload().Tags()["scalars"]
    assert {"loss", "lr"} <= set(tags), tags


@pytest.mark.slow
def test_train_checkpoint_and_exact_resume(run_dir):
    from hg_lmm.utils.checkpoint import load_state, read_state_dict

    # Four training images are corrupt: over two epochs, in DataLoader workers (which start
    # afresh every epoch), each is reported once and counted in a summary at the end.
    with open(run_dir / "data/toy/coco/annotations/panoptic_train2017.json") as f:
        bad = [im["file_name"] for im in json.load(f)["images"][:4]]
    for name in bad:
        (run_dir / "data/toy/coco/train2017" / name).write_bytes(b"not a jpeg")
    opts = ["--cfg-options", "default_hooks.checkpoint.interval=2"]
    once = ["train_cfg.max_epochs=2", "randomness.seed=None", "train_dataloader.num_workers=2"]
    # The curves: a point every 2 iterations, and the TensorBoard switch (README, Training).
    curves = ["custom_hooks.0.interval=2", "visualizer.vis_backends.0.type=TensorboardVisBackend"]
    log = _train(run_dir, "--work-dir", "wd", *opts, *once, *curves)
    n_iters = int(re.findall(r"Saving checkpoint at (\d+) iterations", log)[-1])
    assert n_iters >= 6, log[-2000:]
    skips = [line for line in log.splitlines() if "skipping sample" in line]
    assert len(skips) == 4 and all("CorruptImageError" in line for line in skips), skips
    assert "data report of this process: 4 samples could not be loaded" in log
    wd = run_dir / "wd"
    last = wd / f"iter_{n_iters}.pth"
    assert last.is_file()
    # Written atomically (no temporary file left) and readable by the group, like plain files.
    from hg_lmm.utils.files import default_file_mode

    assert not list(wd.glob(".*.tmp"))
    for name in ("last_checkpoint", last.name):
        assert (wd / name).stat().st_mode & 0o777 == default_file_mode(), name

    _check_curves(wd, n_iters)

    # Our weights-only loader reads the mmengine checkpoint: trainable head state only.
    state = read_state_dict(last)
    assert state and all(k.startswith("head.") for k in state)
    assert "head.lcb.conv1.1.running_mean" in state

    from mmengine.config import Config

    from hg_lmm.utils.build import build

    cfg = Config.fromfile(str(CONFIG))
    cwd = os.getcwd()
    os.chdir(run_dir)  # the tiny LMM lives under the run's work_dirs/
    try:
        model = build(cfg.model)
    finally:
        os.chdir(cwd)
    report = load_state(model, last)
    assert not report.missing and not report.unexpected
    assert torch.equal(model.head.lcb.conv1[1].running_mean, state["head.lcb.conv1.1.running_mean"])

    # Resume from a mid-run checkpoint, in another work dir: continues at that iteration, stops
    # at the same total, and ends with exactly the weights of the uninterrupted run (dropout in
    # the fusion head draws from the RNG states saved with the checkpoint; with seed=None, as the
    # released configs, the data order follows the checkpoint's seed).
    resume_from = wd / f"iter_{n_iters - 1 - (n_iters - 1) % 2}.pth"
    log2 = _train(run_dir, "--work-dir", "resumed", "--resume", str(resume_from), *opts, *once)
    start = int(resume_from.stem.split("_")[1])
    assert f"resumed epoch: 0, iter: {start}" in log2
    assert "data order follows the checkpoint's seed" in log2
    saved = [int(i) for i in re.findall(r"Saving checkpoint at (\d+) iterations", log2)]
    assert saved and min(saved) > start and max(saved) == n_iters
    resumed = read_state_dict(run_dir / "resumed" / last.name)
    assert resumed.keys() == state.keys()
    assert all(torch.equal(resumed[k], state[k]) for k in state), "resume is not exact"


@pytest.mark.slow
def test_torn_resume_file_is_named_and_exits_non_zero(run_dir):
    """What a save killed midway used to leave: a truncated iter_N.pth."""
    torn = run_dir / "torn" / "iter_4.pth"
    torn.parent.mkdir(exist_ok=True)
    torch.save({"state_dict": {"head.w": torch.zeros(1000)}, "meta": {"iter": 4}}, torn)
    torn.write_bytes(torn.read_bytes()[: torn.stat().st_size // 2])
    log = _train(run_dir, "--work-dir", "torn", "--resume", str(torn), ok=False)
    assert f"cannot resume training: {torn} is truncated or damaged" in log
    assert "[train] training failed (exit status 1)" in log


@pytest.mark.slow
def test_a_crash_in_training_exits_non_zero(run_dir):
    log = _train(
        run_dir,
        "--work-dir",
        "crash",
        "--cfg-options",
        "train_dataloader.dataset.datasets.0.ann_file=refcoco/missing.json",
        ok=False,
    )
    assert "RefCOCO instances json not found" in log and "missing.json" in log
    assert "[train] training failed" in log


def test_missing_config_exits_non_zero(tmp_path):
    run = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "train.py"), str(tmp_path / "nope.py")],
        capture_output=True,
        text=True,
    )
    assert run.returncode == 2 and "nope.py' not found" in run.stdout


def test_several_processes_run_under_torchrun(monkeypatch):
    import runpy

    command = runpy.run_path(str(ROOT / "scripts" / "train.py"))["training_command"]
    one = command(["cfg.py", "--deepspeed", "deepspeed_zero2"], env={})
    assert one[0] == sys.executable and one[1].endswith("xtuner/tools/train.py")
    assert one[2:] == ["cfg.py", "--deepspeed", "deepspeed_zero2"]
    four = command(["cfg.py"], env={"NPROC_PER_NODE": "4", "PORT": "29500"})
    assert four[1:3] == ["-m", "torch.distributed.run"] and "--nproc_per_node=4" in four
    assert "--master_port=29500" in four and four[-3:] == ["cfg.py", "--launcher", "pytorch"]
