# HG-LMM's HG head on frozen Mini-Gemini MGM-7B-HD (Vicuna-7B, 2x2 crops + global view),
# trained on PNG + RefCOCO/+/g. The global and crop maps are both read on the 24x24 grid.
# Not a released model: the HG head reads the attention on the 24x24 CLIP grid and the global
# view's CLIP features with their mined ConvNeXt features, through MGM's projector
# (hg_lmm/lmm/mgm/adapter.py).
# Setting as HG-LMM's LLaVA-1.5 config: 4 epochs, batch 1 per GPU on 4 GPUs, AdamW 1e-4:
#   NPROC_PER_NODE=4 xtuner train \
#     configs/mgm/hg_frozen_mgm_vicuna_7b_hd_refcoco_png.py \
#     --deepspeed deepspeed_zero2  # --work-dir DIR (default work_dirs/<config name>)
from mmengine.config import read_base

from hg_lmm.model import GroundingModel

with read_base():
    from .._base_.datasets.refcoco_png import *
    from .._base_.default_runtime import *
    from .._base_.models.hg_head import *
    from .._base_.models.mgm_vicuna_7b_hd import *
    from .._base_.schedule import *

lmm.update(attention_grid="base")
model = dict(type=GroundingModel, lmm=lmm, head=head, loss=mask_loss)
train_dataloader.dataset.datasets = [dict(d, transform=tokenize) for d in train_datasets]

# 4 epochs instead of the shared 8: the 3% warm-up and the cosine are re-derived from max_epochs.
max_epochs = 4
param_scheduler[0].update(end=warmup_ratio * max_epochs)
param_scheduler[1].update(begin=warmup_ratio * max_epochs, end=max_epochs)
train_cfg.update(max_epochs=max_epochs)
