"""`xtuner train <released config> --deepspeed deepspeed_zero2`, checked without a GPU.

mmengine's launcher cannot start DeepSpeed on CPU (it calls torch.cuda.set_device), so:
- xtuner's own `train.main()` runs up to the point where it builds the runner, and the strategy,
  the DeepSpeed optimizer wrapper, the schedulers and the FlexibleRunner are built from what it
  produced;
- the model is checked in bf16, the dtype DeepSpeed's engine casts the whole module to when the
  DeepSpeed config enables bf16 (xtuner's "auto" does on bf16-capable GPUs);
- (slow) a real ZeRO-2 engine runs on CPU (gloo, in a subprocess): two steps of a released config
  with a tiny LMM, a checkpoint folder (carrying the RNG states in its message hub), its
  conversion and a strict load.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.test_released_configs import LEAF_IDS, LEAVES, ROOT, Leaf, tiny_overrides

LEAF = {leaf.id: leaf for leaf in LEAVES}
HG_LLAVA = LEAF["hg_frozen_llava_1_5_vicuna_7b_refcoco_png"]
FLMM_LLAVA = LEAF["frozen_llava_1_5_vicuna_7b_unet_sam_l_refcoco_png"]


def xtuner_train_cfg(leaf: Leaf, work_dir: Path, monkeypatch, *args: str):
    """The config `xtuner train <leaf> --work-dir <work_dir> <args>` hands to its runner.

    Runs xtuner/tools/train.py's `main()` itself; only the final runner construction is
    intercepted, so every change xtuner makes for `--deepspeed` is the real one.
    """
    from xtuner.tools import train

    captured = {}

    class _NoTrain:
        def train(self) -> None:
            pass

    def capture(cfg):
        captured["cfg"] = cfg
        return _NoTrain()

    monkeypatch.setattr(train.RUNNERS, "build", capture)
    monkeypatch.setattr(train.Runner, "from_cfg", capture)
    monkeypatch.setenv("LOCAL_RANK", "0")
    config = str(ROOT / "configs" / leaf.path)
    monkeypatch.setattr(sys, "argv", ["xtuner", config, "--work-dir", str(work_dir), *args])
    train.main()
    return captured["cfg"]


@pytest.fixture()
def strategies(monkeypatch):
    """STRATEGIES, with DeepSpeed's optimizers registered at most once per process: mmengine's
    DeepSpeedStrategy registers them (without `force`) each time one is built, so a second
    strategy in the same process would fail; a training process builds only one."""
    from mmengine._strategy import deepspeed as mm_deepspeed
    from mmengine.registry import OPTIMIZERS, STRATEGIES

    if "DeepSpeedCPUAdam" in OPTIMIZERS.module_dict:
        monkeypatch.setattr(mm_deepspeed, "register_deepspeed_optimizers", lambda: [])
    return STRATEGIES


def test_deepspeed_zero2_is_found_by_name():
    from xtuner.configs import cfgs_name_path

    path = cfgs_name_path["deepspeed_zero2"]  # what `--deepspeed deepspeed_zero2` resolves to
    ds = json.loads(Path(path).read_text())
    assert ds["zero_optimization"]["stage"] == 2
    # Filled in by xtuner from the mmengine config: batch, accumulation, clipping and dtype.
    assert ds["train_micro_batch_size_per_gpu"] == "auto" and ds["gradient_clipping"] == "auto"
    assert ds["bf16"]["enabled"] == "auto"


@pytest.mark.parametrize("leaf", LEAVES, ids=LEAF_IDS)
def test_deepspeed_strategy_and_optim_wrapper(leaf, tmp_path, monkeypatch, strategies):
    from mmengine._strategy.deepspeed import DeepSpeedOptimWrapper
    from mmengine.optim import CosineAnnealingLR, LinearLR
    from xtuner.engine import DeepSpeedStrategy

    cfg = xtuner_train_cfg(leaf, tmp_path, monkeypatch, "--deepspeed", "deepspeed_zero2")
    assert cfg.runner_type == "FlexibleRunner" and cfg.work_dir == str(tmp_path)
    assert cfg.optim_wrapper.type == "DeepSpeedOptimWrapper"

    # work_dir as FlexibleRunner passes it (the strategy's logger writes there).
    strategy = strategies.build(dict(cfg.strategy, work_dir=str(tmp_path)))
    assert isinstance(strategy, DeepSpeedStrategy)
    ds = strategy.config
    assert ds["zero_optimization"]["stage"] == 2
    assert ds["train_micro_batch_size_per_gpu"] == leaf.batch_size
    assert ds["gradient_accumulation_steps"] == 1 and ds["gradient_clipping"] == 1.0
    assert ds["bf16"]["enabled"] == torch.cuda.is_bf16_supported()  # True on A100/H100
    # Checkpoints leave the frozen LMM out (our state-dict hook does too).
    assert strategy.exclude_frozen_parameters is True

    optim_wrapper = strategy.build_optim_wrapper(cfg.optim_wrapper, torch.nn.Linear(2, 2))
    assert isinstance(optim_wrapper, DeepSpeedOptimWrapper)
    group = optim_wrapper.optimizer.param_groups[0]
    assert type(optim_wrapper.optimizer) is torch.optim.AdamW
    assert group["lr"] == leaf.lr and group["weight_decay"] == 0.01

    e, epoch_length = leaf.max_epochs, 1000
    strategy.dispatch_kwargs.update(
        epoch_length=epoch_length, max_epochs=e, max_iters=e * epoch_length
    )
    warm, cosine = strategy.build_param_scheduler(cfg.param_scheduler, optim_wrapper)
    assert isinstance(warm, LinearLR) and isinstance(cosine, CosineAnnealingLR)
    assert (warm.begin, warm.end) == (0, round(0.03 * e * epoch_length))
    assert (cosine.begin, cosine.end) == (warm.end, e * epoch_length)


def test_without_deepspeed_the_config_is_untouched(tmp_path, monkeypatch):
    from mmengine.optim import AmpOptimWrapper

    cfg = xtuner_train_cfg(HG_LLAVA, tmp_path, monkeypatch)
    assert "strategy" not in cfg and "runner_type" not in cfg
    assert cfg.optim_wrapper.type is AmpOptimWrapper


@pytest.mark.parametrize("leaf", [HG_LLAVA, FLMM_LLAVA], ids=lambda leaf: leaf.id)
def test_flexible_runner_builds_from_the_deepspeed_config(leaf, tmp_path, monkeypatch, strategies):
    """What `RUNNERS.build(cfg)` does before training; the model and data are built lazily."""
    from mmengine.runner import FlexibleRunner
    from xtuner.engine import DeepSpeedStrategy

    cfg = xtuner_train_cfg(leaf, tmp_path, monkeypatch, "--deepspeed", "deepspeed_zero2")
    runner = FlexibleRunner.from_cfg(cfg)
    assert isinstance(runner.strategy, DeepSpeedStrategy)
    assert runner.strategy.config["train_micro_batch_size_per_gpu"] == leaf.batch_size
    assert runner.work_dir == str(tmp_path)


# --- the bf16 cast of DeepSpeed's engine ------------------------------------------------------


def _bf16_step(leaf: Leaf, tiny_dir: Path, toy_root: Path) -> None:
    from hg_lmm.utils.build import build
    from tests.test_released_configs import load_leaf

    cfg = tiny_overrides(load_leaf(leaf), leaf, tiny_dir, toy_root)
    model = build(cfg.model)
    dataset = build(cfg.train_dataloader.dataset)
    model.bfloat16().train()  # what deepspeed.initialize does when bf16 is enabled
    losses = model([dataset[0]], mode="loss")
    total = sum(v for k, v in losses.items() if "loss" in k)
    total.backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
    assert torch.isfinite(total)
    assert all(g.isfinite().all() for g in grads.values() if g is not None)
    # SAM's point/no-mask embeddings and IoU head are trainable but unused by the refiner (it
    # prompts with boxes, masks and text), as in F-LMM; everything else must get a gradient.
    unused = (
        "point_embeddings.0.",
        "point_embeddings.1.",
        "not_a_point_embed",
        "no_mask_embed",
        "iou_prediction_head",
    )
    missing = [n for n, g in grads.items() if g is None and not any(u in n for u in unused)]
    assert not missing, missing


def test_hg_model_trains_in_bf16(tiny_dir, toy_root):
    _bf16_step(HG_LLAVA, tiny_dir, toy_root)


def test_unet_sam_model_trains_in_bf16(tiny_dir, toy_root):
    _bf16_step(FLMM_LLAVA, tiny_dir, toy_root)


@pytest.mark.parametrize("leaf", [leaf for leaf in LEAVES if "llava_next" in leaf.id],
                         ids=lambda leaf: leaf.id)  # fmt: skip
def test_llava_next_models_train_in_bf16(leaf, tiny_dir, toy_root):
    _bf16_step(leaf, tiny_dir, toy_root)


@pytest.mark.parametrize("leaf", [leaf for leaf in LEAVES if "_mgm_" in leaf.id],
                         ids=lambda leaf: leaf.id)  # fmt: skip
def test_mgm_models_train_in_bf16(leaf, tiny_dir, toy_root):
    _bf16_step(leaf, tiny_dir, toy_root)


# --- a real ZeRO-2 engine on CPU ---------------------------------------------------------------

_DRIVER = r"""
import json, os, runpy, sys
from pathlib import Path

import pytest
import torch

root, work, tiny_dir, toy_root, port = sys.argv[1:6]
sys.path.insert(0, root)
from tests.test_deepspeed import HG_LLAVA, xtuner_train_cfg
from tests.test_released_configs import tiny_overrides

leaf, work = HG_LLAVA, Path(work)
with pytest.MonkeyPatch.context() as mp:
    cfg = xtuner_train_cfg(leaf, work, mp, "--deepspeed", "deepspeed_zero2")
cfg = tiny_overrides(cfg, leaf, Path(tiny_dir), Path(toy_root))
cfg.strategy.config["bf16"]["enabled"] = True  # what "auto" gives on a bf16-capable GPU

import deepspeed
from mmengine._strategy import DeepSpeedStrategy as MMEngineDeepSpeedStrategy
from mmengine.logging import MessageHub
from mmengine.registry import STRATEGIES
from mmengine.runner import Runner
from xtuner.engine import DeepSpeedStrategy

from hg_lmm.utils.build import build
from hg_lmm.utils.checkpoint import load_state

# xtuner's _wrap_model only adds `model.data_preprocessor.cuda()` to mmengine's: the one GPU line.
DeepSpeedStrategy._wrap_model = MMEngineDeepSpeedStrategy._wrap_model
strategy = STRATEGIES.build(dict(cfg.strategy, work_dir=str(work),
                                env_kwargs=dict(launcher="none")))
os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1",
                  MASTER_PORT=port)
deepspeed.init_distributed(dist_backend="gloo")

loader = Runner.build_dataloader(cfg.train_dataloader, seed=0)
dispatch = dict(epoch_length=len(loader), max_epochs=1, max_iters=len(loader),
                train_micro_batch_size_per_gpu=cfg.train_dataloader.batch_size)
engine, optim_wrapper, schedulers = strategy.prepare(
    cfg.model, optim_wrapper=cfg.optim_wrapper, param_scheduler=cfg.param_scheduler,
    dispatch_kwargs=dispatch)
model = engine.model.module
head0 = {k: v.clone() for k, v in model.head.state_dict().items()}
lmm0 = {k: v.clone() for k, v in model.lmm.state_dict().items()}
batches = iter(loader)
losses = []
for _ in range(2):
    log_vars = engine.train_step(next(batches), optim_wrapper=optim_wrapper)
    for s in schedulers:
        s.step()
    losses.append(float(log_vars["loss"]))
hub = MessageHub.get_instance("ds_cpu")
hub.update_scalar("train/loss", losses[-1])
# What RNGStateHook adds before a save; FlexibleRunner.resume loads the hub back.
from hg_lmm.utils.checkpoint import deepspeed_model_file
from hg_lmm.engine.checkpointing import RNG_STATES_KEY
from hg_lmm.engine.rng import rng_state, set_rng_state
hub.update_info(RNG_STATES_KEY, [rng_state()])
after_save = torch.rand(4)
# As FlexibleRunner.save_checkpoint calls it.
folder = work / "iter_2.pth"
strategy.save_checkpoint(str(folder), extra_ckpt={"meta": {"epoch": 0, "iter": 2},
                                                  "message_hub": hub.state_dict()})
client = torch.load(deepspeed_model_file(folder), map_location="cpu", weights_only=False)
set_rng_state(client["message_hub"]["runtime_info"][RNG_STATES_KEY][0])
rng_restored = torch.equal(torch.rand(4), after_save)

convert = runpy.run_path(os.path.join(root, "scripts", "deepspeed2torch_state_dict.py"))["convert"]
module = convert(folder, work / "head.pth", unsafe=True)
master = convert(folder, work / "head_fp32.pth", unsafe=True, master_weights=True)
fresh = build(cfg.model)
report = load_state(fresh, work / "head_fp32.pth")
trained = {"head." + k: v for k, v in model.head.state_dict().items()}
print(json.dumps({
    "losses": losses,
    "dtype": str(next(model.head.parameters()).dtype),
    "keys_are_trainable_head": sorted(module) == sorted(trained),
    "module_is_engine_copy": all(torch.equal(module[k], trained[k]) for k in trained),
    "master_rounds_to_module": all(torch.equal(master[k].to(module[k].dtype), module[k])
                                   for k in module if module[k].is_floating_point()),
    "master_dtype": str(master["head.text_proj.weight"].dtype),
    "head_changed": any(not torch.equal(v, head0[k]) for k, v in model.head.state_dict().items()
                        if v.is_floating_point()),
    "lmm_unchanged": all(torch.equal(v, lmm0[k]) for k, v in model.lmm.state_dict().items()),
    "strict_load": not report.missing and not report.unexpected,
    "rng_restored": rng_restored,
    "loaded_equals_master": all(torch.equal(v, master[k].to(v.dtype))
                                for k, v in fresh.state_dict().items() if k in master),
}))
"""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow
def test_zero2_engine_trains_saves_and_converts(tmp_path, tiny_dir, toy_root):
    driver = tmp_path / "driver.py"
    driver.write_text(_DRIVER)
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    args = [str(ROOT), str(tmp_path / "work"), str(tiny_dir), str(toy_root), str(_free_port())]
    run = subprocess.run(
        [sys.executable, str(driver), *args],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
        cwd=tmp_path,
    )
    assert run.returncode == 0, (run.stdout + run.stderr)[-4000:]
    result = json.loads(run.stdout.strip().splitlines()[-1])
    assert all(torch.isfinite(torch.tensor(result["losses"])))
    assert result["dtype"] == "torch.bfloat16" and result["master_dtype"] == "torch.float32"
    for check in (
        "keys_are_trainable_head",
        "module_is_engine_copy",
        "master_rounds_to_module",
        "head_changed",
        "lmm_unchanged",
        "strict_load",
        "loaded_equals_master",
        "rng_restored",
    ):
        assert result[check], (check, result)
