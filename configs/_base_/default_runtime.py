# Runtime pieces shared by every config. `work_dir` is not set here: pass `--work-dir` on the CLI
# (xtuner/mmengine default to ./work_dirs/<config name>).
from mmengine.hooks import DistSamplerSeedHook, IterTimerHook, LoggerHook, ParamSchedulerHook
from mmengine.visualization import LocalVisBackend, Visualizer

from hg_lmm.engine.checkpointing import (
    AtomicCheckpointHook,
    RNGStateHook,
    WeightsOnlyCheckpointHook,
)
from hg_lmm.engine.hooks import DataReportHook, ProgressHook

save_steps = 500
save_total_limit = 2

default_hooks = dict(
    timer=dict(type=IterTimerHook),
    logger=dict(type=LoggerHook, log_metric_by_epoch=False, interval=10),
    param_scheduler=dict(type=ParamSchedulerHook),
    # Checkpoint files are written atomically (a kill mid-save leaves the previous ones intact).
    checkpoint=dict(
        type=AtomicCheckpointHook,
        by_epoch=False,
        interval=save_steps,
        max_keep_ckpts=save_total_limit,
    ),
    sampler_seed=dict(type=DistSamplerSeedHook),
)

# A progress bar + learning curve; checkpoints that load weights-only (resume under torch 2.6+)
# and carry every rank's RNG states (a resumed run is bit-identical); one warning per bad
# training sample or dropped phrase, and a summary with counts at the end.
custom_hooks = [
    dict(type=ProgressHook, interval=10),
    dict(type=WeightsOnlyCheckpointHook),
    dict(type=RNGStateHook),
    dict(type=DataReportHook),
]

env_cfg = dict(
    cudnn_benchmark=False,
    mp_cfg=dict(mp_start_method="fork", opencv_num_threads=0),
    dist_cfg=dict(backend="nccl"),
)

# Logged scalars (losses, learning rate) go to mmengine's visualizer backends, under
# <work_dir>/<timestamp>/vis_data/: the local backend writes scalars.json. The TensorBoard switch
# replaces it with mmengine's TensorBoard backend (`tensorboard --logdir <work_dir>`):
#   --cfg-options visualizer.vis_backends.0.type=TensorboardVisBackend
# learning_curve.json and its drawing learning_curve.png (ProgressHook) are written either way.
visualizer = dict(type=Visualizer, vis_backends=[dict(type=LocalVisBackend)])
log_level = "INFO"
load_from = None
resume = False
randomness = dict(seed=None, deterministic=False)
log_processor = dict(by_epoch=False)
