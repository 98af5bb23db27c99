"""Panoptic Narrative Grounding (PNG val2017) evaluation.

Every grounded utterance of every narrative is one sample. Reports average recall overall, for
things, stuff, singulars and plurals, accuracy at IoU 0.5 and pixel accuracy.

    accelerate launch scripts/multiprocess_eval_png.py CONFIG --checkpoint CKPT \
        [--data-root data/] [--work-dir DIR] [--save-vis N]
"""

from __future__ import annotations

from collections.abc import Sequence

from hg_lmm.datasets.layout import png_dataset
from hg_lmm.evaluation.benchmarks import png_records, png_report
from hg_lmm.evaluation.runner import (
    EvalRunner,
    add_save_vis_argument,
    eval_arg_parser,
    flatten,
    make_tokenize,
)


def main(argv: Sequence[str] | None = None) -> None:
    parser = eval_arg_parser(__doc__)
    add_save_vis_argument(parser)
    args = parser.parse_args(argv)
    runner = EvalRunner(args, "png")
    model = runner.model
    dataset = png_dataset(args.data_root, "val2017", transform=make_tokenize(model))

    def step(index: int, sample: object) -> list:
        return png_records(model, index, sample, vis=runner.vis_writer("png_val", index))

    results = runner.run("png_val", dataset, step)
    runner.report({"png_val": png_report(flatten(results))})


if __name__ == "__main__":
    main()
