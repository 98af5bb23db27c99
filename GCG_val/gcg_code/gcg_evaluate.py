"""Grounded conversation generation (GranD-f), step 2: score the predictions of gcg_infer.py.

Reports METEOR and CIDEr (pycocoevalcap, needs Java), mask AP50 (COCOeval), mIoU (greedy
one-to-one matching) and recall (IoU >= 0.5 and BERT text similarity >= 0.5).

Java and the BERT text model are checked before anything is computed. The mask metrics are
computed first and saved even if the caption metrics then fail.

    python GCG_val/gcg_code/gcg_evaluate.py [--split val] [--prediction-dir DIR] \
        [--text-model bert-base-uncased] [--no-captions] [--data-root data/] [--work-dir DIR]
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence

from hg_lmm.datasets.layout import gcg_dataset
from hg_lmm.evaluation import gcg
from hg_lmm.evaluation.gcg_metrics import BertTextSimilarity, caption_metrics, gcg_metrics
from hg_lmm.evaluation.runner import check_output_dir, eval_arg_parser, write_report


def main(argv: Sequence[str] | None = None) -> None:
    parser = eval_arg_parser(__doc__, with_model=False, work_dir=gcg.DEFAULT_PREDICTION_ROOT)
    parser.add_argument("--split", default="val", choices=["val", "test"])
    parser.add_argument("--prediction-dir", help="default work_dirs/gcg_result/<split>")
    parser.add_argument(
        "--text-model",
        default="bert-base-uncased",
        help="HF id or local folder of the BERT used for text similarity (default %(default)s)",
    )
    parser.add_argument(
        "--no-captions", action="store_true", help="skip METEOR and CIDEr (they need Java)"
    )
    args = parser.parse_args(argv)
    pred_dir = args.prediction_dir or gcg.default_prediction_dir(args.split)

    # Everything that can fail late is checked first.
    check_output_dir(args.work_dir, "--work-dir")
    if not args.no_captions and shutil.which("java") is None:
        raise SystemExit(
            "METEOR and CIDEr need Java (`java` is not on PATH): install a Java runtime (e.g. "
            "`apt-get install default-jre-headless`), or pass --no-captions for the mask metrics"
        )
    similarity = BertTextSimilarity(args.text_model)
    try:
        similarity.embed("")  # loads the model now
    except OSError as error:
        raise SystemExit(
            f"cannot load the text-similarity model {args.text_model!r} "
            f"({error.__cause__ or error}); pass --text-model with a local copy of "
            "bert-base-uncased"
        ) from error

    dataset = gcg_dataset(args.data_root, args.split)
    count = len(dataset) if args.limit is None else min(len(dataset), args.limit)
    ground_truth = [gcg.ground_truth_sample(dataset[i]) for i in range(count)]
    predictions = gcg.load_predictions(pred_dir, [gt.image_id for gt in ground_truth])
    metrics = gcg_metrics(
        ground_truth, predictions, text_similarity=similarity, compute_captions=False
    )
    failure = None
    if not args.no_captions:
        try:
            metrics.update(
                caption_metrics(
                    {gt.image_id: [gt.caption] for gt in ground_truth},
                    {p.image_id: p.caption for p in predictions},
                )
            )
        except Exception as error:  # keep the mask metrics; report the failure after saving
            failure = f"METEOR/CIDEr failed ({type(error).__name__}: {error})"
    write_report(
        args.work_dir,
        "gcg",
        {f"gcg_{args.split}": metrics},
        counts={f"gcg_{args.split}": {"samples": count}},
        prediction_dir=pred_dir,
        text_model=args.text_model,
        data_root=args.data_root,
        limit=args.limit,
        **({"caption_metrics_error": failure} if failure else {}),
    )
    if failure:
        raise SystemExit(
            f"{failure}; the mask metrics are saved above. Fix Java / pycocoevalcap and rerun, "
            "or pass --no-captions"
        )


if __name__ == "__main__":
    main()
