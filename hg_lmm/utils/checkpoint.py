"""Save and load the trainable state of a model; read every checkpoint format we meet.

What is saved: trainable parameters *and the buffers of the modules that own them* (BatchNorm
running statistics). The reference saver kept only parameters, so its BN statistics were lost; a
frozen part (the LMM, SAM's image encoder) is never saved.

What can be loaded: our own `.pth`/`.safetensors`, released HG-LMM and F-LMM head checkpoints (their
names are the head's own names, without our `head.` prefix), and DeepSpeed checkpoint folders. Files
are read with `torch.load(weights_only=True)` or safetensors; anything that needs arbitrary
unpickling is refused unless the caller opts in (`unsafe=True`, the CLIs' `--unsafe-load`).
Before anything is unpickled, `check_checkpoint_file` tells a damaged or foreign file (empty,
truncated, text, random bytes) from a checkpoint by its bytes and names what is wrong; a state
holding NaN or Inf is refused at load time.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

logger = logging.getLogger(__name__)

# Prefixes that wrappers add around a state dict (DDP/DeepSpeed `module.`, mmengine's `state_dict`).
_WRAPPER_PREFIXES = ("module.",)


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be read or does not fit the model; the message says what to do."""


def _trainable_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """Trainable parameters, plus the persistent buffers that belong to trainable parts.

    A buffer belongs to the nearest module (itself or an ancestor) whose subtree has parameters;
    it is kept when any parameter of that subtree trains. This keeps BatchNorm statistics and
    parameter-free helpers inside a trainable part (SAM's random positional-encoding matrix in
    the prompt encoder) and drops everything in a frozen part (the LMM, SAM's image encoder).
    """
    has_params: dict[str, bool] = {}
    trains: dict[str, bool] = {}
    for name, module in model.named_modules():
        params = list(module.parameters())
        has_params[name] = bool(params)
        trains[name] = any(p.requires_grad for p in params)

    def owner_trains(mod_name: str) -> bool:
        while True:
            if has_params[mod_name]:
                return trains[mod_name]
            if not mod_name:
                return False
            mod_name = mod_name.rpartition(".")[0]

    keep: dict[str, torch.Tensor] = {}
    for mod_name, module in model.named_modules():
        prefix = f"{mod_name}." if mod_name else ""
        for name, p in module.named_parameters(recurse=False):
            if p.requires_grad:
                keep[prefix + name] = p
        buffers = [
            (n, b)
            for n, b in module.named_buffers(recurse=False)
            if b is not None and n not in module._non_persistent_buffers_set
        ]
        if buffers and owner_trains(mod_name):
            keep.update({prefix + n: b for n, b in buffers})
    return keep


def trainable_state_names(model: nn.Module) -> set[str]:
    """Names (in `model.state_dict()` naming) of what `trainable_state_dict` returns."""
    return set(_trainable_tensors(model))


def trainable_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Trainable parameters plus the buffers of every module that has a trainable parameter.

    Returns a flat {name: tensor (detached, on CPU)} in `model.state_dict()` naming.
    """
    return {k: v.detach().cpu().clone() for k, v in _trainable_tensors(model).items()}


def save_checkpoint(model: nn.Module, path: str | os.PathLike, **meta: object) -> Path:
    """Write the trainable state to `path` (.safetensors or a weights-only-loadable .pth).

    The write is atomic (`hg_lmm.utils.files.atomic_open`), so an interrupted save never leaves a
    torn file.
    """
    from hg_lmm.utils.files import atomic_open

    path = Path(path)
    state = trainable_state_dict(model)
    with atomic_open(path, "wb") as handle:
        if path.suffix == ".safetensors":
            from safetensors.torch import save

            tensors = {k: v.contiguous() for k, v in state.items()}
            handle.write(save(tensors, metadata={k: str(v) for k, v in meta.items()}))
        else:
            torch.save({"state_dict": state, "meta": {k: str(v) for k, v in meta.items()}}, handle)
    return path


# --------------------------------------------------------------------------------------------
# Telling a damaged or foreign file from a checkpoint, by its bytes (nothing is unpickled)
# --------------------------------------------------------------------------------------------

_REDOWNLOAD = "Re-download or re-save it, or pass another checkpoint."


def _looks_like_text(head: bytes) -> bool:
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return all(c.isprintable() or c in "\n\r\t" for c in text)


def _check_safetensors(path: Path, size: int) -> None:
    import json
    import struct

    with open(path, "rb") as handle:
        raw = handle.read(8)
        if len(raw) < 8:
            raise CheckpointError(f"{path} is truncated: {size} bytes, less than a header")
        (header_len,) = struct.unpack("<Q", raw)
        if 8 + header_len > size:
            raise CheckpointError(
                f"{path} is not a complete safetensors file: its header says {header_len} "
                f"bytes but the file holds {size}; it was cut short. {_REDOWNLOAD}"
            )
        try:
            header = json.loads(handle.read(header_len))
            end = max(
                (int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"),
                default=0,
            )
        except (ValueError, TypeError, KeyError, IndexError, AttributeError) as error:
            raise CheckpointError(
                f"{path} is not a safetensors file (unreadable header: {error}). {_REDOWNLOAD}"
            ) from error
    if 8 + header_len + end > size:
        raise CheckpointError(
            f"{path} is truncated: its tensors need {8 + header_len + end} bytes but the file "
            f"holds {size} (an interrupted save or download). {_REDOWNLOAD}"
        )


def check_checkpoint_file(path: str | os.PathLike, *, deep: bool = False) -> None:
    """Raise `CheckpointError` naming `path` and what is wrong if it cannot be a whole checkpoint.

    Arguments:
      path: a .pth/.pt file (a torch zip archive or a legacy pickle), a .safetensors file, or a
        DeepSpeed folder (each of its `*.pt` files is checked).
      deep: also verify the CRC of every entry of a zip archive (reads the whole file; used before
        a resume, where a torn file would otherwise fail deep inside mmengine).

    Only bytes are inspected: an empty file, text (or a Git LFS pointer), random bytes, a zip
    archive without its index (a save killed midway) or a safetensors file shorter than its header
    says are all named. A file that passes may still be refused later (e.g. unsafe pickles).
    """
    import zipfile

    path = Path(path)
    if not path.exists():
        raise CheckpointError(
            f"checkpoint {path} does not exist; see checkpoints/README.md for where files go"
        )
    if path.is_dir():
        files = sorted(p for p in path.rglob("*.pt") if p.is_file())
        if not files:
            deepspeed_model_file(path)  # raises the folder's own message
        for file in files:
            check_checkpoint_file(file, deep=deep)
        return
    size = path.stat().st_size
    if size == 0:
        raise CheckpointError(
            f"{path} is empty (0 bytes): a save or copy was interrupted. {_REDOWNLOAD}"
        )
    if path.suffix == ".safetensors":
        _check_safetensors(path, size)
        return
    with open(path, "rb") as handle:
        head = handle.read(64)
    if head.startswith(b"PK"):  # torch >= 1.6 saves a zip archive
        try:
            with zipfile.ZipFile(path) as archive:
                bad = archive.testzip() if deep else None
        except (zipfile.BadZipFile, OSError, EOFError) as error:
            raise CheckpointError(
                f"{path} is truncated or damaged ({size} bytes; {error}): a save or copy was "
                f"interrupted. {_REDOWNLOAD}"
            ) from error
        if bad is not None:
            raise CheckpointError(
                f"{path} is damaged: entry {bad} fails its CRC check. {_REDOWNLOAD}"
            )
        return
    if head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        return  # a pickle (torch's legacy format); torch.load decides whether it is safe
    if head.startswith(b"version https://git-lfs"):
        raise CheckpointError(
            f"{path} is a Git LFS pointer, not the checkpoint itself; fetch the file "
            "(`git lfs pull`) or download it directly"
        )
    if _looks_like_text(head):
        shown = head.decode("utf-8").splitlines()[0][:40] if head.strip() else ""
        raise CheckpointError(
            f"{path} is a text file, not a checkpoint (it begins {shown!r}). {_REDOWNLOAD}"
        )
    raise CheckpointError(
        f"{path} is not a checkpoint: neither a PyTorch file (zip archive or pickle) nor "
        f"safetensors (it begins with bytes {head[:8].hex(' ')}). {_REDOWNLOAD}"
    )


def checkpoint_sha256(path: str | os.PathLike) -> str:
    """Content hash of a checkpoint file, or of the model-states file of a DeepSpeed folder (the
    optimizer partitions do not change what the model predicts)."""
    from hg_lmm.utils.files import sha256_file

    path = Path(path)
    return sha256_file(deepspeed_model_file(path) if path.is_dir() else path)


def _checkpoint_safe_globals() -> list[object]:
    """Plain-data classes that mmengine checkpoints carry besides tensors (the message hub's
    `HistoryBuffer` of numpy arrays). They only hold data, so allowing them keeps weights-only
    loading safe while reading checkpoints that `xtuner train` writes."""
    import numpy as np
    from mmengine.logging.history_buffer import HistoryBuffer

    dtypes = [getattr(np.dtypes, n) for n in dir(np.dtypes) if n.endswith("DType")]
    return [HistoryBuffer, np.core.multiarray._reconstruct, np.ndarray, np.dtype, *dtypes]


def _torch_load(path: Path, unsafe: bool) -> object:
    try:
        if unsafe:
            return torch.load(path, map_location="cpu", weights_only=False)
        with torch.serialization.safe_globals(_checkpoint_safe_globals()):
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        check_checkpoint_file(path, deep=True)  # a damaged file is named as such
        refused = "Unpickl" in type(err).__name__ or "weights only" in str(err).lower()
        if unsafe or not refused:
            reason = str(err).strip() or type(err).__name__
            raise CheckpointError(f"could not read checkpoint {path}: {reason}") from err
        raise CheckpointError(
            f"{path} holds Python objects beyond tensors, and loading it would run arbitrary "
            "code from the file. If you trust where it came from, pass --unsafe-load "
            "(load_state(..., unsafe=True)); otherwise convert it to tensors only, e.g. "
            "`python scripts/deepspeed2torch_state_dict.py` for DeepSpeed folders."
        ) from err


def deepspeed_model_file(folder: Path) -> Path:
    """The model-states file inside a DeepSpeed checkpoint folder (or its `latest` tag)."""
    candidates = sorted(folder.glob("mp_rank_*_model_states.pt"))
    if not candidates and (folder / "latest").is_file():
        tag = (folder / "latest").read_text().strip()
        candidates = sorted((folder / tag).glob("mp_rank_*_model_states.pt"))
    if not candidates:
        candidates = sorted(folder.glob("*/mp_rank_*_model_states.pt"))
    if not candidates:
        raise CheckpointError(
            f"{folder} is a folder but holds no DeepSpeed `mp_rank_*_model_states.pt`; pass the "
            "checkpoint folder written by `xtuner train --deepspeed` or a .pth/.safetensors file"
        )
    return candidates[-1]


def read_state_dict(path: str | os.PathLike, *, unsafe: bool = False) -> dict[str, torch.Tensor]:
    """Read a flat {name: tensor} from a file or a DeepSpeed folder (see the module docstring)."""
    path = Path(path)
    if not path.is_dir():
        check_checkpoint_file(path)  # a missing, empty, torn or foreign file is named
    if path.is_dir():
        model_file = deepspeed_model_file(path)
        check_checkpoint_file(model_file)
        obj = _torch_load(model_file, unsafe)
        obj = obj.get("module", obj) if isinstance(obj, Mapping) else obj
    elif path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            obj = load_file(str(path))
        except Exception as err:  # safetensors raises its own SafetensorError
            raise CheckpointError(f"could not read safetensors file {path}: {err}") from err
    else:
        obj = _torch_load(path, unsafe)
        if isinstance(obj, Mapping):
            for key in ("state_dict", "model", "module"):
                if key in obj and isinstance(obj[key], Mapping):
                    obj = obj[key]
                    break
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{path} does not hold a state dict of tensors")
    state = {}
    for k, v in obj.items():
        for p in _WRAPPER_PREFIXES:
            if k.startswith(p):
                k = k[len(p) :]
        state[k] = v
    return state


@dataclass
class LoadReport:
    """What a load did: loaded keys, trainable keys missing from the file, unknown file keys,
    keys whose shape differs from the model's (as "key: file (a, b), model (c, d)"), and keys
    dropped on purpose (`ignored_prefixes`)."""

    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)

    @property
    def fits(self) -> bool:
        """Whether every trainable key is there with the model's shape, and nothing else."""
        return not (self.missing or self.unexpected or self.mismatched)

    def __str__(self) -> str:
        lines = [f"loaded {len(self.loaded)} tensors"]
        for title, keys in (
            ("missing", self.missing),
            ("unexpected", self.unexpected),
            ("mis-shaped", self.mismatched),
            ("ignored", self.ignored),
        ):
            if keys:
                shown = ", ".join(keys[:10]) + (" ..." if len(keys) > 10 else "")
                lines.append(f"{title} ({len(keys)}): {shown}")
        return "; ".join(lines)

    def details(self) -> str:
        """Every missing, unexpected and mis-shaped key by name, one per line (none left out)."""
        lines = []
        for title, keys in (
            ("missing from the file", self.missing),
            ("unexpected in the file", self.unexpected),
            ("mis-shaped", self.mismatched),
        ):
            if keys:
                lines.append(f"{title} ({len(keys)}):")
                lines.extend(f"  {key}" for key in keys)
        return "\n".join(lines)


def load_state(
    model: nn.Module,
    source: str | os.PathLike | Mapping[str, torch.Tensor],
    *,
    head_prefix: str = "head.",
    ignored_prefixes: Iterable[str] | None = None,
    strict: bool = True,
    unsafe: bool = False,
    assign: bool = False,
) -> LoadReport:
    """Load a checkpoint's trainable state into `model` and report what matched.

    Released head checkpoints name tensors as the head does (`lifg.conv1.weight`); ours carry the
    model's `head.` prefix. Keys under `ignored_prefixes` (by default the head's
    `IGNORED_CHECKPOINT_PREFIXES`: the reference 7B's unused `cliplayer.`, or the frozen
    `sam.model.image_encoder.` that F-LMM files may hold) are dropped with a log line that counts
    them, and never fail a strict load. Only the trainable state is loaded: any other key of a
    frozen part (e.g. the LMM) counts as unexpected. A key whose shape differs from the model's
    always raises, and so, with `strict`, does any missing trainable key or unexpected key: the
    `CheckpointError` names every such key (`LoadReport.details`) and nothing is loaded. A tensor
    holding NaN or Inf always raises (a diverged run's checkpoint would load and score 0).
    `assign` is passed to `load_state_dict` (for a model built on the meta device).
    """
    state = dict(source) if isinstance(source, Mapping) else read_state_dict(source, unsafe=unsafe)
    expected = trainable_state_names(model)
    own = model.state_dict()
    report = LoadReport()
    if ignored_prefixes is None:
        head = getattr(model, head_prefix.rstrip("."), model) if head_prefix else model
        ignored_prefixes = getattr(head, "IGNORED_CHECKPOINT_PREFIXES", ())
    ignored = tuple(ignored_prefixes)
    to_load: dict[str, torch.Tensor] = {}
    mis_shaped: set[str] = set()
    for key, value in state.items():
        bare = key[len(head_prefix) :] if key.startswith(head_prefix) else key
        if ignored and bare.startswith(ignored):
            report.ignored.append(key)
            continue
        name = key if key in expected else head_prefix + key
        if name not in expected:
            report.unexpected.append(key)
            continue
        if own[name].shape != value.shape:
            report.mismatched.append(
                f"{key}: file {tuple(value.shape)}, model {tuple(own[name].shape)}"
            )
            mis_shaped.add(name)
            continue
        to_load[name] = value
    nonfinite = [
        k for k, v in to_load.items() if v.is_floating_point() and not bool(v.isfinite().all())
    ]
    if nonfinite:
        where = "the checkpoint" if isinstance(source, Mapping) else str(source)
        raise CheckpointError(
            f"{where}: {len(nonfinite)} of {len(to_load)} tensors hold NaN or Inf (e.g. "
            f"{', '.join(nonfinite[:3])}); the training run that wrote it diverged. Use an "
            "earlier checkpoint of that run"
        )
    report.loaded = sorted(to_load)
    report.missing = sorted(set(expected) - set(to_load) - mis_shaped)
    if report.ignored:
        logger.info(
            "ignored %d checkpoint tensors not used by this model (%s...)",
            len(report.ignored),
            report.ignored[0],
        )
    if report.mismatched or (strict and not report.fits):
        report.loaded = []  # nothing is loaded half-way
        raise CheckpointError(
            f"checkpoint does not fit the model: {report}. Is the config the one this checkpoint "
            f"was trained with? Nothing was loaded. Every key that differs:\n{report.details()}"
        )
    model.load_state_dict(to_load, strict=False, assign=assign)
    logger.info("checkpoint: %s", report)
    return report
