"""Benchmark the frozen-LMM feature paths and a training step at the real shapes of an LMM.

    python scripts/benchmark.py --lmm deepseek-vl-1.3b         # random weights (built once)
    python scripts/benchmark.py --lmm llava-1.5-7b --model-path checkpoints/llava-1.5-7b-hf

Runs on CPU, or unchanged on a GPU (`--device cuda`, the default when one is present). Items,
timed interleaved (every item once per repeat, `--repeats` times; min and median reported):

  vision          `encode_images` of one image (tower + projector), shared by every path
  decoder         plain SDPA decoder forward of one sample, no LM head: the floor
  decoder_rows    the same forward under `RowCapture` (the LLM pass of `features()`)
  features        `adapter.features()`: vision + decoder with row capture
  features_eager  the reference path (`eager_features=True`): eager decoder with every attention
                  map and hidden state, and the LM head (what `features()` did before)
  frozen_B        `extract_batch` of the B samples: one vision and one decoder pass for all
                  (its speed-up is B x features over it)
  train_1/train_B one training step (frozen features of the batch, then the HG head and loss per
                  sample, backward) with 1 and with B samples; its breakdown: vision, decoder,
                  head forward, loss and the rest, backward (with the head's recomputation)
  train_1_ref/... the same step the reference way (eager features one by one, every sample's
                  head graph kept until the backward); timed in the first repeat only
  generate        plain greedy `generate` (preprocess, vision, prompt, new tokens)
  answer          `adapter.answer()` over the same tokens (features recorded while generating)
  eval_*_{hg,unet_sam}  RefCOCO-like evaluation (`--items eval` selects these six) of K images
                  (`--eval-images`), expressions per image drawn around `--refs-per-image`
                  (hg_lmm.testing.res_workload), with the HG head and with the U-Net+SAM head
                  (SAM ViT-L, random weights): `eval_loop` scores each image as before
                  (`refseg_batch(share=False)`: every expression runs vision, prompt and SAM),
                  `eval_shared` shares the image's frozen work between its expressions,
                  `eval_splits` scores RefCOCO and RefCOCO+ of the same images together. Reported
                  per expression, with peaks and the projected time of the eight RES splits

Peak memory is measured after the timing (`--no-memory` skips it) in a fresh process that
loads the model again, runs features, train_1 and generate once (first calls create lasting
state, such as oneDNN's packed weights on CPU), then every item once, each above what was
allocated when it started: on GPU `torch.cuda.max_memory_allocated`; on CPU the resident
high-water mark (VmHWM, reset through /proc/self/clear_refs before each item) above the
resident size at the reset, with glibc's mmap threshold fixed at 64 KiB from the process's
start, so that a freed tensor leaves the resident set at once (the timing process keeps the
default allocator). Prints a table and writes JSON (`--out`, peaks also in `*.peaks.json`).
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from hg_lmm.heads.hg import HGHead
from hg_lmm.lmm.capture import RowCapture
from hg_lmm.lmm.processors import letterbox_meta
from hg_lmm.model import GroundingModel
from hg_lmm.testing.real_shapes import NAMES, load_adapter, random_lmm_folder

QUESTION = "What is in the image?"
IMAGE_HW = (480, 640)  # a landscape photo: the letterbox pads top and bottom
MIB = 2**20


# --- measuring ------------------------------------------------------------------------------


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class PeakMemory:
    """Peak memory of a block above what was in use when it started, in bytes (None if this
    platform offers no way to measure it)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.libc = None
        if device.type != "cuda" and platform.system() == "Linux":
            try:
                self.libc = ctypes.CDLL("libc.so.6")
                open("/proc/self/clear_refs", "w").close()
            except OSError:
                self.libc = None

    def prepare(self) -> None:
        """Route every allocation of 64 KiB or more through mmap from now on (CPU), so that a
        freed tensor is returned to the system at once instead of staying resident in the
        heap, where the next item would reuse it unseen."""
        if self.libc is not None:
            m_mmap_threshold = -3
            self.libc.mallopt(m_mmap_threshold, 64 * 1024)

    @staticmethod
    def _status(key: str) -> int:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key):
                    return int(line.split()[1]) * 1024
        raise RuntimeError(f"no {key} in /proc/self/status")

    @contextmanager
    def measure(self) -> Iterator[dict[str, int | None]]:
        result: dict[str, int | None] = {"peak": None}
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            base = torch.cuda.memory_allocated(self.device)
            yield result
            torch.cuda.synchronize(self.device)
            result["peak"] = torch.cuda.max_memory_allocated(self.device) - base
            return
        if self.libc is None:
            yield result
            return
        self.libc.malloc_trim(0)
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM to the current resident size
        base = self._status("VmRSS:")
        yield result
        result["peak"] = self._status("VmHWM:") - base


@dataclass
class Item:
    """One measured call. `once`: timed in the first repeat only (slow reference paths)."""

    name: str
    run: Callable[[], Any]
    once: bool = False
    expressions: int | None = None  # evaluation items: expressions scored per call
    times: list[float] = field(default_factory=list)  # wall seconds
    cpu_times: list[float] = field(default_factory=list)  # process CPU seconds (CPU runs)
    peak: float | None = None  # MiB
    breakdowns: list[dict[str, float]] = field(default_factory=list)


class StepTimer:
    """Splits a training step into vision, decoder, head forward, the rest of the forward, and
    the backward (which includes the head's recomputation, also given alone), with hooks on the
    adapter's parts and the head (synchronising on GPU)."""

    def __init__(self, model: GroundingModel, device: torch.device) -> None:
        self.model, self.device = model, device
        self.spent: dict[str, float] = {}
        self._start: dict[str, float] = {}
        self._phase = "forward"

    def _clock(self) -> float:
        """Wall seconds on GPU; process CPU seconds on CPU (what other jobs on a shared machine
        do not inflate)."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            return time.perf_counter()
        return time.process_time()

    def _enter(self, key: str) -> None:
        self._start[key] = self._clock()

    def _leave(self, key: str) -> None:
        self.spent[key] = self.spent.get(key, 0.0) + self._clock() - self._start.pop(key)

    @contextmanager
    def hooks(self) -> Iterator[None]:
        adapter = self.model.lmm
        decoder = adapter.language_model.get_decoder()
        encode = adapter.encode_images

        def timed_encode(pixel_values: torch.Tensor) -> Any:
            self._enter("vision")
            try:
                return encode(pixel_values)
            finally:
                self._leave("vision")

        def head_key() -> str:  # the backward recomputes the head: part of the backward
            return "head_forward" if self._phase == "forward" else "head_recompute"

        handles = [
            decoder.register_forward_pre_hook(lambda *_: self._enter("decoder")),
            decoder.register_forward_hook(lambda *_: self._leave("decoder")),
            self.model.head.register_forward_pre_hook(lambda *_: self._enter(head_key())),
            self.model.head.register_forward_hook(lambda *_: self._leave(head_key())),
        ]
        adapter.encode_images = timed_encode
        try:
            yield
        finally:
            del adapter.encode_images
            for h in handles:
                h.remove()

    def step(self, batch: list[dict]) -> dict[str, float]:
        self.spent = {}
        model = self.model
        model.train()
        model.zero_grad(set_to_none=True)
        with self.hooks():
            self._phase = "forward"
            tik = self._clock()
            losses = model(batch, mode="loss")
            total = sum(v for k, v in losses.items() if "loss" in k)
            mid = self._clock()
            self._phase = "backward"
            total.backward()
            end = self._clock()
        parts = {k: self.spent.get(k, 0.0) for k in ("vision", "decoder", "head_forward")}
        parts["loss_and_rest"] = mid - tik - sum(parts.values())
        parts["backward"] = end - mid
        parts["head_recompute"] = self.spent.get("head_recompute", 0.0)  # within the backward
        return parts


# --- inputs ---------------------------------------------------------------------------------


def make_samples(adapter: Any, args: argparse.Namespace, count: int) -> list[dict]:
    """`count` training samples: the training prompt, then a caption of ordinary tokens that
    brings the text to `--text-tokens`, in `--phrases` phrases; random pixels and masks."""
    tok = adapter.tokenizer
    prompt = tok(adapter.train_prompt).input_ids
    text_in_prompt = len(prompt) - prompt.count(adapter.image_token_id)  # LLaVA: one <image>
    caption_len = args.text_tokens - text_in_prompt
    if caption_len < args.phrases:
        raise SystemExit(
            f"--text-tokens {args.text_tokens} leaves {caption_len} caption tokens after the "
            f"{text_in_prompt} text tokens of the prompt; it needs at least --phrases "
            f"({args.phrases})"
        )
    words = tok.encode(
        " the red circle on the left and the blue square above the grass", add_special_tokens=False
    )
    caption = [words[i % len(words)] for i in range(caption_len)]
    phrase = torch.arange(caption_len) * args.phrases // caption_len
    size, (h, w) = adapter.dims.image_size, IMAGE_HW
    gen = torch.Generator().manual_seed(0)
    samples = []
    for i in range(count):
        masks = torch.zeros(args.phrases, h, w, dtype=torch.bool)
        for k in range(args.phrases):
            top, left = (37 * (k + i)) % (h // 2), (53 * (k + i)) % (w // 2)
            masks[k, top : top + h // 3, left : left + w // 3] = True
        samples.append(
            {
                "input_ids": torch.tensor(prompt + caption),
                "mask_ids": torch.cat([torch.full((len(prompt),), -1), phrase]),
                "caption_start": len(prompt),
                "pixel_values": torch.randn(3, size, size, generator=gen),
                "meta": letterbox_meta(round(size * h / w), size, size),
                "masks": masks,
                "image_hw": IMAGE_HW,
            }
        )
    return samples


@contextmanager
def eager_reference(adapter: Any) -> Iterator[None]:
    before = adapter.eager_features
    adapter.eager_features = True
    try:
        yield
    finally:
        adapter.eager_features = before


# --- the items ------------------------------------------------------------------------------


def build_items(adapter: Any, args: argparse.Namespace, device: torch.device) -> list[Item]:
    dtype = adapter.dtype
    head = HGHead(dims=adapter.dims).to(device, getattr(torch, args.head_dtype))
    model = GroundingModel(lmm=adapter, head=head)
    reference = GroundingModel(lmm=adapter, head=head, checkpoint_head=False)
    timer, ref_timer = StepTimer(model, device), StepTimer(reference, device)
    samples = make_samples(adapter, args, args.batch)
    for s in samples:
        s["pixel_values"] = s["pixel_values"].to(device)
        s["masks"] = s["masks"].to(device)
    one = samples[0]
    ids, query = one["input_ids"], torch.arange(one["caption_start"], len(one["input_ids"]))
    pixels = one["pixel_values"].to(device, dtype)[None]
    decoder = adapter.language_model.get_decoder()
    with torch.no_grad():
        embeds = adapter.embed_inputs(ids.to(device), adapter.encode_image(pixels)[0])
    rows = embeds.token_positions[query][None]
    image = Image.new("RGB", IMAGE_HW[::-1], (90, 120, 200))

    @torch.no_grad()
    def plain_decoder() -> Any:
        return decoder(inputs_embeds=embeds.embeds, use_cache=False, return_dict=True)

    @torch.no_grad()
    def decoder_rows() -> Any:
        with RowCapture(
            decoder, rows=rows, columns=embeds.image_positions[None], release_cache=True
        ) as cap:
            decoder(inputs_embeds=embeds.embeds, use_cache=True, return_dict=True)
        return cap.attn, cap.hidden

    @torch.no_grad()
    def vision() -> Any:
        return adapter.encode_images(pixels)

    def features_eager() -> Any:
        with eager_reference(adapter):
            return adapter.features(ids, one["pixel_values"], query)

    def step(t: StepTimer, batch: list[dict], item: str, eager: bool) -> Any:
        with eager_reference(adapter) if eager else _nothing():
            parts = t.step(batch)
        found[item].breakdowns.append(parts)

    generated: dict[str, torch.Tensor] = {}

    def generate() -> torch.Tensor:
        pixel_values, _ = adapter.preprocess(image)
        ids = torch.tensor(adapter.tokenizer(adapter.chat_prompt(QUESTION)).input_ids)
        generated["ids"] = adapter.generate_ids(ids, pixel_values, args.new_tokens)
        return generated["ids"]

    def answer() -> Any:
        ans = adapter.answer(image, QUESTION, max_new_tokens=args.new_tokens)
        if "ids" in generated and not torch.equal(ans.token_ids, generated["ids"]):
            raise RuntimeError("answer() and generate produced different tokens")
        return ans

    b = args.batch
    items = [
        Item("vision", vision),
        Item("decoder", plain_decoder),
        Item("decoder_rows", decoder_rows),
        Item("features", lambda: adapter.features(ids, one["pixel_values"], query)),
        Item("features_eager", features_eager),
        Item("train_1", lambda: step(timer, samples[:1], "train_1", False)),
        Item(f"frozen_{b}", lambda: adapter.extract_batch(samples, dtype=None)),
        Item(f"train_{b}", lambda: step(timer, samples, f"train_{b}", False)),
        Item("train_1_ref", lambda: step(ref_timer, samples[:1], "train_1_ref", True), once=True),
        Item(f"train_{b}_ref", lambda: step(ref_timer, samples, f"train_{b}_ref", True), once=True),
        Item("generate", generate),
        Item("answer", answer),
    ]
    found = {it.name: it for it in items}
    wanted = set(args.items or [])
    if "eval" in wanted:
        wanted |= set(EVAL_ITEMS)
    items = [it for it in items if not wanted or it.name in wanted]
    if not wanted or wanted & set(EVAL_ITEMS):
        items += [
            it for it in eval_items(adapter, model, args, device) if not wanted or it.name in wanted
        ]
    return items


# --- evaluation items -----------------------------------------------------------------------

EVAL_ITEMS = [
    f"eval_{mode}_{head}" for head in ("hg", "unet_sam") for mode in ("loop", "shared", "splits")
]


def eval_items(
    adapter: Any, hg_model: GroundingModel, args: argparse.Namespace, device: torch.device
) -> list[Item]:
    """The RefCOCO-like evaluation items of both heads (see the module docstring)."""
    from hg_lmm.evaluation.benchmarks import refseg_batch
    from hg_lmm.evaluation.runner import make_tokenize
    from hg_lmm.heads.unet_sam import SAMRefiner, UNetSAMHead, build_sam
    from hg_lmm.testing.res_workload import res_workload

    if args.lmm.startswith("tiny"):
        from hg_lmm.testing.tiny_sam import tiny_sam

        sam = tiny_sam()
    else:
        sam = build_sam(variant="vit_l")  # random weights at SAM ViT-L's shapes
    head = UNetSAMHead(dims=adapter.dims, sam=SAMRefiner(model=sam))
    models = {
        "hg": hg_model,
        "unet_sam": GroundingModel(
            lmm=adapter, head=head.to(device, getattr(torch, args.head_dtype))
        ),
    }
    work = res_workload(
        adapter.tokenizer, num_images=args.eval_images, mean_refs=args.refs_per_image
    )
    refcoco, plus = work["refcoco"], work["refcoco+"]
    tokenize = make_tokenize(hg_model)
    expressions = [s.num_masks for s in refcoco]
    print(f"evaluation workload: {len(refcoco)} images, expressions per image {expressions} "
          f"(RefCOCO) and {[s.num_masks for s in plus]} (RefCOCO+)", flush=True)  # fmt: skip

    def score(model: GroundingModel, groups: list[list[Any]], share: bool) -> None:
        model.eval()
        with torch.no_grad():
            for group in groups:  # one image (one sample per split) at a time, as the CLI
                refseg_batch(
                    model, list(range(len(group))), group, tokenize=tokenize, concat=False,
                    share=share, batch_size=args.eval_batch_size if share else None,
                )  # fmt: skip

    per_split = [[s] for s in refcoco]
    together = [[a, b] for a, b in zip(refcoco, plus)]
    n_one, n_two = sum(expressions), sum(s.num_masks for s in refcoco + plus)
    items = []
    for name, model in models.items():
        items += [
            Item(f"eval_loop_{name}", partial(score, model, per_split, False), expressions=n_one),
            Item(f"eval_shared_{name}", partial(score, model, per_split, True), expressions=n_one),
            Item(f"eval_splits_{name}", partial(score, model, together, True), expressions=n_two),
        ]
    return items


def eval_summary(out: dict[str, Any], items: list[Item]) -> dict[str, Any]:
    """Per head: seconds per expression (min wall and CPU), the shared paths over the loop
    (time per expression, peak), and the projected hours of the eight RES splits."""
    from hg_lmm.testing.res_workload import RES_SPLIT_SIZES

    per = {it.name: it.expressions for it in items if it.expressions}
    summary: dict[str, Any] = {}
    for head in ("hg", "unet_sam"):
        names = {mode: f"eval_{mode}_{head}" for mode in ("loop", "shared", "splits")}
        if not all(n in out and out[n]["wall_s"] for n in names.values()):
            continue
        seconds = {
            clock: {m: out[n][clock]["min"] / per[n] for m, n in names.items()}
            for clock in ("wall_s", "cpu_s")
            if all(out[n][clock] for n in names.values())
        }
        wall = seconds["wall_s"]
        peaks = {m: out[n]["peak_mib"] for m, n in names.items()}
        refs = {name: r for name, (_, r) in RES_SPLIT_SIZES.items()}
        paired = sum(r for name, r in refs.items() if not name.startswith("refcocog"))
        g = sum(r for name, r in refs.items() if name.startswith("refcocog"))
        summary[head] = {
            "seconds_per_expression": seconds,
            "time_per_expression_ratio": {
                clock: {
                    "shared / loop": v["shared"] / v["loop"],
                    "splits together / loop": v["splits"] / v["loop"],
                }
                for clock, v in seconds.items()
            },
            "peak_mib": peaks,
            "peak_ratio": {
                "shared / loop": _div(peaks["shared"], peaks["loop"]),
                "splits together / loop": _div(peaks["splits"], peaks["loop"]),
            },
            # Expressions of the eight splits times the measured seconds per expression (wall);
            # "splits together": RefCOCO with RefCOCO+ at that rate, RefCOCOg shared per split.
            "projected_8_splits_hours": {
                "loop": (paired + g) * wall["loop"] / 3600,
                "shared": (paired + g) * wall["shared"] / 3600,
                "splits together": (paired * wall["splits"] + g * wall["shared"]) / 3600,
            },
        }
    return summary


def _div(a: float | None, b: float | None) -> float | None:
    return None if a is None or not b else a / b


@contextmanager
def _nothing() -> Iterator[None]:
    yield


def time_items(items: list[Item], args: argparse.Namespace, device: torch.device) -> None:
    """Every item once per repeat, in order (interleaved), `--repeats` times."""
    for r in range(args.repeats):
        for it in items:
            if it.once and r > 0:
                continue
            _sync(device)
            tik, cpu = time.perf_counter(), time.process_time()
            it.run()
            _sync(device)
            it.times.append(time.perf_counter() - tik)
            if device.type != "cuda":
                it.cpu_times.append(time.process_time() - cpu)
            print(f"[repeat {r + 1}/{args.repeats}] {it.name}: {it.times[-1]:.3f} s", flush=True)


# First calls create lasting state (e.g. oneDNN's packed copies of the weights on CPU, one per
# weight, about the model's size): the memory worker runs these once before measuring.
WARM_UP = ("features", "train_1", "generate", "eval_shared_hg", "eval_shared_unet_sam")


def measure_peaks(items: list[Item], memory: PeakMemory) -> dict[str, float | None]:
    """Peak MiB of each item, after a warm-up (in the memory worker)."""
    warm = [it for it in items if it.name in WARM_UP] or items[:1]
    for it in warm:
        it.run()
    peaks = {}
    for it in items:
        with memory.measure() as m:
            it.run()
        peaks[it.name] = None if m["peak"] is None else m["peak"] / MIB
        print(f"[memory] {it.name}: {peaks[it.name]} MiB", flush=True)
    return peaks


def peaks_in_subprocess(argv: list[str], out: Path) -> dict[str, float | None]:
    """Run the memory worker (this script with --memory-worker) in a fresh process, whose
    allocator is set up before the model loads, and read its peaks."""
    cmd = [sys.executable, str(Path(__file__).resolve()), *argv, "--memory-worker", str(out)]
    print(f"\npeak memory, in a fresh process: {' '.join(cmd)}", flush=True)
    result = subprocess.run(cmd)
    if result.returncode != 0:
        raise SystemExit(f"the memory worker failed (exit {result.returncode}); see above")
    return json.loads(out.read_text())


# --- report ---------------------------------------------------------------------------------


def _stats(values: list[float]) -> dict[str, float] | None:
    if not values:
        return None
    return {"min": min(values), "median": statistics.median(values)}


def summarise(items: list[Item], args: argparse.Namespace) -> dict[str, Any]:
    """Per item: wall (and CPU) seconds, min and median over the repeats, the peak, the step
    breakdown (min per part); then the ratios the targets are stated in."""
    out: dict[str, Any] = {}
    for it in items:
        entry: dict[str, Any] = {
            "wall_s": _stats(it.times),
            "cpu_s": _stats(it.cpu_times),
            "peak_mib": it.peak,
            "times_s": it.times,
            "cpu_times_s": it.cpu_times,
        }
        if it.breakdowns:
            keys = it.breakdowns[0].keys()
            entry["breakdown_min_s"] = {k: min(b[k] for b in it.breakdowns) for k in keys}
        out[it.name] = entry

    def value(name: str, kind: str) -> float | None:
        if name not in out:
            return None
        if kind == "peak_mib":
            return out[name]["peak_mib"]
        return out[name][kind]["min"] if out[name][kind] else None

    def ratio(num: list[str], den: list[str], kind: str) -> float | None:
        values = [value(n, kind) for n in num + den]
        if any(v is None for v in values) or not sum(values[len(num) :]):
            return None
        return sum(values[: len(num)]) / sum(values[len(num) :])

    b = args.batch
    time_ratios = {
        "decoder_rows / decoder": (["decoder_rows"], ["decoder"]),
        "features / (vision + decoder)": (["features"], ["vision", "decoder"]),
        "features / features_eager": (["features"], ["features_eager"]),
        "answer / generate": (["answer"], ["generate"]),
        f"train_{b} / train_{b}_ref": ([f"train_{b}"], [f"train_{b}_ref"]),
        f"{b} x features / frozen_{b}": (["features"] * b, [f"frozen_{b}"]),
    }
    peak_ratios = {
        "features / features_eager": (["features"], ["features_eager"]),
        "decoder_rows / decoder": (["decoder_rows"], ["decoder"]),
        "answer / generate": (["answer"], ["generate"]),
        f"train_{b} / train_1": ([f"train_{b}"], ["train_1"]),
        f"train_{b}_ref / train_1_ref": ([f"train_{b}_ref"], ["train_1_ref"]),
        f"train_{b} / train_{b}_ref": ([f"train_{b}"], [f"train_{b}_ref"]),
    }
    ratios = {
        "time_wall": {k: ratio(*v, "wall_s") for k, v in time_ratios.items()},
        "time_cpu": {k: ratio(*v, "cpu_s") for k, v in time_ratios.items()},
        "peak": {k: ratio(*v, "peak_mib") for k, v in peak_ratios.items()},
    }
    ratios = {group: {k: v for k, v in r.items() if v is not None} for group, r in ratios.items()}
    report = {"items": out, "ratios": {k: v for k, v in ratios.items() if v}}
    evaluation = eval_summary(out, items)
    if evaluation:
        report["evaluation"] = evaluation
    return report


def print_table(report: dict[str, Any]) -> None:
    def fmt(x: float | None, spec: str = ".3f") -> str:
        return "-" if x is None else format(x, spec)

    print(f"\n{'item':<16} {'wall min':>9} {'median':>9} {'cpu min':>9} {'peak MiB':>9}")
    for name, e in report["items"].items():
        wall, cpu = e["wall_s"] or {}, e["cpu_s"] or {}
        print(
            f"{name:<16} {fmt(wall.get('min')):>9} {fmt(wall.get('median')):>9} "
            f"{fmt(cpu.get('min')):>9} {fmt(e['peak_mib'], '.0f'):>9}"
        )
        for k, v in e.get("breakdown_min_s", {}).items():
            print(f"  {k:<14} {v:>9.3f}")
    for group, values in report["ratios"].items():
        print(f"\nratios ({group})")
        for name, v in values.items():
            print(f"  {name:<36} {fmt(v)}")
    for head, e in report.get("evaluation", {}).items():
        print(f"\nevaluation, {head} head: seconds per expression (wall min)")
        for mode, v in e["seconds_per_expression"]["wall_s"].items():
            print(f"  {mode:<36} {fmt(v)}   peak {fmt(e['peak_mib'][mode], '.0f')} MiB")
        for clock, values in e["time_per_expression_ratio"].items():
            for name, v in values.items():
                print(f"  time per expression {name} ({clock[:-2]}){'':<4} {fmt(v)}")
        for name, v in e["peak_ratio"].items():
            print(f"  peak {name:<31} {fmt(v)}")
        hours = ", ".join(f"{k} {v:.2f} h" for k, v in e["projected_8_splits_hours"].items())
        print(f"  projected 8 RES splits: {hours}")


def main(argv: list[str] | None = None) -> dict[str, Any] | None:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lmm", default="deepseek-vl-1.3b", choices=NAMES)
    parser.add_argument("--model-path", help="a real model folder (default: random weights)")
    parser.add_argument(
        "--cache-dir", default="work_dirs/benchmark", help="where random models are built once"
    )
    parser.add_argument("--layers", type=int, help="decoder layers of the random model")
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    parser.add_argument("--head-dtype", default="bfloat16", choices=["bfloat16", "float32"])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    parser.add_argument("--repeats", type=int, default=2, help="timing repeats (0: none)")
    parser.add_argument("--batch", type=int, default=4, help="B, samples of the larger step")
    parser.add_argument(
        "--text-tokens", type=int, default=36, help="text tokens per sample (prompt + caption)"
    )
    parser.add_argument("--phrases", type=int, default=3, help="phrases per caption")
    parser.add_argument("--new-tokens", type=int, default=32, help="generated tokens")
    parser.add_argument(
        "--items", nargs="*", help="only these items (default: all; 'eval': the six eval items)"
    )
    parser.add_argument("--eval-images", type=int, default=4, help="K, images of the eval items")
    parser.add_argument(
        "--refs-per-image", type=float, default=2.54,
        help="mean expressions per image of the eval items (RefCOCO val: 3811 / 1500)",
    )  # fmt: skip
    parser.add_argument(
        "--eval-batch-size",
        type=int,
        help="captions per decoder pass of the shared eval items (default: the CLIs' CPU "
        "default, 2); the loop keeps the path of before, all of an image's expressions per forward",
    )
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory pass")
    parser.add_argument("--out", help="JSON report (default: <cache-dir>/<lmm>.json)")
    parser.add_argument("--memory-worker", help=argparse.SUPPRESS)  # internal: peaks -> file
    args = parser.parse_args(argv)
    if args.batch < 2:
        parser.error("--batch must be at least 2 (it is compared with one sample)")

    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    memory = PeakMemory(device)
    if args.memory_worker:
        memory.prepare()  # before anything large is allocated
    if args.model_path:
        path = Path(args.model_path)
    else:
        suffix = "" if args.layers is None else f"-{args.layers}layers"
        path = Path(args.cache_dir) / f"{args.lmm}{suffix}"
        print(f"random weights for {args.lmm} in {path} (built on first use)", flush=True)
        random_lmm_folder(args.lmm, path, num_layers=args.layers)
    tik = time.perf_counter()
    adapter = load_adapter(args.lmm, path, torch_dtype=args.dtype).to(device)
    print(f"loaded {path} in {time.perf_counter() - tik:.1f} s", flush=True)
    items = build_items(adapter, args, device)
    if args.memory_worker:
        Path(args.memory_worker).write_text(json.dumps(measure_peaks(items, memory)))
        return None

    time_items(items, args, device)
    d = adapter.dims
    conditions = {
        "lmm": args.lmm,
        "weights": str(path) if args.model_path else "random",
        "dims": {"L": d.num_layers, "H": d.num_heads, "D": d.hidden_size, "N": d.num_image_tokens},
        "text_tokens": args.text_tokens,
        "phrases": args.phrases,
        "batch": args.batch,
        "new_tokens": args.new_tokens,
        "eval_images": args.eval_images,
        "refs_per_image": args.refs_per_image,
        "eval_batch_size": args.eval_batch_size,
        "dtype": args.dtype,
        "head_dtype": args.head_dtype,
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "breakdown_clock": "wall" if device.type == "cuda" else "process CPU time",
        "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None,
        "torch": torch.__version__,
        "python": sys.version.split()[0],
        "repeats": args.repeats,
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    out = Path(args.out) if args.out else Path(args.cache_dir) / f"{args.lmm}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    if not args.no_memory:
        del adapter  # the worker loads its own copy
        for it in items:
            it.run = None
        gc.collect()
        peaks = peaks_in_subprocess(argv, out.with_suffix(".peaks.json"))
        for it in items:
            it.peak = peaks.get(it.name)
    report = summarise(items, args)
    report["conditions"] = conditions
    print_table(report)
    out.write_text(json.dumps(report, indent=2))
    print(f"\nwrote {out}")
    return report


if __name__ == "__main__":
    main()
