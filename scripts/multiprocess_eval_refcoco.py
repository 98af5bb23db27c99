"""Referring segmentation on RefCOCO val/testA/testB, RefCOCO+ val/testA/testB and RefCOCOg
val/test: cIoU and mIoU (percent, mmdet's RefSegMetric) for each split.

Each expression is scored on its own. By default each expression runs in its own forward pass,
as the only phrase of the caption; with --concat all expressions of an image form one caption
(each followed by a period) and run in one forward pass, which is how the model is trained.

    accelerate launch scripts/multiprocess_eval_refcoco.py CONFIG --checkpoint CKPT [--concat] \
        [--val] [--data-root data/] [--work-dir DIR] [--save-vis N]
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

from hg_lmm.evaluation.benchmarks import REFCOCO_SPLITS, refcoco_eval_dataset, refseg_records
from hg_lmm.evaluation.mask_metrics import refseg_metrics
from hg_lmm.evaluation.runner import (
    EvalRunner,
    add_save_vis_argument,
    eval_arg_parser,
    flatten,
    make_tokenize,
)


def main(argv: Sequence[str] | None = None) -> None:
    parser = eval_arg_parser(__doc__)
    parser.add_argument(
        "--concat", action="store_true", help="all expressions of an image in one forward pass"
    )
    parser.add_argument("--val", action="store_true", help="only the val splits")
    parser.add_argument(
        "--splits", nargs="+", choices=list(REFCOCO_SPLITS), help="evaluate only these splits"
    )
    add_save_vis_argument(parser)
    args = parser.parse_args(argv)
    splits = args.splits or [s for s in REFCOCO_SPLITS if not args.val or s.endswith("_val")]

    runner = EvalRunner(args, "refcoco")
    model, tokenize = runner.model, make_tokenize(runner.model)

    def step(name: str, index: int, sample: object) -> list:
        vis = runner.vis_writer(name, index)
        return refseg_records(model, index, sample, tokenize=tokenize, concat=args.concat, vis=vis)

    metrics = {}
    for name in splits:
        results = runner.run(name, refcoco_eval_dataset(args.data_root, name), partial(step, name))
        metrics[name] = refseg_metrics(flatten(results))
    runner.report(metrics, concat=args.concat)


if __name__ == "__main__":
    main()
