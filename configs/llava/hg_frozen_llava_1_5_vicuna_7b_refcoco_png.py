# HG-LMM on frozen LLaVA-1.5-7B (Vicuna): the HG head, trained on PNG + RefCOCO/+/g.
# Reference setting: 4 epochs, batch 1 per GPU on 4 GPUs, AdamW 1e-4
# (configs/_base_/schedule.py):
#   NPROC_PER_NODE=4 xtuner train \
#     configs/llava/hg_frozen_llava_1_5_vicuna_7b_refcoco_png.py \
#     --deepspeed deepspeed_zero2  # --work-dir DIR (default work_dirs/<config name>)
from mmengine.config import read_base

from hg_lmm.model import GroundingModel

with read_base():
    from .._base_.datasets.refcoco_png import *
    from .._base_.default_runtime import *
    from .._base_.models.hg_head import *
    from .._base_.models.llava_1_5_vicuna_7b import *
    from .._base_.schedule import *

model = dict(type=GroundingModel, lmm=lmm, head=head, loss=mask_loss)
train_dataloader.dataset.datasets = [dict(d, transform=tokenize) for d in train_datasets]

# 4 epochs instead of the shared 8: the 3% warm-up and the cosine are re-derived from max_epochs.
max_epochs = 4
param_scheduler[0].update(end=warmup_ratio * max_epochs)
param_scheduler[1].update(begin=warmup_ratio * max_epochs, end=max_epochs)
train_cfg.update(max_epochs=max_epochs)

# Read by the evaluation CLIs, the chat CLI and the web demo when they load a checkpoint
# (checkpoints/README.md): HG-LMM's released LLaVA file is the one HG checkpoint no running
# reference code pins.
checkpoint_note = (
    "HG-LMM's reference LLaVA HG head builds but does not run at its HEAD (7431b2f: stage sizes "
    "84/42/21 do not chain with its x2 fusion), so the key layout of its released LLaVA file "
    "(hg_llava_1_5_7b) is unverified and no numbers of it are reproduced here. What is known: "
    "the reference's __init__ holds 104 tensors (tests/fixtures/hg_head/"
    "llava_1_5_7b_reference_keys.json); this head holds 102 of them with the same shapes and "
    "lacks ldsi.reassemble_projs.stage4.1.weight/bias, the reference's stride-2 stage-4 conv "
    "(24 -> 12), which this head replaces by a bilinear resize to 10 so that the fusion chains."
)
