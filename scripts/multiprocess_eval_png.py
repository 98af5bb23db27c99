"""Panoptic Narrative Grounding (PNG val2017) evaluation.

Every grounded utterance of every narrative is one sample. Reports average recall overall, for
things, stuff, singulars and plurals, accuracy at IoU 0.5 and pixel accuracy. Narratives of one
image share its frozen work (vision tower, prompt, SAM's encoder) unless --no-share; the others
run --batch-size at a time.

    accelerate launch scripts/multiprocess_eval_png.py CONFIG --checkpoint CKPT \
        [--no-share] [--batch-size N] [--data-root data/] [--work-dir DIR] [--save-vis N]
"""

from __future__ import annotations

from collections.abc import Sequence

from hg_lmm.datasets.layout import png_dataset
from hg_lmm.evaluation.benchmarks import png_batch, png_report
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
    add_sharing_arguments(parser)
    add_save_vis_argument(parser)
    args = parser.parse_args(argv)
    runner = EvalRunner(args, "png")
    model = runner.model
    dataset = png_dataset(args.data_root, "val2017", transform=make_tokenize(model))

    def step(indices: list, samples: list) -> list:
        vis = [runner.vis_writer("png_val", i) for i in indices]
        return png_batch(
            model, indices, samples, vis=vis, share=runner.share, batch_size=runner.batch_size
        )

    groups = [dataset.image_key(i) for i in range(len(dataset))]
    results = runner.run_batches(
        "png_val", dataset, step, batch_size=runner.batch_size or 1, groups=groups
    )
    runner.report(
        {"png_val": png_report(flatten(results))},
        share=runner.share,
        batch_size=runner.batch_size,
    )


if __name__ == "__main__":
    main()
