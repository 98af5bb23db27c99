"""`xtuner train` on the tiny config: checkpoints our loader reads, and a bit-identical resume."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "tiny" / "hg_tiny_llava_toy.py"


def _xtuner_train(cwd: Path, *args: str) -> str:
    env = dict(os.environ)
    # xtuner's CLI runs `python` from PATH: make it this interpreter's environment.
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    env["PYTHONPATH"] = f"{ROOT}{os.pathsep}{env.get('PYTHONPATH', '')}"
    cmd = ["xtuner", "train", str(CONFIG), *args]
    out = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    log = out.stdout + out.stderr
    assert out.returncode == 0, log[-4000:]
    return log


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    from hg_lmm.datasets.toy import ToyConfig, make_toy_data

    cwd = tmp_path_factory.mktemp("train")
    make_toy_data(str(cwd / "data" / "toy"), ToyConfig.small())
    return cwd


@pytest.mark.slow
def test_train_checkpoint_and_exact_resume(run_dir):
    from hg_lmm.utils.checkpoint import load_state, read_state_dict

    opts = ["--cfg-options", "default_hooks.checkpoint.interval=2"]
    once = ["train_cfg.max_epochs=1", "randomness.seed=None"]
    log = _xtuner_train(run_dir, "--work-dir", "wd", *opts, *once)
    n_iters = int(re.findall(r"Saving checkpoint at (\d+) iterations", log)[-1])
    assert n_iters >= 4, log[-2000:]
    wd = run_dir / "wd"
    last = wd / f"iter_{n_iters}.pth"
    assert last.is_file()

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
    log2 = _xtuner_train(
        run_dir, "--work-dir", "resumed", "--resume", str(resume_from), *opts, *once
    )
    start = int(resume_from.stem.split("_")[1])
    assert f"resumed epoch: 0, iter: {start}" in log2
    assert "data order follows the checkpoint's seed" in log2
    saved = [int(i) for i in re.findall(r"Saving checkpoint at (\d+) iterations", log2)]
    assert saved and min(saved) > start and max(saved) == n_iters
    resumed = read_state_dict(run_dir / "resumed" / last.name)
    assert resumed.keys() == state.keys()
    assert all(torch.equal(resumed[k], state[k]) for k in state), "resume is not exact"
