"""scripts/benchmark.py: its peak-memory measure sees what a block allocates, and a run on a tiny
LMM measures every item and writes the report (the figures themselves belong to the benchmark,
not to timed tests)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "benchmark.py"

# Run in a subprocess: PeakMemory.prepare() changes the allocator of the process it runs in.
_PEAK = r"""
import json, runpy, sys, torch
ns = runpy.run_path(sys.argv[1], run_name="__bench__")
memory = ns["PeakMemory"](torch.device("cpu"))
memory.prepare()
big = torch.ones(50 * 2**20 // 4)  # 50 MiB allocated before the block: not counted
with memory.measure() as m:
    x = torch.ones(100 * 2**20 // 4)  # 100 MiB
    del x
    y = [torch.ones(2**20 // 4) for _ in range(60)]  # 60 MiB, in 1 MiB tensors
    del y
print(json.dumps(m["peak"] / 2**20))
"""


def test_peak_memory_sees_the_block_only(tmp_path):
    if not Path("/proc/self/clear_refs").exists():
        pytest.skip("the CPU peak needs Linux /proc/self/clear_refs")
    run = subprocess.run(
        [sys.executable, "-c", _PEAK, str(SCRIPT)], capture_output=True, text=True, cwd=ROOT
    )
    assert run.returncode == 0, run.stderr[-3000:]
    peak = json.loads(run.stdout.strip().splitlines()[-1])
    assert 98 < peak < 110, peak  # the larger of the two, freed memory leaves the resident set


@pytest.mark.slow
def test_tiny_run_reports_every_item(tmp_path):
    out = tmp_path / "report.json"
    args = ["--lmm", "tiny-llava", "--cache-dir", str(tmp_path), "--out", str(out)]
    args += ["--repeats", "2", "--batch", "2", "--new-tokens", "3", "--text-tokens", "30"]
    run = subprocess.run(
        [sys.executable, str(SCRIPT), *args], capture_output=True, text=True, cwd=ROOT
    )
    assert run.returncode == 0, (run.stdout + run.stderr)[-4000:]
    report = json.loads(out.read_text())
    items = report["items"]
    expected = {"vision", "decoder", "decoder_rows", "features", "features_eager", "frozen_2"}
    expected |= {"train_1", "train_2", "train_1_ref", "train_2_ref", "generate", "answer"}
    expected |= {f"eval_{m}_{h}" for m in ("loop", "shared", "splits") for h in ("hg", "unet_sam")}
    assert set(items) == expected
    for name, item in items.items():
        assert len(item["times_s"]) == (1 if name.endswith("_ref") else 2), name
        assert item["wall_s"]["min"] > 0 and item["cpu_s"]["min"] > 0, name
        assert item["peak_mib"] is not None, name
    parts = items["train_2"]["breakdown_min_s"]
    assert set(parts) == {"vision", "decoder", "head_forward", "loss_and_rest", "backward",
                          "head_recompute"}  # fmt: skip
    assert (
        parts["head_recompute"] > 0
        and items["train_2_ref"]["breakdown_min_s"]["head_recompute"] == 0
    )
    assert set(report["ratios"]) == {"time_wall", "time_cpu", "peak"}
    for group in report["ratios"].values():
        assert group and all(v is not None for v in group.values()), report["ratios"]
    assert report["conditions"]["weights"] == "random" and "train_2" in run.stdout
    for head in ("hg", "unet_sam"):  # the evaluation items' summary, per expression
        summary = report["evaluation"][head]
        assert set(summary["seconds_per_expression"]["wall_s"]) == {"loop", "shared", "splits"}
        assert all(v > 0 for v in summary["projected_8_splits_hours"].values())
        assert summary["peak_ratio"]["shared / loop"] is not None
