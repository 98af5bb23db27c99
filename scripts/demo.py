"""The main job on its built-in default: train a tiny HG model on the toy set and show it learns.

    python scripts/demo.py [--config configs/tiny/hg_tiny_llava_toy.py] [--data-root data/toy]
                           [--work-dir work_dirs/demo] [--epochs N]

1. generates the toy data set (`data/toy`) unless it is there;
2. evaluates the untrained head on the toy RefCOCO val split with the real evaluation CLI
   (`scripts/multiprocess_eval_refcoco.py --concat --splits refcoco_val`) and prints its cIoU;
3. trains with `scripts/train.py` (xtuner's training, with its exit status; progress bar,
   checkpoints, learning curve);
4. evaluates the last checkpoint the same way;
5. writes `<work-dir>/metrics.json` (both evaluations, the learning curve),
   `<work-dir>/predictions.png` (image, ground truth and prediction per phrase) and
   `<work-dir>/learning_curve.png` (loss terms and learning rate against the iteration).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EVAL_SPLIT = "refcoco_val"


def _env() -> dict[str, str]:
    env = dict(os.environ)
    # Child processes (xtuner's training, torchrun) find this environment's executables first.
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONPATH"] = f"{ROOT}{os.pathsep}{env.get('PYTHONPATH', '')}"
    return env


def _run(cmd: list[str], what: str) -> None:
    print(f"\n[demo] {what}: {' '.join(cmd)}", flush=True)
    result = subprocess.run(cmd, cwd=ROOT, env=_env())
    if result.returncode != 0:
        raise SystemExit(f"[demo] {what} failed (exit {result.returncode}); see the output above")


def evaluate(args: argparse.Namespace, checkpoint: Path, tag: str) -> dict[str, float]:
    """cIoU/mIoU (percent) of `checkpoint` on the toy RefCOCO val split, via the eval CLI."""
    out_dir = Path(args.work_dir) / f"eval_{tag}"
    _run(
        [
            sys.executable,
            "scripts/multiprocess_eval_refcoco.py",
            args.config,
            "--checkpoint",
            str(checkpoint),
            "--concat",
            "--splits",
            EVAL_SPLIT,
            "--data-root",
            args.data_root,
            "--work-dir",
            str(out_dir),
        ],
        f"evaluate the {tag} head",
    )
    results = json.loads((out_dir / "refcoco_results.json").read_text())
    return results["metrics"][EVAL_SPLIT]


def save_untrained(args: argparse.Namespace, path: Path) -> None:
    """The head as training starts (same seed as the config's `randomness`), as a checkpoint."""
    import torch
    from mmengine.config import Config

    from hg_lmm.utils.build import build
    from hg_lmm.utils.checkpoint import save_checkpoint

    cfg = Config.fromfile(args.config)
    torch.manual_seed(cfg.get("randomness", {}).get("seed") or 0)
    save_checkpoint(build(cfg.model), path, note="untrained")


def prediction_grid(args: argparse.Namespace, checkpoint: Path, path: Path, rows: int) -> None:
    """Image / ground truth / prediction for the first phrases of the val split."""
    import matplotlib
    import numpy as np

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from hg_lmm.evaluation.benchmarks import refcoco_eval_dataset
    from hg_lmm.evaluation.runner import load_model, make_tokenize

    model = load_model(args.config, checkpoint)
    dataset = refcoco_eval_dataset(args.data_root, EVAL_SPLIT)
    tokenize = make_tokenize(model)
    panels = []
    for i in range(len(dataset)):
        sample = tokenize(dataset[i])
        pred = model([sample], mode="predict")[0]["masks"]
        for k, phrase in enumerate(sample.phrases):
            panels.append((sample.image, sample.masks[k], pred[k], phrase))
        if len(panels) >= rows:
            break
    panels = panels[:rows]
    fig, axes = plt.subplots(len(panels), 3, figsize=(7.5, 2.5 * len(panels)), squeeze=False)
    for row, (image, gt, pred, phrase) in zip(axes, panels):
        for ax, (title, mask) in zip(
            row, (("image", None), ("ground truth", gt), ("prediction", pred))
        ):
            ax.imshow(image)
            if mask is not None:  # the mask in cyan, the rest of the image untouched
                ax.imshow(
                    np.ma.masked_equal(mask.numpy().astype(np.uint8), 0),
                    alpha=0.7,
                    cmap="cool",
                    vmin=0,
                    vmax=1,
                    interpolation="nearest",
                )
            ax.set_title(f"{title}: {phrase}" if mask is None else title, fontsize=8)
            ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="configs/tiny/hg_tiny_llava_toy.py")
    parser.add_argument(
        "--data-root", default="data/toy", help="the toy tree (generated if absent)"
    )
    parser.add_argument("--work-dir", default="work_dirs/demo")
    parser.add_argument("--epochs", type=int, default=None, help="override the config's epochs")
    parser.add_argument("--grid-rows", type=int, default=6)
    args = parser.parse_args()
    os.chdir(ROOT)
    work_dir = Path(args.work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    start = time.time()

    from hg_lmm.datasets.layout import refcoco_files

    refcoco = refcoco_files(args.data_root, "refcoco")
    if not os.path.isfile(os.path.join(refcoco["data_root"], refcoco["ann_file"])):
        _run(
            [sys.executable, "scripts/make_toy_data.py", "--out", args.data_root],
            "generate the toy data set",
        )

    untrained_ckpt = work_dir / "untrained.pth"
    save_untrained(args, untrained_ckpt)
    before = evaluate(args, untrained_ckpt, "untrained")
    print(
        f"\n[demo] untrained head: {EVAL_SPLIT} "
        f"cIoU {before['cIoU']:.2f}  mIoU {before['mIoU']:.2f}"
    )

    train_dir = work_dir / "train"
    cmd = [sys.executable, "scripts/train.py", args.config, "--work-dir", str(train_dir)]
    if args.epochs is not None:
        cmd += ["--cfg-options", f"train_cfg.max_epochs={args.epochs}"]
    t0 = time.time()
    _run(cmd, "train")
    train_seconds = time.time() - t0
    # scripts/train.py exits non-zero when training fails; the checkpoint is checked all the same.
    last = train_dir / "last_checkpoint"
    if not last.is_file():
        raise SystemExit(
            f"[demo] training wrote no checkpoint under {train_dir}; see its log above"
        )
    trained_ckpt = Path(last.read_text().strip())
    after = evaluate(args, trained_ckpt, "trained")

    grid = work_dir / "predictions.png"
    prediction_grid(args, trained_ckpt, grid, args.grid_rows)
    from hg_lmm.engine.curves import CURVE_JSON, CURVE_PNG, plot_curve, read_curve

    curve = read_curve(train_dir / CURVE_JSON)
    curve_png = plot_curve(
        curve, work_dir / CURVE_PNG, title=f"make demo: {Path(args.config).name} on toy data"
    )
    metrics = {
        "eval_split": EVAL_SPLIT,
        "untrained": before,
        "trained": after,
        "checkpoint": str(trained_ckpt),
        "learning_curve": curve,
        "train_seconds": round(train_seconds, 1),
        "total_seconds": round(time.time() - start, 1),
    }
    (work_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")

    print(f"\n[demo] learning curve (mean loss per {curve['interval']} iterations):")
    points = curve["points"]
    for point in points[:: max(1, len(points) // 12)] + points[-1:]:
        print(f"  iter {point['iter']:5d}  loss {point['loss']:.4f}")
    print(
        f"\n[demo] {EVAL_SPLIT} cIoU: untrained {before['cIoU']:.2f} -> trained {after['cIoU']:.2f}"
        f"  (mIoU {before['mIoU']:.2f} -> {after['mIoU']:.2f})"
    )
    print(
        f"[demo] wrote {work_dir / 'metrics.json'}, {grid} and {curve_png}; "
        f"{metrics['total_seconds']:.0f} s"
    )


if __name__ == "__main__":
    main()
