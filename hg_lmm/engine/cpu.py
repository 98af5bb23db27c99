"""CPU mode of the training entry point: xtuner's own training process, with several ranks (DDP or
DeepSpeed ZeRO) on a machine without a GPU.

This is the one place where the project changes how the installed packages start training, and
only when no GPU is there (`scripts/train.py` runs every training process through `main()` below
then). Nothing installed is patched on disk. Each accommodation and why:

1. `torch.distributed.init_process_group("gloo")` before xtuner builds its runner. mmengine's
   launcher (`mmengine.dist.init_dist` -> `_init_dist_pytorch`) calls `torch.cuda.set_device`,
   which fails without a GPU; but both mmengine's `Runner.setup_env` and its strategies'
   `_setup_env` skip `init_dist` when a process group already exists (`is_distributed()`), and
   DeepSpeed's `init_distributed` adopts an existing torch group. gloo is torch's CPU backend.
2. `DS_ACCELERATOR=cpu`: DeepSpeed's documented switch to its CPU accelerator (its
   auto-detection picks CPU only after trying the others, with a warning).
3. xtuner's `DeepSpeedStrategy._wrap_model` is mmengine's plus one line,
   `model.data_preprocessor.cuda()` (for ZeRO-3, which does not move the model), and `.cuda()`
   fails without a GPU. On CPU the strategy runs mmengine's `_wrap_model` itself (what the line
   adds is a no-op there: everything stays on the CPU).
4. DDP: mmengine wraps the model in `MMDistributedDataParallel(device_ids=[LOCAL_RANK])`, and
   torch refuses device ids for a CPU module. `--cfg-options model_wrapper_cfg.device_ids=None`
   is added to xtuner's arguments (mmengine's documented `model_wrapper_cfg`; the config value
   wins over the runner's default), so DDP takes the module's own device.
5. DeepSpeed ZeRO-1/2 on gloo: the optimizer step ends with `all_gather_into_tensor` into the
   flat parameter buffer, which requires grad; gloo (unlike NCCL) gathers into `chunk()` views
   of it, and autograd refuses in-place writes to such views while grad mode is on ("Output 0 of
   Split is a view and is being modified inplace", DeepSpeed issue #2818). The ZeRO optimizer's
   `step` runs under `torch.no_grad()`, as every torch optimizer's `step` does; it computes
   nothing differentiable, so the numbers are unchanged.

Run as `python -m hg_lmm.engine.cpu XTUNER_TRAIN_SCRIPT ARGS...`, under torchrun for several
ranks (what `scripts/train.py` does when there is no GPU).
"""

from __future__ import annotations

import os
import runpy
import sys
from collections.abc import Sequence

# What accommodation 4 adds to xtuner's arguments (its own `--cfg-options` flag can be repeated:
# mmengine's DictAction merges every occurrence).
DDP_CPU_OPTIONS = ["--cfg-options", "model_wrapper_cfg.device_ids=None"]


def cpu_environment(env: dict[str, str]) -> dict[str, str]:
    """`env` for a CPU training process: DeepSpeed's CPU accelerator unless one is named."""
    return {**env, "DS_ACCELERATOR": env.get("DS_ACCELERATOR", "cpu")}


def uses_deepspeed(args: Sequence[str]) -> bool:
    """Whether xtuner's arguments ask for DeepSpeed (`--deepspeed NAME` or `--deepspeed=NAME`)."""
    return any(a == "--deepspeed" or a.startswith("--deepspeed=") for a in args)


def cpu_arguments(args: Sequence[str]) -> list[str]:
    """xtuner's arguments for a CPU run: with DDP's device ids dropped (accommodation 4)."""
    args = list(args)
    return args if uses_deepspeed(args) else [*args, *DDP_CPU_OPTIONS]


def init_gloo_process_group() -> bool:
    """Join the torchrun job with gloo (accommodation 1); False when not launched by torchrun."""
    import torch.distributed as dist

    if "WORLD_SIZE" not in os.environ or dist.is_initialized():
        return False
    dist.init_process_group(backend="gloo")
    return True


def use_mmengine_deepspeed_wrap() -> None:
    """Accommodation 3: xtuner's DeepSpeed strategy wraps the model as mmengine's does."""
    from mmengine._strategy import DeepSpeedStrategy as MMEngineDeepSpeedStrategy
    from xtuner.engine import DeepSpeedStrategy

    DeepSpeedStrategy._wrap_model = MMEngineDeepSpeedStrategy._wrap_model


def zero_step_without_grad() -> None:
    """Accommodation 5: DeepSpeed's ZeRO-1/2 optimizer steps with grad mode off (once)."""
    import torch
    from deepspeed.runtime.zero.stage_1_and_2 import DeepSpeedZeroOptimizer

    step = DeepSpeedZeroOptimizer.step
    if not getattr(step, "_hg_lmm_no_grad", False):
        wrapped = torch.no_grad()(step)
        wrapped._hg_lmm_no_grad = True
        DeepSpeedZeroOptimizer.step = wrapped


def main(argv: Sequence[str] | None = None) -> None:
    """Run xtuner's training script `argv[0]` with `argv[1:]` in this process, in CPU mode."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv:
        raise SystemExit("usage: python -m hg_lmm.engine.cpu XTUNER_TRAIN_SCRIPT ARGS...")
    script, args = argv[0], cpu_arguments(argv[1:])
    os.environ.update(cpu_environment(dict(os.environ)))  # before deepspeed is imported
    init_gloo_process_group()
    if uses_deepspeed(args):
        use_mmengine_deepspeed_wrap()
        zero_step_without_grad()
    sys.argv = [script, *args]
    runpy.run_path(script, run_name="__main__")


if __name__ == "__main__":
    main()
