# HG-LMM on frozen DeepSeek-VL-1.3B-chat: the HG head, trained on PNG + RefCOCO/+/g.
# Reference setting: 4 epochs, batch 1 per GPU on 4 GPUs, AdamW 1e-4
# (configs/_base_/schedule.py):
#   NPROC_PER_NODE=4 xtuner train \
#     configs/deepseek_vl/hg_frozen_deepseek_vl_1_3b_chat_refcoco_png.py \
#     --deepspeed deepspeed_zero2  # --work-dir DIR (default work_dirs/<config name>)
from mmengine.config import read_base

from hg_lmm.model import GroundingModel

with read_base():
    from .._base_.datasets.refcoco_png import *
    from .._base_.default_runtime import *
    from .._base_.models.deepseek_vl_1_3b_chat import *
    from .._base_.models.hg_head import *
    from .._base_.schedule import *

model = dict(type=GroundingModel, lmm=lmm, head=head, loss=mask_loss)
train_dataloader.dataset.datasets = [dict(d, transform=tokenize) for d in train_datasets]

# 4 epochs instead of the shared 8: the 3% warm-up and the cosine are re-derived from max_epochs.
max_epochs = 4
param_scheduler[0].update(end=warmup_ratio * max_epochs)
param_scheduler[1].update(begin=warmup_ratio * max_epochs, end=max_epochs)
train_cfg.update(max_epochs=max_epochs)
