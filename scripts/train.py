"""Train like `xtuner train`, but exit non-zero when training fails.

`xtuner train` starts the training process (`python`, or `torchrun` for several processes) and
ignores how it ended, so a run that crashed still exits 0 and a job scheduler or a script that
chains training and evaluation cannot tell. This wrapper starts the same process, xtuner's own
`xtuner/tools/train.py` with the same arguments and the same environment variables (NPROC_PER_NODE,
NNODES, NODE_RANK, ADDR, PORT), and exits with its status:

    python scripts/train.py CONFIG [--work-dir DIR] [--resume CKPT] [--deepspeed deepspeed_zero2] \
        [--cfg-options KEY=VALUE ...]
    NPROC_PER_NODE=8 python scripts/train.py CONFIG --deepspeed deepspeed_zero2
    make train CONFIG=configs/tiny/hg_tiny_llava_toy.py ARGS="--work-dir work_dirs/tiny"

It uses this interpreter (and its environment's `torchrun`) instead of whatever `python` is first
on PATH.

Without a GPU, several processes (`NPROC_PER_NODE=2`) or `--deepspeed` run in CPU mode: each
process goes through `hg_lmm.engine.cpu` (gloo, DeepSpeed's CPU accelerator, and the two
accommodations mmengine and xtuner need on CPU; that module's docstring says which and why).
A single process without DeepSpeed runs xtuner's script directly, as on a GPU.
"""

from __future__ import annotations

import importlib.util
import os
import random
import subprocess
import sys
from collections.abc import Sequence


def _xtuner_train_script() -> str:
    spec = importlib.util.find_spec("xtuner.tools.train")
    if spec is None or spec.origin is None:
        raise SystemExit("[train] xtuner is not installed; run `make setup` (see README.md)")
    return spec.origin


def _has_gpu() -> bool:
    import torch

    return torch.cuda.is_available()


def cpu_mode(
    args: Sequence[str], env: dict[str, str] | None = None, gpu: bool | None = None
) -> bool:
    """Whether training runs through `hg_lmm.engine.cpu`: no GPU, and several processes or
    DeepSpeed (one plain process needs nothing on CPU)."""
    from hg_lmm.engine.cpu import uses_deepspeed

    env = dict(os.environ if env is None else env)
    several = int(env.get("NNODES", 1)) * int(env.get("NPROC_PER_NODE", 1)) > 1
    return (several or uses_deepspeed(args)) and not (_has_gpu() if gpu is None else gpu)


def training_command(
    args: Sequence[str], env: dict[str, str] | None = None, *, cpu: bool = False
) -> list[str]:
    """The command `xtuner train ARGS` runs, with this interpreter.

    One process unless NPROC_PER_NODE or NNODES ask for more; then torchrun, as xtuner does.
    `cpu`: run each process through `hg_lmm.engine.cpu` (see `cpu_mode`); DeepSpeed then runs
    under torchrun even with one process (it needs a process group).
    """
    env = dict(os.environ if env is None else env)
    script = _xtuner_train_script()
    nnodes = int(env.get("NNODES", 1))
    nproc = int(env.get("NPROC_PER_NODE", 1))
    program = ["-m", "hg_lmm.engine.cpu", script] if cpu else [script]
    if nnodes == 1 and nproc == 1 and not cpu:
        return [sys.executable, script, *args]
    port = env.get("PORT") or str(random.randint(20000, 29999))
    return [
        sys.executable, "-m", "torch.distributed.run",
        f"--nnodes={nnodes}", f"--node_rank={env.get('NODE_RANK', 0)}",
        f"--nproc_per_node={nproc}", f"--master_addr={env.get('ADDR', '127.0.0.1')}",
        f"--master_port={port}",
        *program, *args, "--launcher", "pytorch",
    ]  # fmt: skip


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print(__doc__)
        return 0 if args else 2
    if not os.path.isfile(args[0]):
        print(f"[train] config file {args[0]!r} not found; pass a file under configs/")
        return 2
    cpu = cpu_mode(args)
    env = dict(os.environ)
    if cpu:
        from hg_lmm.engine.cpu import cpu_environment

        env = cpu_environment(env)
        print("[train] no GPU: CPU mode (gloo, DS_ACCELERATOR=cpu; see hg_lmm/engine/cpu.py)")
    command = training_command(args, env, cpu=cpu)
    print(f"[train] {' '.join(command)}", flush=True)
    status = subprocess.run(command, env=env).returncode
    if status != 0:
        # A signal shows as -N; report it as a shell would (128 + N).
        code = 128 - status if status < 0 else status
        print(f"[train] training failed (exit status {code}); the error is above", flush=True)
        return code
    print("[train] training finished", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
