"""Panoptic Narrative Grounding (PNG val2017) evaluation.

Every grounded utterance of every narrative is one sample. Reports average recall overall, for
things, stuff, singulars and plurals, accuracy at IoU 0.5 and pixel accuracy.

    accelerate launch scripts/multiprocess_eval_png.py CONFIG --checkpoint CKPT \
        [--data-root data/] [--work-dir DIR]
"""

from __future__ import annotations

from collections.abc import Sequence

from hg_lmm.evaluation.benchmarks import png_records, png_report, png_val_dataset
from hg_lmm.evaluation.runner import EvalRunner, eval_arg_parser, flatten, make_tokenize


def main(argv: Sequence[str] | None = None) -> None:
    args = eval_arg_parser(__doc__).parse_args(argv)
    runner = EvalRunner(args, "png")
    model = runner.model
    dataset = png_val_dataset(args.data_root, transform=make_tokenize(model))
    results = runner.run("png_val", dataset, lambda i, sample: png_records(model, i, sample))
    runner.report({"png_val": png_report(flatten(results))})


if __name__ == "__main__":
    main()
