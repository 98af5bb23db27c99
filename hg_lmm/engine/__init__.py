"""The training runtime, laid out as xtuner's and mmdet's `engine/` packages are.

- `loops`: `EpochsAsItersTrainLoop`, iteration-based, sized in epochs, with an exact resume;
- `checkpointing`: the checkpoint policy (atomic files, weights-only loading, every rank's RNG
  states saved with each checkpoint);
- `rng`: one process's generator states as plain data;
- `hooks`: the progress bar with the learning curve, and the data report.

Configs import the classes from these modules (`type=` holds the real class). `hg_lmm.utils` keeps
only leaf helpers and imports nothing from here.
"""
