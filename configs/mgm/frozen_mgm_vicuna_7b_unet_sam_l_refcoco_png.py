# F-LMM on frozen Mini-Gemini MGM-7B (Vicuna-7B): U-Net mask head on the attention maps + SAM
# ViT-L refiner, trained on PNG + RefCOCO/+/g; F-LMM's released head checkpoint loads into it
# (checkpoints/README.md).
# Reference setting: 8 epochs, batch 1 per GPU on 8 GPUs, AdamW 1e-4
# (configs/_base_/schedule.py):
#   NPROC_PER_NODE=8 xtuner train \
#     configs/mgm/frozen_mgm_vicuna_7b_unet_sam_l_refcoco_png.py \
#     --deepspeed deepspeed_zero2  # --work-dir DIR (default work_dirs/<config name>)
from mmengine.config import read_base

from hg_lmm.model import GroundingModel

with read_base():
    from .._base_.datasets.refcoco_png import *
    from .._base_.default_runtime import *
    from .._base_.models.mgm_vicuna_7b import *
    from .._base_.models.unet_sam_l_head import *
    from .._base_.schedule import *

model = dict(type=GroundingModel, lmm=lmm, head=head, loss=mask_loss)
train_dataloader.dataset.datasets = [dict(d, transform=tokenize) for d in train_datasets]
