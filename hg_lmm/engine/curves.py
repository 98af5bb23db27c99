"""Training curves: `learning_curve.json` (written by `ProgressHook`) drawn as a PNG.

The JSON holds one point every `interval` iterations: the mean of each loss term over those
iterations and the learning rate of the last one. The figure has two panels over the iteration:
every loss term (top) and the learning rate (bottom).
"""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path
from typing import Any

from hg_lmm.utils.files import write_bytes_atomic

CURVE_JSON = "learning_curve.json"
CURVE_PNG = "learning_curve.png"


def read_curve(path: str | Path) -> dict[str, Any]:
    """The learning curve at `path`, checked: {"interval": k, "points": [{"iter": i, ...}]}."""
    path = Path(path)
    try:
        curve = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise ValueError(f"cannot read the learning curve {path}: {error}") from error
    points = curve.get("points") if isinstance(curve, dict) else None
    if not isinstance(points, list) or not all(isinstance(p, dict) and "iter" in p for p in points):
        raise ValueError(
            f"{path} is not a learning curve (expected {{'interval': k, 'points': [{{'iter': i, "
            "'loss': ...}, ...]}); it is written by hg_lmm.engine.hooks.ProgressHook"
        )
    return curve


def plot_curve(curve: dict[str, Any], out: str | Path, title: str | None = None) -> Path:
    """Draw `curve` (as `read_curve` returns it) into the PNG `out`; returns `out`.

    Loss terms are every key holding "loss"; the learning rate is "lr" (points written before it
    was recorded have none, and the lower panel then says so). Raises ValueError on a curve with
    no point.
    """
    # The Agg canvas directly: no pyplot, so no global backend or figure state is touched.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    points = curve["points"]
    if not points:
        raise ValueError("the learning curve has no point yet (fewer iterations than its interval)")
    iters = [p["iter"] for p in points]
    losses = sorted({k for p in points for k in p if "loss" in k}, key=lambda k: (k != "loss", k))

    fig = Figure(figsize=(7, 5.5), dpi=100)
    FigureCanvasAgg(fig)
    top, bottom = fig.subplots(2, 1, sharex=True, height_ratios=(2, 1))
    for key in losses:
        xs = [p["iter"] for p in points if key in p]
        top.plot(xs, [p[key] for p in points if key in p], label=key, lw=2 if key == "loss" else 1)
    top.set_ylabel("loss (mean per point)")
    top.grid(alpha=0.3)
    if losses:
        top.legend(fontsize=8, loc="upper right")
    lrs = [(p["iter"], p["lr"]) for p in points if "lr" in p]
    if lrs:
        bottom.plot(*zip(*lrs), color="tab:purple")
        bottom.ticklabel_format(axis="y", style="sci", scilimits=(0, 0))
    else:
        bottom.text(0.5, 0.5, "no learning rate recorded", ha="center", transform=bottom.transAxes)
    bottom.set_ylabel("learning rate")
    bottom.set_xlabel("iteration")
    bottom.grid(alpha=0.3)
    bottom.set_xlim(min(iters) - 0.5, max(iters) + 0.5)
    interval = curve.get("interval")
    fig.suptitle(title or f"learning curve (a point every {interval} iterations)", fontsize=10)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    out = Path(out)
    write_bytes_atomic(out, buffer.getvalue())
    return out


def main(argv: list[str] | None = None) -> int:
    """`python -m hg_lmm.engine.curves WORK_DIR_OR_JSON [OUT.png]`: draw a run's curve, e.g. of a
    run that is still going or was interrupted (training draws it itself when it ends)."""
    import argparse

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("source", help=f"a work dir or its {CURVE_JSON}")
    parser.add_argument("out", nargs="?", help=f"the PNG (default: {CURVE_PNG} next to the JSON)")
    args = parser.parse_args(argv)
    source = Path(args.source)
    path = source / CURVE_JSON if source.is_dir() else source
    try:
        out = plot_curve(read_curve(path), args.out or path.with_name(CURVE_PNG))
    except ValueError as error:
        print(f"[curves] {error}", file=sys.stderr)
        return 2
    print(f"[curves] wrote {out}")
    return 0


__all__ = ["CURVE_JSON", "CURVE_PNG", "plot_curve", "read_curve"]

if __name__ == "__main__":
    sys.exit(main())
