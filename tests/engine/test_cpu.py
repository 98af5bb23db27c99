"""The CPU mode's decisions: when scripts/train.py uses it, and what it adds to xtuner's args."""

from __future__ import annotations

import runpy
import sys
from pathlib import Path

from hg_lmm.engine.cpu import DDP_CPU_OPTIONS, cpu_arguments, cpu_environment, uses_deepspeed

ROOT = Path(__file__).resolve().parents[2]


def test_ddp_gets_no_device_ids_and_deepspeed_is_left_alone():
    assert cpu_arguments(["cfg.py"]) == ["cfg.py", *DDP_CPU_OPTIONS]
    ds = ["cfg.py", "--deepspeed", "deepspeed_zero2"]
    assert cpu_arguments(ds) == ds and uses_deepspeed(ds)
    assert uses_deepspeed(["cfg.py", "--deepspeed=deepspeed_zero2"])
    assert not uses_deepspeed(["cfg.py", "--cfg-options", "deepspeed=1"])


def test_ds_accelerator_defaults_to_cpu_but_a_named_one_wins():
    assert cpu_environment({})["DS_ACCELERATOR"] == "cpu"
    assert cpu_environment({"DS_ACCELERATOR": "xpu"})["DS_ACCELERATOR"] == "xpu"


def test_train_script_uses_cpu_mode_only_without_gpu_for_ranks_or_deepspeed():
    train = runpy.run_path(str(ROOT / "scripts" / "train.py"))
    cpu_mode, command = train["cpu_mode"], train["training_command"]
    two = {"NPROC_PER_NODE": "2", "PORT": "29500"}
    assert cpu_mode(["cfg.py"], two, gpu=False)
    assert cpu_mode(["cfg.py", "--deepspeed", "deepspeed_zero2"], {}, gpu=False)
    assert not cpu_mode(["cfg.py"], {}, gpu=False)  # one plain process needs nothing
    assert not cpu_mode(["cfg.py"], two, gpu=True)
    cmd = command(["cfg.py"], two, cpu=True)
    assert cmd[:3] == [sys.executable, "-m", "torch.distributed.run"]
    i = cmd.index("-m", 3)
    assert cmd[i + 1] == "hg_lmm.engine.cpu" and cmd[i + 2].endswith("xtuner/tools/train.py")
    one_ds = command(["cfg.py", "--deepspeed", "deepspeed_zero2"], {}, cpu=True)
    assert "--nproc_per_node=1" in one_ds  # DeepSpeed needs a process group even alone
