# Tiny HG-LMM on CPU: a tiny random LLaVA (built once under work_dirs/tiny_lmms/) and the toy data
# set (python scripts/make_toy_data.py --out data/toy). Used by the tests and `make demo`.
from mmengine.config import read_base
from mmengine.dataset import DefaultSampler
from mmengine.optim import OptimWrapper

from hg_lmm.datasets.collate import concat_datasets, list_collate
from hg_lmm.datasets.layout import png_dataset, refcoco_dataset
from hg_lmm.datasets.transforms import TokenizePieces
from hg_lmm.heads.hg import HGHead
from hg_lmm.lmm.llava import llava_train_prompt
from hg_lmm.model import GroundingModel
from hg_lmm.testing.tiny_models import tiny_llava_adapter, tiny_llava_tokenizer

with read_base():
    from .._base_.default_runtime import *
    from .._base_.schedule import *

data_root = "data/toy/"
tiny_lmm_dir = "work_dirs/tiny_lmms/llava"
max_epochs = 12
batch_size = 4

model = dict(
    type=GroundingModel,
    lmm=dict(type=tiny_llava_adapter, cache_dir=tiny_lmm_dir),
    head=dict(type=HGHead),
    loss=dict(loss_mask_weight=1.0, loss_dice_weight=1.0),
)

tokenize = dict(
    type=TokenizePieces,
    tokenizer=dict(type=tiny_llava_tokenizer, cache_dir=tiny_lmm_dir),
    prompt=dict(type=llava_train_prompt),
)
png_train = dict(type=png_dataset, data_root=data_root, split="train2017", transform=tokenize)
refcoco_train = dict(
    type=refcoco_dataset, data_root=data_root, name="refcoco", split="train", transform=tokenize
)

train_dataloader = dict(
    batch_size=batch_size,
    num_workers=0,
    dataset=dict(type=concat_datasets, datasets=[refcoco_train, png_train], skip_bad_samples=True),
    sampler=dict(type=DefaultSampler, shuffle=True),
    collate_fn=dict(type=list_collate),
)

# CPU: mmengine's AmpOptimWrapper needs a GPU, so the tiny config trains in float32.
optim_wrapper = dict(
    type=OptimWrapper,
    optimizer=dict(type=AdamW, lr=1e-3, betas=betas, weight_decay=weight_decay),
    clip_grad=dict(max_norm=max_norm, error_if_nonfinite=False),
)
param_scheduler = [
    dict(
        type=LinearLR,
        start_factor=1e-2,
        by_epoch=True,
        begin=0,
        end=0.5,
        convert_to_iter_based=True,
    ),
    dict(
        type=CosineAnnealingLR,
        eta_min=0.0,
        by_epoch=True,
        begin=0.5,
        end=max_epochs,
        convert_to_iter_based=True,
    ),
]
train_cfg = dict(type=EpochsAsItersTrainLoop, max_epochs=max_epochs)
default_hooks.update(
    logger=dict(type=LoggerHook, log_metric_by_epoch=False, interval=5),
    checkpoint=dict(type=AtomicCheckpointHook, by_epoch=False, interval=50, max_keep_ckpts=2),
)
env_cfg = dict(
    cudnn_benchmark=False,
    mp_cfg=dict(mp_start_method="fork", opencv_num_threads=0),
    dist_cfg=dict(backend="gloo"),
)
randomness = dict(seed=0, deterministic=False)
