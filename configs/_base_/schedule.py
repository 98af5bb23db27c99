# Optimisation schedule shared by every released config: AdamW lr 1e-4, weight decay 0.01,
# linear warm-up over the first 3% of iterations, then cosine to 0; bf16 AMP; grad-norm clip 1.
from mmengine.optim import AmpOptimWrapper, CosineAnnealingLR, LinearLR
from torch.optim import AdamW

from hg_lmm.engine.loops import EpochsAsItersTrainLoop

lr = 1e-4
weight_decay = 0.01
betas = (0.9, 0.999)
max_norm = 1.0
warmup_ratio = 0.03
max_epochs = 8
accumulative_counts = 1

optim_wrapper = dict(
    type=AmpOptimWrapper,
    optimizer=dict(type=AdamW, lr=lr, betas=betas, weight_decay=weight_decay),
    clip_grad=dict(max_norm=max_norm, error_if_nonfinite=False),
    accumulative_counts=accumulative_counts,
    loss_scale="dynamic",
    dtype="bfloat16",
)

param_scheduler = [
    dict(
        type=LinearLR,
        start_factor=1e-5,
        by_epoch=True,
        begin=0,
        end=warmup_ratio * max_epochs,
        convert_to_iter_based=True,
    ),
    dict(
        type=CosineAnnealingLR,
        eta_min=0.0,
        by_epoch=True,
        begin=warmup_ratio * max_epochs,
        end=max_epochs,
        convert_to_iter_based=True,
    ),
]

# Iteration-based (exact resume), sized in epochs as the reference configs are.
train_cfg = dict(type=EpochsAsItersTrainLoop, max_epochs=max_epochs)
