"""Grounded conversation generation (GranD-f), step 2: score the predictions of gcg_infer.py.

Reports METEOR and CIDEr (pycocoevalcap, needs Java), mask AP50 (COCOeval), mIoU (greedy
one-to-one matching) and recall (IoU >= 0.5 and BERT text similarity >= 0.5).

    python GCG_val/gcg_code/gcg_evaluate.py [--split val] [--prediction-dir DIR] \
        [--text-model bert-base-uncased] [--data-root data/] [--work-dir DIR]
"""

from __future__ import annotations

from collections.abc import Sequence

from hg_lmm.evaluation import gcg
from hg_lmm.evaluation.benchmarks import gcg_dataset
from hg_lmm.evaluation.metrics import BertTextSimilarity, gcg_metrics
from hg_lmm.evaluation.runner import eval_arg_parser, write_report


def main(argv: Sequence[str] | None = None) -> None:
    parser = eval_arg_parser(__doc__, with_model=False)
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

    dataset = gcg_dataset(args.data_root, args.split)
    count = len(dataset) if args.limit is None else min(len(dataset), args.limit)
    ground_truth = [gcg.ground_truth_sample(dataset[i]) for i in range(count)]
    predictions = gcg.load_predictions(pred_dir, [gt.image_id for gt in ground_truth])
    metrics = gcg_metrics(
        ground_truth,
        predictions,
        text_similarity=BertTextSimilarity(args.text_model),
        compute_captions=not args.no_captions,
    )
    write_report(
        args.work_dir or gcg.DEFAULT_PREDICTION_ROOT,
        "gcg",
        {f"gcg_{args.split}": metrics},
        counts={f"gcg_{args.split}": {"samples": count}},
        prediction_dir=pred_dir,
        text_model=args.text_model,
        data_root=args.data_root,
        limit=args.limit,
    )


if __name__ == "__main__":
    main()
