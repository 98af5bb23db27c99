"""The one evaluation loop every eval CLI runs through.

What it does, once for all benchmarks:
  - the command line every CLI shares (`eval_arg_parser`): CONFIG, --checkpoint, --unsafe-load,
    --num-workers, --data-root, --work-dir, --limit;
  - building the model from an mmengine config and loading the checkpoint (`load_model`);
  - sharding: rank r of w takes dataset indices r, r + w, r + 2w, ... (no sampler padding, so no
    sample is ever scored twice), or, where samples share an image, whole images dealt that way
    (`run_batches` / `run_together` with groups, batches of whole groups), on
    `accelerator.device`, in eval mode, under `torch.no_grad`;
  - gathering every rank's per-sample results with accelerate's `gather_object`, and checking
    that each index came back exactly once;
  - on rank 0: a printed table and `<work-dir>/<name>_results.json` holding the metrics, the
    per-dataset sample counts (also per rank) and how the run was made.

Launch with `accelerate launch SCRIPT CONFIG --checkpoint CKPT`. For several CPU processes on one
machine, accelerate 0.34 needs `ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu
--num_processes N ...`: its `--cpu --num_processes N` starts a single process.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from hg_lmm.evaluation.mask_metrics import EMPTY_TARGET
from hg_lmm.utils.files import write_json_atomic

logger = logging.getLogger(__name__)

DEFAULT_DATA_ROOT = "data/"


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1 (e.g. --limit: 0 or -1 would silently score nothing)."""
    return _int_at_least(text, 1)


def non_negative_int(text: str) -> int:
    """argparse type: an integer >= 0 (e.g. --save-vis: 0 writes no overlays)."""
    return _int_at_least(text, 0)


def _int_at_least(text: str, minimum: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < minimum:
        raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
    return value


def open_unit_interval(text: str) -> float:
    """argparse type: a float strictly between 0 and 1 (a mask threshold on probabilities)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not 0.0 < value < 1.0:
        raise argparse.ArgumentTypeError(
            f"must be strictly between 0 and 1 (a probability), got {value}"
        )
    return value


def eval_arg_parser(
    description: str | None, *, with_model: bool = True, work_dir: str | None = None
) -> argparse.ArgumentParser:
    """The arguments every eval CLI shares; a CLI adds its own flags to the returned parser.

    Arguments:
      description: the CLI's help text (its module docstring).
      with_model: add CONFIG, --checkpoint, --unsafe-load and --num-workers (False for CLIs
        that only score saved predictions).
      work_dir: the --work-dir default (shown in --help); None means work_dirs/<config name>,
        resolved by `EvalRunner`.
    """
    parser = argparse.ArgumentParser(
        description=description, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    if with_model:
        parser.add_argument("config", help="mmengine config that builds the model (cfg.model)")
        parser.add_argument(
            "--checkpoint", required=True, help=".pth/.safetensors file or DeepSpeed folder"
        )
        parser.add_argument(
            "--unsafe-load",
            action="store_true",
            help="allow a checkpoint that needs arbitrary unpickling (only for trusted files)",
        )
    parser.add_argument(
        "--data-root",
        default=DEFAULT_DATA_ROOT,
        help="root of the data tree of data/README.md (e.g. data/toy); default %(default)s",
    )
    parser.add_argument(
        "--work-dir",
        default=work_dir,
        help="where <name>_results.json goes; default "
        + ("%(default)s" if work_dir else "work_dirs/<config name>"),
    )
    parser.add_argument(
        "--limit",
        type=positive_int,
        default=None,
        help="score only the first N >= 1 samples of each dataset (smoke runs)",
    )
    if with_model:
        parser.add_argument("--num-workers", type=int, default=0, help="data-loading workers")
    return parser


def add_save_vis_argument(parser: argparse.ArgumentParser) -> None:
    """`--save-vis N`: the first N samples of each dataset as prediction-vs-ground-truth PNGs in
    `<work-dir>/vis/<dataset>/<index>.png` (`EvalRunner.vis_writer`)."""
    parser.add_argument(
        "--save-vis",
        type=non_negative_int,
        default=0,
        metavar="N",
        help="write the first N samples of each dataset as prediction-vs-ground-truth overlays "
        "to <work-dir>/vis/<dataset>/",
    )


def add_sharing_arguments(parser: argparse.ArgumentParser) -> None:
    """`--no-share` and `--batch-size N` (`EvalRunner.batch_size` resolves the default)."""
    parser.add_argument(
        "--no-share",
        action="store_true",
        help="run every caption through the whole model (vision tower, prompt, SAM encoder), as "
        "before; by default the samples of one image share that frozen work",
    )
    parser.add_argument(
        "--batch-size",
        type=positive_int,
        default=None,
        metavar="N",
        help="captions (shared) or samples (--no-share) per frozen forward; default 16 on a GPU; "
        "on CPU 2 captions per pass (shared), else all of one image's at once",
    )


def default_work_dir(config: str | None, fallback: str = "eval") -> str:
    """work_dirs/<config file stem> (xtuner/mmengine's convention), or work_dirs/<fallback>."""
    stem = Path(config).stem if config else fallback
    return os.path.join("work_dirs", stem)


def load_model(
    config: str,
    checkpoint: str | os.PathLike | None,
    *,
    unsafe: bool = False,
    device: torch.device | str | None = None,
) -> Any:
    """Build `cfg.model` of an mmengine config and load a checkpoint into it.

    Arguments:
      config: the config file.
      checkpoint: the trained state (ours, a released head, or a DeepSpeed folder); None only
        for plumbing checks with an untrained head.
      unsafe: allow checkpoints that need arbitrary unpickling (`--unsafe-load`).
      device: where the model goes.

    Returns:
      The model in eval mode. Raises `SystemExit` with the fix for a missing config or a
      checkpoint that does not fit.
    """
    if not os.path.isfile(config):
        raise SystemExit(f"config file {config!r} not found; pass a file under configs/")
    from mmengine.config import Config

    from hg_lmm.utils.build import build
    from hg_lmm.utils.checkpoint import CheckpointError, load_state

    cfg = Config.fromfile(config)
    if "model" not in cfg:
        raise SystemExit(f"{config} has no `model`; evaluation builds cfg.model")
    model = build(cfg.model)
    # What is known of a released checkpoint whose layout no reference code pins (the config's
    # `checkpoint_note`): shown with any failed load, and as a warning after a good one.
    note = cfg.get("checkpoint_note")
    if checkpoint is not None:
        try:
            report = load_state(model, checkpoint, strict=True, unsafe=unsafe)
        except CheckpointError as error:
            known = f"\nAbout checkpoints of {config}: {note}" if note else ""
            raise SystemExit(f"cannot evaluate {checkpoint}: {error}{known}") from error
        logger.info("loaded %s: %s", checkpoint, report)
        if note:
            logger.warning("%s loaded, but note for %s: %s", checkpoint, config, note)
    else:
        logger.warning("no checkpoint: evaluating an untrained head")
    if device is not None:
        model = model.to(device)
    return model.eval()


def check_output_dir(path: str | os.PathLike, flag: str) -> Path:
    """Create `path` and check it is writable, or exit naming it and `flag` (at start-up)."""
    from hg_lmm.utils.files import NotWritableError, require_writable_dir

    try:
        return require_writable_dir(path, flag)
    except NotWritableError as error:
        raise SystemExit(str(error)) from error


def _identity(sample: Any) -> Any:
    return sample


def _json_safe(value: Any) -> Any:
    """NaN (an empty group, e.g. no plural phrase) becomes null so the file is strict JSON."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, Mapping):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def format_table(metrics: Mapping[str, Mapping[str, float | None]]) -> str:
    """Rows = datasets, columns = metric names (in first-seen order), 4 decimals."""
    columns: list[str] = []
    for row in metrics.values():
        columns += [c for c in row if c not in columns]
    header = ["dataset", *columns]
    lines = [header]
    for name, row in metrics.items():
        cells = [name]
        for column in columns:
            value = row.get(column)
            if value is None or (isinstance(value, float) and math.isnan(value)):
                cells.append("-")
            elif isinstance(value, float):
                cells.append(f"{value:.4f}")
            else:
                cells.append(str(value))
        lines.append(cells)
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    text = ["  ".join(c.ljust(w) for c, w in zip(line, widths)).rstrip() for line in lines]
    return "\n".join(text)


def write_report(
    work_dir: str | os.PathLike,
    name: str,
    metrics: Mapping[str, Mapping[str, Any]],
    **extra: Any,
) -> Path:
    """Print the metrics table, then write `<work_dir>/<name>_results.json` (atomically).

    Arguments:
      work_dir: output folder (created).
      name: the benchmark ("png", "refcoco", "gcg", "reasonseg").
      metrics: dataset name -> metric name -> value.
      **extra: more JSON-safe fields (counts, config, checkpoint...).

    Returns:
      The path of the results file.
    """
    # The table first: if the file cannot be written, the numbers are on screen all the same.
    print(format_table(metrics), flush=True)
    path = Path(work_dir) / f"{name}_results.json"
    try:
        write_json_atomic(path, _json_safe({"name": name, "metrics": metrics, **extra}), indent=2)
    except OSError as error:
        raise SystemExit(
            f"could not write {path} ({error}); the metrics are printed above. Pass a writable "
            "--work-dir"
        ) from error
    print(f"results written to {path}", flush=True)
    return path


class EvalRunner:
    """Model, accelerator and the sharded, gathered evaluation loop of one CLI run.

    Arguments:
      args: parsed `eval_arg_parser` arguments.
      name: the benchmark name; results go to `<work-dir>/<name>_results.json`.
      load: build and load the model now (False for CLIs that bring their own).
    """

    def __init__(self, args: argparse.Namespace, name: str, *, load: bool = True) -> None:
        from accelerate import Accelerator

        self.accelerator = Accelerator()
        self.args = args
        self.name = name
        logging.basicConfig(
            level=logging.INFO if self.is_main else logging.WARNING,
            format=f"[rank {self.rank}] %(levelname)s %(name)s: %(message)s",
        )
        config = getattr(args, "config", None)
        self.work_dir = Path(args.work_dir or default_work_dir(config))
        if self.is_main:  # before any work: a run must not end in a failed write
            check_output_dir(self.work_dir, "--work-dir")
        self.counts: dict[str, dict[str, Any]] = {}
        self.model: Any = None
        if load:
            self.model = load_model(
                config,
                args.checkpoint,
                unsafe=getattr(args, "unsafe_load", False),
                device=self.accelerator.device,
            )

    @property
    def batch_size(self) -> int | None:
        """`--batch-size`, or `default_batch_size` of this run's device."""
        given = getattr(self.args, "batch_size", None)
        return given if given is not None else default_batch_size(self.accelerator.device)

    @property
    def share(self) -> bool:
        """Whether the samples of one image share its frozen work (not `--no-share`)."""
        return not getattr(self.args, "no_share", False)

    @property
    def rank(self) -> int:
        return self.accelerator.process_index

    @property
    def world_size(self) -> int:
        return self.accelerator.num_processes

    @property
    def is_main(self) -> bool:
        return self.accelerator.is_main_process

    def vis_writer(self, dataset_name: str, index: int) -> Callable[..., Path] | None:
        """The overlay writer of sample `index` when `--save-vis` asks for it, else None.

        Call it as `writer(image, pred, target, labels, title=None)` with [n, H, W] bool masks;
        it writes `<work-dir>/vis/<dataset>/<index>.png`. Whichever rank scores a sample draws
        it, so the files are the same for any number of processes.
        """
        if index >= getattr(self.args, "save_vis", 0):
            return None

        def write(
            image: Any, pred: Any, target: Any, labels: Sequence[str], title: str | None = None
        ) -> Path:
            from hg_lmm.utils.overlay import compare_overlay

            path = self.work_dir / "vis" / dataset_name / f"{index:05d}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            compare_overlay(image, pred, target, labels, title=title).save(path)
            return path

        return write

    def shard(self, num_samples: int, groups: Sequence[Any] | None = None) -> list[int]:
        """This rank's dataset indices: rank, rank + world, ... (disjoint, covering all).

        With `groups` (one key per index, e.g. its image), whole groups are dealt out instead:
        groups in order of their first index, group j to rank j % world, so that the samples
        that share an image meet in one process; the indices come group after group.
        """
        if groups is None:
            return list(range(self.rank, num_samples, self.world_size))
        return [i for group in _groups(groups[:num_samples])[self.rank :: self.world_size]
                for i in group]  # fmt: skip

    def run(self, dataset_name: str, dataset: Any, step: Callable[[int, Any], Any]) -> list[Any]:
        """Apply `step(index, sample)` to every sample of `dataset`, sharded over the ranks.

        Arguments:
          dataset_name: names the dataset in the progress bar, the counts and errors.
          dataset: a map-style dataset.
          step: scores one sample; returns a picklable result (a record, a list of records, a
            status...). It runs under `torch.no_grad`.

        Returns:
          On every rank, all results in dataset-index order (gathered from every rank).
        """
        return self.run_batches(
            dataset_name, dataset, lambda indices, samples: [step(indices[0], samples[0])]
        )

    def run_batches(
        self,
        dataset_name: str,
        dataset: Any,
        step: Callable[[list[int], list[Any]], list[Any]],
        *,
        batch_size: int = 1,
        groups: Sequence[Any] | None = None,
    ) -> list[Any]:
        """`run` with `step(indices, samples)` scoring a batch, one result per sample.

        A batch holds whole groups (`groups`: one key per dataset index, e.g. the image; None:
        every sample its own group) up to `batch_size` samples, or one larger group alone; the
        ranks are dealt whole groups (`shard`). Results come back in dataset-index order
        whatever the batching, the grouping and the number of processes.
        """
        num_samples = self._num_samples(dataset)
        results, ranks = self._run(dataset_name, dataset, step, num_samples, batch_size, groups)
        self._record_counts(dataset_name, results, ranks)
        return results

    def run_together(
        self,
        datasets: Mapping[str, Any],
        step: Callable[[list[tuple[str, int]], list[Any]], list[Any]],
        *,
        groups: Mapping[str, Sequence[Any]],
        batch_size: int = 1,
    ) -> dict[str, list[Any]]:
        """`run_batches` over several datasets at once, grouped across them (e.g. RefCOCO and
        RefCOCO+, whose images are the same): a group (`groups[name]`: one key per index of
        that dataset) gathers the samples of every dataset that share its key, so each image's
        frozen work is done once for all of them. `step(keys, samples)` gets (dataset name,
        index) keys. Returns per dataset its results in index order (counts recorded per
        dataset, as `run` does).
        """
        keys = []
        for name, dataset in datasets.items():
            keys += [(name, i) for i in range(self._num_samples(dataset))]
        joined = _Joined(datasets, keys)
        joint_groups = [groups[name][i] for name, i in keys]
        label = "+".join(datasets)
        results, ranks = self._run(
            label, joined, lambda idx, samples: step([keys[i] for i in idx], samples),
            len(keys), batch_size, joint_groups,
        )  # fmt: skip
        out: dict[str, list[Any]] = {name: [] for name in datasets}
        per: dict[str, list[int]] = {name: [] for name in datasets}
        for (name, _), result, rank in zip(keys, results, ranks):
            out[name].append(result)
            per[name].append(rank)
        for name in datasets:
            self._record_counts(name, out[name], per[name])
        return out

    def _num_samples(self, dataset: Any) -> int:
        if self.args.limit is None:
            return len(dataset)
        return min(len(dataset), self.args.limit)

    def _run(
        self,
        dataset_name: str,
        dataset: Any,
        step: Callable[[list[int], list[Any]], list[Any]],
        num_samples: int,
        batch_size: int,
        groups: Sequence[Any] | None,
    ) -> tuple[list[Any], list[int]]:
        """(results, the rank that scored each) in index order, gathered from every rank."""
        from accelerate.utils import gather_object
        from torch.utils.data import DataLoader, Subset
        from tqdm import tqdm

        if groups is not None and len(groups) < num_samples:
            raise ValueError(f"{dataset_name}: {len(groups)} group keys for {num_samples} samples")
        indices = self.shard(num_samples, groups)
        loader = DataLoader(
            Subset(dataset, indices),
            batch_size=None,
            collate_fn=_identity,
            num_workers=self.args.num_workers,
        )
        local: list[tuple[int, int, Any]] = []
        bar = tqdm(total=len(indices), desc=dataset_name, disable=not self.is_main)
        batches = iter(_batches(indices, groups, batch_size))
        batch, samples = next(batches, []), []
        with torch.no_grad():
            for sample in loader:
                samples.append(sample)
                if len(samples) < len(batch):
                    continue
                scored = step(list(batch), samples)
                if len(scored) != len(batch):
                    raise RuntimeError(
                        f"{dataset_name}: the step returned {len(scored)} results for "
                        f"{len(batch)} samples; it must return one per sample"
                    )
                local += [(i, self.rank, r) for i, r in zip(batch, scored)]
                bar.update(len(batch))
                batch, samples = next(batches, []), []
        bar.close()
        gathered = gather_object(local) if self.world_size > 1 else local
        self._check_coverage(dataset_name, [index for index, _, _ in gathered], num_samples)
        gathered.sort(key=lambda item: item[0])
        return [r for _, _, r in gathered], [rank for _, rank, _ in gathered]

    def _record_counts(
        self, dataset_name: str, results: Sequence[Any], ranks: Sequence[int]
    ) -> None:
        if getattr(self.args, "save_vis", 0) and self.is_main:
            folder = self.work_dir / "vis" / dataset_name
            count = min(self.args.save_vis, len(results))
            logger.info("%s: overlays of the first %d samples in %s", dataset_name, count, folder)
        per_rank = [0] * self.world_size
        for rank in ranks:
            per_rank[rank] += 1
        self.counts[dataset_name] = {
            "samples": len(results),
            "records": sum(len(r) if isinstance(r, list) else 1 for r in results),
            "per_rank": per_rank,
        }
        self._count_empty_targets(dataset_name, results)

    def _count_empty_targets(self, dataset_name: str, results: Sequence[Any]) -> None:
        """Log (and record in the counts) how many scored records had an empty target."""
        records = [r for part in results for r in (part if isinstance(part, list) else [part])]
        empty = sum(bool(getattr(r, "meta", {}).get(EMPTY_TARGET)) for r in records)
        if empty:
            self.counts[dataset_name]["empty_targets"] = empty
            if self.is_main:
                logger.warning(
                    "%s: %d of %d ground-truth masks are empty; they are scored by the metric's "
                    "rule for an empty target (README, 'Failure modes')",
                    dataset_name,
                    empty,
                    len(records),
                )

    @staticmethod
    def _check_coverage(dataset_name: str, indices: Sequence[int], num_samples: int) -> None:
        times = Counter(indices)
        repeated = sorted(i for i, n in times.items() if n > 1)
        missing = sorted(set(range(num_samples)) - set(times))
        if repeated or missing:
            raise RuntimeError(
                f"{dataset_name}: the gathered results do not cover each sample exactly once "
                f"(repeated {repeated[:10]}, missing {missing[:10]}); every rank must run the "
                "same dataset with the same --limit"
            )

    def report(self, metrics: Mapping[str, Mapping[str, Any]], **extra: Any) -> Path | None:
        """On rank 0, print the table and write the results JSON; all ranks wait for it."""
        path = None
        if self.is_main:
            path = write_report(
                self.work_dir,
                self.name,
                metrics,
                counts=self.counts,
                world_size=self.world_size,
                config=getattr(self.args, "config", None),
                checkpoint=getattr(self.args, "checkpoint", None),
                data_root=self.args.data_root,
                limit=self.args.limit,
                **extra,
            )
        self.accelerator.wait_for_everyone()
        return path


class _Joined:
    """Several map-style datasets seen as one, through (dataset name, index) keys."""

    def __init__(self, datasets: Mapping[str, Any], keys: Sequence[tuple[str, int]]) -> None:
        self.datasets, self.keys = datasets, keys

    def __len__(self) -> int:
        return len(self.keys)

    def __getitem__(self, i: int) -> Any:
        name, index = self.keys[i]
        return self.datasets[name][index]


def _groups(keys: Sequence[Any]) -> list[list[int]]:
    """Indices grouped by key, groups in order of their first index."""
    out: dict[Any, list[int]] = {}
    for i, key in enumerate(keys):
        out.setdefault(key, []).append(i)
    return list(out.values())


def _batches(
    indices: Sequence[int], groups: Sequence[Any] | None, batch_size: int
) -> Iterator[list[int]]:
    """Consecutive runs of `indices` holding whole groups, up to `batch_size` samples each (a
    larger group alone)."""
    runs: list[list[int]] = []
    for i in indices:
        if runs and groups is not None and groups[runs[-1][-1]] == groups[i]:
            runs[-1].append(i)
        else:
            runs.append([i])
    batch: list[int] = []
    for run in runs:
        if batch and len(batch) + len(run) > batch_size:
            yield batch
            batch = []
        batch += run
    if batch:
        yield batch


def default_batch_size(device: torch.device | str) -> int | None:
    """`--batch-size` when none is given: 16 captions per frozen pass on a GPU; on CPU, where
    batching gains little (README "Performance"), None: the scoring functions' own defaults (2
    captions per pass over a shared prompt, `benchmarks.CAPTIONS_PER_PASS`; without sharing,
    all of one image's samples in one forward; images one at a time)."""
    return 16 if torch.device(device).type == "cuda" else None


def make_tokenize(model: Any) -> Any:
    """The training tokenization (prompt + caption pieces) for `model`'s LMM adapter, keeping
    every phrase: evaluation scores them all (empty targets included, see README "Failure
    modes"), where training drops those it cannot learn from."""
    from hg_lmm.datasets import TokenizePieces

    return TokenizePieces(
        tokenizer=model.lmm.tokenizer, prompt=model.lmm.train_prompt, drop_ungroundable=False
    )


def flatten(results: Sequence[Sequence[Any]]) -> list[Any]:
    """Concatenate per-sample result lists (e.g. the records of each sample)."""
    return [item for part in results for item in part]


__all__ = [
    "DEFAULT_DATA_ROOT",
    "EvalRunner",
    "add_save_vis_argument",
    "add_sharing_arguments",
    "check_output_dir",
    "default_batch_size",
    "default_work_dir",
    "eval_arg_parser",
    "flatten",
    "format_table",
    "load_model",
    "make_tokenize",
    "non_negative_int",
    "open_unit_interval",
    "positive_int",
    "write_report",
]
