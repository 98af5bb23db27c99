"""Referring segmentation on RefCOCO val/testA/testB, RefCOCO+ val/testA/testB and RefCOCOg
val/test: cIoU and mIoU (percent, mmdet's RefSegMetric) for each split.

Each expression is scored on its own. By default each expression runs as the only phrase of its
caption; with --concat all expressions of an image form one caption (each followed by a period),
which is how the model is trained. The expressions of an image share its frozen work (vision
tower, prompt as a KV cache, SAM's image encoder) unless --no-share; --share-splits also shares
it between the splits that hold the same image (RefCOCO and RefCOCO+), evaluated together.

    accelerate launch scripts/multiprocess_eval_refcoco.py CONFIG --checkpoint CKPT [--concat] \
        [--val] [--share-splits] [--no-share] [--batch-size N] [--data-root data/] \
        [--work-dir DIR] [--save-vis N]
"""

from __future__ import annotations

from collections.abc import Sequence

from hg_lmm.evaluation.benchmarks import REFCOCO_SPLITS, refcoco_eval_dataset, refseg_batch
from hg_lmm.evaluation.mask_metrics import refseg_metrics
from hg_lmm.evaluation.runner import (
    EvalRunner,
    add_save_vis_argument,
    add_sharing_arguments,
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
    parser.add_argument(
        "--share-splits",
        action="store_true",
        help="evaluate the splits together, each image's frozen work done once for all of them",
    )
    add_sharing_arguments(parser)
    add_save_vis_argument(parser)
    args = parser.parse_args(argv)
    if args.share_splits and args.no_share:
        parser.error("--share-splits shares frozen work; it cannot go with --no-share")
    splits = args.splits or [s for s in REFCOCO_SPLITS if not args.val or s.endswith("_val")]

    runner = EvalRunner(args, "refcoco")
    model, tokenize = runner.model, make_tokenize(runner.model)

    def step(keys: list, samples: list) -> list:
        """keys: (split, index) pairs."""
        return refseg_batch(
            model,
            [index for _, index in keys],
            samples,
            tokenize=tokenize,
            concat=args.concat,
            vis=[runner.vis_writer(name, index) for name, index in keys],
            share=runner.share,
            batch_size=runner.batch_size,
        )

    datasets = {name: refcoco_eval_dataset(args.data_root, name) for name in splits}
    groups = {name: [d.image_key(i) for i in range(len(d))] for name, d in datasets.items()}
    if args.share_splits:
        results = runner.run_together(datasets, step, groups=groups, batch_size=1)
    else:
        results = {
            name: runner.run_batches(
                name, d, lambda idx, s, name=name: step([(name, i) for i in idx], s)
            )
            for name, d in datasets.items()
        }
    metrics = {name: refseg_metrics(flatten(results[name])) for name in splits}
    runner.report(
        metrics,
        concat=args.concat,
        share=runner.share,
        share_splits=args.share_splits,
        batch_size=runner.batch_size,
    )


if __name__ == "__main__":
    main()
