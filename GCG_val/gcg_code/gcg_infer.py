"""Grounded conversation generation (GranD-f), step 1: caption every image, extract the noun
phrases of the caption (spaCy) and ground each one.

Writes one RLE JSON per image to --output-dir (default work_dirs/gcg_result/<split>), atomically.
A restarted run skips the images that already have a file, so it resumes where it stopped.
Score the predictions with `python GCG_val/gcg_code/gcg_evaluate.py --split <split>`.

    accelerate launch GCG_val/gcg_code/gcg_infer.py CONFIG --checkpoint CKPT [--split val]
"""

from __future__ import annotations

from collections.abc import Sequence

from hg_lmm.datasets.layout import gcg_dataset
from hg_lmm.evaluation import gcg
from hg_lmm.evaluation.grounding import caption_and_ground
from hg_lmm.evaluation.phrases import load_spacy
from hg_lmm.evaluation.runner import EvalRunner, check_output_dir, eval_arg_parser, positive_int
from hg_lmm.utils.files import write_json_atomic


def main(argv: Sequence[str] | None = None) -> None:
    parser = eval_arg_parser(__doc__)
    parser.add_argument("--split", default="val", choices=["val", "test"])
    parser.add_argument("--output-dir", help="default work_dirs/gcg_result/<split>")
    parser.add_argument("--max-new-tokens", type=positive_int, default=1024)
    parser.add_argument(
        "--max-images",
        type=positive_int,
        help="caption at most N new images per process, then stop",
    )
    parser.add_argument("--overwrite", action="store_true", help="discard earlier predictions")
    args = parser.parse_args(argv)
    out_dir = args.output_dir or gcg.default_prediction_dir(args.split)

    check_output_dir(out_dir, "--output-dir")  # before the model loads: fail fast
    runner = EvalRunner(args, "gcg_infer")
    manifest = gcg.run_manifest(
        args.config,
        args.checkpoint,
        split=args.split,
        instruction=gcg.GCG_INSTRUCTION,
        max_new_tokens=args.max_new_tokens,
    )
    gcg.check_manifest(out_dir, manifest, overwrite=args.overwrite, write=runner.is_main)
    runner.accelerator.wait_for_everyone()
    nlp, done = load_spacy(), []

    def step(index: int, gt: object) -> str:
        if gcg.has_prediction(out_dir, gt.image_id):
            return "resumed"
        if args.max_images is not None and len(done) >= args.max_images:
            return "deferred"
        grounded = caption_and_ground(
            runner.model, gt.image, gcg.GCG_INSTRUCTION, max_new_tokens=args.max_new_tokens, nlp=nlp
        )
        record = gcg.prediction_record(gt.image_id, grounded.text, grounded.phrases, grounded.masks)
        write_json_atomic(gcg.prediction_path(out_dir, gt.image_id), record)
        done.append(gt.image_id)
        return "new"

    statuses = runner.run(f"gcg_{args.split}", gcg_dataset(args.data_root, args.split), step)
    counts = {s: statuses.count(s) for s in ("new", "resumed", "deferred")}
    runner.report({f"gcg_{args.split}": counts}, output_dir=out_dir)
    if counts["deferred"] and runner.is_main:
        print(f"stopped early (--max-images): rerun to caption {counts['deferred']} more images")


if __name__ == "__main__":
    main()
