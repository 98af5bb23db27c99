"""ReasonSeg (LISA) evaluation: answer each image's question with a short object name, ground
the whole answer (threshold 0.3), and report gIoU and cIoU with the ignore regions left out.

    accelerate launch ReasonSeg_val/reasonseg_code/reasonseg_val.py CONFIG --checkpoint CKPT \
        [--split val] [--data-root data/] [--work-dir DIR] [--save-vis N]
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

from hg_lmm.datasets.layout import reasonseg_dataset
from hg_lmm.evaluation.benchmarks import reasonseg_record
from hg_lmm.evaluation.mask_metrics import reasonseg_metrics
from hg_lmm.evaluation.runner import (
    EvalRunner,
    add_save_vis_argument,
    eval_arg_parser,
    open_unit_interval,
    positive_int,
)


def main(argv: Sequence[str] | None = None) -> None:
    parser = eval_arg_parser(__doc__)
    parser.add_argument("--split", nargs="+", default=["val"], choices=["val", "test"])
    parser.add_argument(
        "--threshold", type=open_unit_interval, default=0.3, help="mask threshold, in (0, 1)"
    )
    parser.add_argument("--max-new-tokens", type=positive_int, default=1024)
    add_save_vis_argument(parser)
    args = parser.parse_args(argv)

    runner = EvalRunner(args, "reasonseg")

    def step(name: str, index: int, sample: object) -> object:
        return reasonseg_record(
            runner.model,
            index,
            sample,
            max_new_tokens=args.max_new_tokens,
            threshold=args.threshold,
            vis=runner.vis_writer(name, index),
        )

    metrics = {}
    for split in args.split:
        name = f"reasonseg_{split}"
        records = runner.run(name, reasonseg_dataset(args.data_root, split), partial(step, name))
        metrics[f"reasonseg_{split}"] = reasonseg_metrics(records)
    runner.report(metrics, threshold=args.threshold, max_new_tokens=args.max_new_tokens)


if __name__ == "__main__":
    main()
