"""Convert a DeepSpeed checkpoint folder into a weights-only .pth that our loader reads.

`xtuner train --deepspeed ...` saves each checkpoint as a folder, work_dirs/<run>/iter_<n>.pth/,
holding mp_rank_00_model_states.pt (the engine's copy of the trainable state under `module`) and
the ZeRO optimizer partitions. This writes {"state_dict": {name: tensor}, "meta": {...}} with the
trainable state only (head parameters and BatchNorm statistics; the frozen LMM is never saved):

  python scripts/deepspeed2torch_state_dict.py work_dirs/<run>/iter_500.pth out.pth --unsafe-load

By default the tensors are the engine's own `module` copy, in the training dtype (bf16 when the
DeepSpeed config enables bf16). `--master-weights` instead takes the float32 master parameters
that the ZeRO optimizer partitions hold (what the reference converter wrote).

The folder is read weights-only unless you pass --unsafe-load. A folder that `xtuner train`
wrote also holds mmengine's message hub (HistoryBuffers, which pickle bound methods), and
DeepSpeed's reader of the optimizer partitions always unpickles, so converting your own run's
checkpoints needs --unsafe-load: pass it only for folders you trust.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import torch

from hg_lmm.utils.checkpoint import CheckpointError, deepspeed_model_file, read_state_dict
from hg_lmm.utils.files import atomic_open


def _master_weights(folder: Path, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """`state` with every floating tensor replaced by DeepSpeed's float32 rebuild (ZeRO 1-3)."""
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    tag_dir = deepspeed_model_file(folder).parent
    try:
        fp32 = get_fp32_state_dict_from_zero_checkpoint(str(tag_dir.parent), tag=tag_dir.name)
    except Exception as err:
        raise CheckpointError(
            f"could not rebuild float32 master weights from {tag_dir} ({err}); it needs the ZeRO "
            "optimizer partitions (*_optim_states.pt) of every rank. Drop --master-weights to "
            "convert the engine's own copy."
        ) from err
    out = {}
    for name, value in state.items():
        if value.is_floating_point():
            if name not in fp32:
                raise CheckpointError(f"{name} is in the model states but not in the ZeRO rebuild")
            out[name] = fp32[name].float()
        else:
            out[name] = value  # e.g. BatchNorm's num_batches_tracked keeps its integer dtype
    return out


def convert(
    src: str | os.PathLike,
    dst: str | os.PathLike,
    *,
    unsafe: bool = False,
    master_weights: bool = False,
) -> dict[str, torch.Tensor]:
    """Write the trainable state of DeepSpeed folder `src` to `dst` (atomically); returns it."""
    src, dst = Path(src), Path(dst)
    if src.exists() and not src.is_dir():
        raise CheckpointError(
            f"{src} is not a DeepSpeed checkpoint folder; a .pth/.safetensors file loads as is"
        )
    if master_weights and not unsafe:
        raise CheckpointError(
            "--master-weights reads the ZeRO optimizer partitions with DeepSpeed's own reader, "
            "which unpickles arbitrary objects; pass --unsafe-load too if you trust the folder"
        )
    state = read_state_dict(src, unsafe=unsafe)
    if master_weights:
        state = _master_weights(src, state)
    meta = {"source": str(src), "weights": "fp32 master" if master_weights else "engine module"}
    with atomic_open(dst, "wb") as handle:
        torch.save({"state_dict": state, "meta": meta}, handle)
    return state


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "src", help="DeepSpeed checkpoint folder, e.g. work_dirs/<run>/iter_500.pth"
    )
    parser.add_argument("dst", help="output .pth, e.g. checkpoints/<config name>.pth")
    parser.add_argument(
        "--master-weights",
        action="store_true",
        help="write the float32 master weights rebuilt from the ZeRO optimizer partitions",
    )
    parser.add_argument(
        "--unsafe-load",
        action="store_true",
        help="allow unpickling arbitrary objects from the folder (only for files you trust)",
    )
    args = parser.parse_args(argv)
    try:
        state = convert(
            args.src, args.dst, unsafe=args.unsafe_load, master_weights=args.master_weights
        )
    except CheckpointError as err:
        raise SystemExit(f"error: {err}") from err
    dtypes = sorted({str(v.dtype).removeprefix("torch.") for v in state.values()})
    print(f"wrote {len(state)} tensors ({', '.join(dtypes)}) to {args.dst}")


if __name__ == "__main__":
    main()
