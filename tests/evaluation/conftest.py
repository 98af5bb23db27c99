"""Fixtures of the eval tests: a tiny BERT, runners for a CLI in this process (one rank) or under
`accelerate launch` (two ranks), and hand-made masks for the metric tests. The toy data and the
golden-weight checkpoint of the tiny config come from the root conftest."""

from __future__ import annotations

import json
import os
import runpy
import socket
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import REPO, TINY_CONFIG

CLI = {
    "png": REPO / "scripts" / "multiprocess_eval_png.py",
    "refcoco": REPO / "scripts" / "multiprocess_eval_refcoco.py",
    "gcg_infer": REPO / "GCG_val" / "gcg_code" / "gcg_infer.py",
    "gcg_evaluate": REPO / "GCG_val" / "gcg_code" / "gcg_evaluate.py",
    "reasonseg": REPO / "ReasonSeg_val" / "reasonseg_code" / "reasonseg_val.py",
}
# Small generation budgets keep the tiny random LMM (512 positions) fast and in range.
MAX_NEW_TOKENS = ["--max-new-tokens", "12"]

# Runs several CLIs one after the other inside the same `accelerate launch`: the ranks start
# once (imports dominate on CPU) and each CLI's `main` runs exactly as `accelerate launch CLI`.
_DRIVER = """
import json, runpy, sys
for script, argv in json.loads(sys.argv[1]):
    runpy.run_path(script, run_name="__cli__")["main"](argv)
"""


def strip(*pixel_sets: set[int], width: int = 8) -> np.ndarray:
    """[N, 1, width] bool masks from sets of foreground columns (hand-made masks)."""
    out = np.zeros((len(pixel_sets), 1, width), dtype=bool)
    for k, pixels in enumerate(pixel_sets):
        out[k, 0, sorted(pixels)] = True
    return out


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory) -> str:
    """A tiny random BERT (word-level vocab of the toy captions) for GCG text similarity."""
    import torch
    from transformers import BertConfig, BertModel, BertTokenizer

    folder = tmp_path_factory.mktemp("tiny_bert")
    words = "[PAD] [UNK] [CLS] [SEP] [MASK] the a red green blue yellow circle circles square "
    words += "squares triangle triangles sky grass big small two three four and in of on front"
    (folder / "vocab.txt").write_text("\n".join(words.split()) + "\n")
    BertTokenizer(str(folder / "vocab.txt")).save_pretrained(folder)
    config = BertConfig(
        vocab_size=len(words.split()),
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=128,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        BertModel(config).save_pretrained(folder)
    return str(folder)


def run_cli(name: str, argv: Sequence[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """Run one CLI's `main(argv)` in this process: a single rank on CPU, one thread.

    One intra-op thread, like each torchrun worker gets: on a busy two-core machine more threads
    than free cores make every tiny op wait for a descheduled thread (10x slower here).
    """
    import torch

    monkeypatch.chdir(REPO)
    monkeypatch.setenv("ACCELERATE_USE_CPU", "1")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        runpy.run_path(str(CLI[name]), run_name="__cli__")["main"](list(argv))
    finally:
        torch.set_num_threads(threads)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def launch_two_ranks(runs: Sequence[tuple[str, Sequence[str]]], log: Path) -> None:
    """Run CLIs (name, argv) in order under one `accelerate launch` with two CPU processes.

    accelerate 0.34's `--cpu --num_processes 2` starts a single process, so this uses
    `--multi_gpu` with ACCELERATE_USE_CPU=1 (two torchrun workers on gloo), and every results
    file's `world_size` and `per_rank` counts are checked by the tests.
    """
    env = dict(os.environ, ACCELERATE_USE_CPU="1", CUDA_VISIBLE_DEVICES="", OMP_NUM_THREADS="1")
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    driver = log.with_suffix(".py")
    driver.write_text(_DRIVER)
    payload = json.dumps([(str(CLI[name]), list(argv)) for name, argv in runs])
    cmd = [
        sys.executable, "-m", "accelerate.commands.launch",
        "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
        "--mixed_precision", "no", "--dynamo_backend", "no",
        "--main_process_port", str(_free_port()),
        str(driver), payload,
    ]  # fmt: skip
    with open(log, "w") as out:
        proc = subprocess.run(cmd, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)
    if proc.returncode != 0:
        tail = log.read_text()[-4000:]
        raise AssertionError(f"accelerate launch failed ({proc.returncode}):\n{tail}")


def read_results(work_dir: str | Path, name: str) -> dict:
    with open(Path(work_dir) / f"{name}_results.json") as handle:
        return json.load(handle)


@pytest.fixture(scope="session")
def two_rank_runs(toy_root, golden_checkpoint, tmp_path_factory) -> Callable[[str], Path]:
    """Every rank-parallel CLI, run once on the toy set with two processes; returns the work dir
    of a run by name (png, refcoco, refcoco_concat, refcoco_share_splits, gcg_infer,
    reasonseg)."""
    root = tmp_path_factory.mktemp("two_ranks")
    common = ["--checkpoint", golden_checkpoint, "--data-root", toy_root]
    runs = {
        "png": ("png", []),
        "refcoco": ("refcoco", ["--val"]),  # one forward per expression: slower, val splits
        "refcoco_concat": ("refcoco", ["--concat", "--save-vis", "2"]),
        # whole images dealt to the ranks, RefCOCO and RefCOCO+ together
        "refcoco_share_splits": ("refcoco", ["--val", "--share-splits"]),
        "gcg_infer": ("gcg_infer", [*MAX_NEW_TOKENS, "--output-dir", str(root / "gcg_pred")]),
        "reasonseg": ("reasonseg", [*MAX_NEW_TOKENS, "--split", "val", "test"]),
    }
    launch_two_ranks(
        [
            (cli, [TINY_CONFIG, *common, "--work-dir", str(root / key), *extra])
            for key, (cli, extra) in runs.items()
        ],
        root / "launch.log",
    )
    return lambda key: root / key
