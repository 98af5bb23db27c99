"""scripts/deepspeed2torch_state_dict.py: DeepSpeed checkpoint folder -> weights-only .pth."""

from __future__ import annotations

import os
import runpy
import socket
import subprocess
import sys
from collections import OrderedDict
from pathlib import Path

import pytest
import torch
from torch import nn

from hg_lmm.utils.checkpoint import (
    CheckpointError,
    load_state,
    read_state_dict,
    trainable_state_dict,
)

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "deepspeed2torch_state_dict.py"


def cli(*argv: str) -> None:
    runpy.run_path(str(SCRIPT), run_name="__cli__")["main"]([str(a) for a in argv])


def convert(*args, **kwargs):
    return runpy.run_path(str(SCRIPT), run_name="__cli__")["convert"](*args, **kwargs)


class Toy(nn.Module):
    def __init__(self):
        super().__init__()
        self.lmm = nn.Linear(4, 4).requires_grad_(False)  # frozen: never in a checkpoint
        self.head = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Conv2d(4, 1, 1))

    def forward(self, x):
        return self.head(x).pow(2).mean()


def _model_states(module_state: dict, *, message_hub: bool = True) -> dict:
    """What mmengine's DeepSpeedStrategy + DeepSpeed write to mp_rank_00_model_states.pt (ZeRO-2):
    the engine's `module` state, DeepSpeed's bookkeeping and mmengine's client state. The client
    state's message hub holds `HistoryBuffer`s (DeepSpeed's save skips our weights-only hook)."""
    from mmengine.logging import MessageHub

    states = {
        "module": OrderedDict(module_state),
        "buffer_names": [k for k in module_state if "running" in k or "batches" in k],
        "optimizer": None,
        "param_shapes": [OrderedDict((k, v.shape) for k, v in module_state.items())],
        "frozen_param_shapes": None,
        "shared_params": {},
        "lr_scheduler": None,
        "sparse_tensor_module_names": set(),
        "skipped_steps": 0,
        "global_steps": 2,
        "global_samples": 2,
        "dp_world_size": 1,
        "mp_world_size": 1,
        "ds_config": {"zero_optimization": {"stage": 2}, "bf16": {"enabled": True}},
        "ds_version": "0.18.9",
        "meta": {"epoch": 0, "iter": 2, "seed": 0},
        "param_schedulers": [{"last_step": 2, "base_values": [1e-4]}],
        "optim_wrapper": {},
    }
    if message_hub:
        hub = MessageHub.get_instance("test_convert")
        hub.update_scalar("train/loss", 0.5)
        states["message_hub"] = hub.state_dict()
    return states


def _trained_state() -> tuple[Toy, dict[str, torch.Tensor]]:
    model = Toy().train()
    model.head(torch.randn(2, 3, 8, 8))  # moves the BN statistics off their init
    state = {
        k: v.bfloat16() if v.is_floating_point() else v
        for k, v in trainable_state_dict(model).items()
    }
    return model, state


def _ds_folder(tmp_path: Path, module_state: dict, *, message_hub: bool = True) -> Path:
    folder = tmp_path / "work_dir" / "iter_2.pth"  # xtuner/mmengine name the folder like a file
    folder.mkdir(parents=True)
    states = _model_states(module_state, message_hub=message_hub)
    torch.save(states, folder / "mp_rank_00_model_states.pt")
    return folder


def test_converts_the_engine_copy_weights_only(tmp_path, capsys):
    _, state = _trained_state()
    folder = _ds_folder(tmp_path, state, message_hub=False)
    out = tmp_path / "checkpoints" / "head.pth"
    cli(folder, out)
    assert f"wrote {len(state)} tensors" in capsys.readouterr().out
    # Weights-only loadable, {"state_dict": ...}, names and dtypes kept (bf16 as trained).
    saved = torch.load(out, weights_only=True)
    assert set(saved) == {"state_dict", "meta"} and saved["meta"]["weights"] == "engine module"
    got = read_state_dict(out)
    assert set(got) == set(state)
    assert all(torch.equal(got[k], v) and got[k].dtype == v.dtype for k, v in state.items())
    # ... and it loads strictly into a fresh model (the frozen part is not expected).
    fresh = Toy()
    report = load_state(fresh, out)
    assert not report.missing and not report.unexpected
    assert torch.equal(fresh.head[1].running_mean, state["head.1.running_mean"].float())


def test_module_prefix_is_stripped(tmp_path):
    _, state = _trained_state()
    folder = _ds_folder(tmp_path, {"module." + k: v for k, v in state.items()}, message_hub=False)
    out = tmp_path / "head.pth"
    cli(folder, out)
    assert set(read_state_dict(out)) == set(state)


def test_mmengine_client_state_needs_unsafe_load(tmp_path):
    # What `xtuner train --deepspeed` writes: the message hub's HistoryBuffers pickle bound
    # methods (`getattr`), which a weights-only read refuses.
    _, state = _trained_state()
    folder = _ds_folder(tmp_path, state)
    out = tmp_path / "head.pth"
    with pytest.raises(SystemExit, match="--unsafe-load"):
        cli(folder, out)
    assert not out.exists()
    cli(folder, out, "--unsafe-load")
    assert set(read_state_dict(out)) == set(state)  # the output itself is weights-only


def test_master_weights_need_unsafe_load(tmp_path):
    _, state = _trained_state()
    folder = _ds_folder(tmp_path, state)
    with pytest.raises(SystemExit, match="--unsafe-load"):
        cli(folder, tmp_path / "head.pth", "--master-weights")


def test_master_weights_need_optimizer_partitions(tmp_path):
    _, state = _trained_state()
    folder = _ds_folder(tmp_path, state)
    with pytest.raises(SystemExit, match="ZeRO optimizer partitions"):
        cli(folder, tmp_path / "head.pth", "--master-weights", "--unsafe-load")


def test_not_a_folder(tmp_path):
    path = tmp_path / "head.pth"
    torch.save({"state_dict": {"head.0.bias": torch.zeros(4)}}, path)
    with pytest.raises(SystemExit, match="not a DeepSpeed checkpoint folder"):
        cli(path, tmp_path / "out.pth")
    with pytest.raises(SystemExit, match="does not exist"):
        cli(tmp_path / "missing", tmp_path / "out.pth")


# --- a checkpoint written by a real DeepSpeed engine (ZeRO-2, bf16, gloo on CPU) -----------------

_ENGINE = """
import os, sys
import deepspeed, torch
from mmengine.logging import MessageHub
sys.path.insert(0, sys.argv[3])
from tests.test_convert import Toy

out, port = sys.argv[1], sys.argv[2]
os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1",
                  MASTER_PORT=port)
deepspeed.init_distributed(dist_backend="gloo")
torch.manual_seed(0)
model = Toy()
# xtuner's deepspeed_zero2.json as `xtuner train` fills it in on a bf16-capable GPU.
config = {
    "train_micro_batch_size_per_gpu": 2, "gradient_accumulation_steps": 1,
    "gradient_clipping": 1.0, "zero_allow_untested_optimizer": True,
    "zero_force_ds_cpu_optimizer": False,
    "zero_optimization": {"stage": 2, "overlap_comm": True},
    "fp16": {"enabled": False}, "bf16": {"enabled": True},
}
optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
engine, *_ = deepspeed.initialize(model=model, optimizer=optimizer, config=config)
for _ in range(2):
    loss = engine(torch.randn(2, 3, 8, 8, dtype=torch.bfloat16))
    engine.backward(loss)
    engine.step()
hub = MessageHub.get_instance("engine")
hub.update_scalar("train/loss", float(loss))
# As mmengine's DeepSpeedStrategy.save_checkpoint calls it.
engine.save_checkpoint(out, tag="iter_2.pth", client_state={"meta": {"iter": 2},
                       "message_hub": hub.state_dict()}, save_latest=False,
                       exclude_frozen_parameters=True)
torch.save(engine.module.state_dict(), os.path.join(out, "engine_module.pt"))
"""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow
def test_real_zero2_checkpoint(tmp_path):
    work = tmp_path / "work_dir"
    driver = tmp_path / "engine.py"
    driver.write_text(_ENGINE)
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="")
    cmd = [sys.executable, str(driver), str(work), str(_free_port()), str(ROOT)]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    assert run.returncode == 0, (run.stdout + run.stderr)[-4000:]
    folder = work / "iter_2.pth"
    assert any(folder.glob("*_optim_states.pt"))
    engine_state = torch.load(work / "engine_module.pt", weights_only=True)

    # Default: the engine's bf16 copy.
    with pytest.raises(CheckpointError, match="--unsafe-load"):  # the message hub, as above
        convert(folder, tmp_path / "head.pth")
    module = convert(folder, tmp_path / "head.pth", unsafe=True)
    assert set(module) == set(trainable_state_dict(Toy()))  # no frozen `lmm.*`
    assert all(torch.equal(module[k], engine_state[k]) for k in module)
    assert module["head.0.weight"].dtype == torch.bfloat16

    # --master-weights: float32 masters whose bf16 rounding is the engine's copy.
    master = convert(folder, tmp_path / "head_fp32.pth", unsafe=True, master_weights=True)
    assert master["head.0.weight"].dtype == torch.float32
    assert master["head.1.num_batches_tracked"].dtype == torch.int64
    for name, value in master.items():
        if value.is_floating_point():
            assert torch.equal(value.bfloat16(), module[name]), name
    fresh = Toy()
    report = load_state(fresh, tmp_path / "head_fp32.pth")
    assert not report.missing and not report.unexpected
    assert torch.equal(fresh.head[0].weight, master["head.0.weight"])
