"""One model class for every (LMM, head) pair: frozen adapter + trainable head + mask losses.

One forward path serves training, prediction and grounding: `extract -> head -> postprocess`.
The model processes a list of samples per step (each sample has its own image size and number of
phrases): the frozen LMM sees them as one padded batch, the head one sample at a time.

Training memory stays flat in the number of samples per step: each sample's head and loss run
under activation checkpointing (`torch.utils.checkpoint`, non-reentrant), so only its features are
kept until the backward, which recomputes one sample's head graph at a time. The backward stays
the caller's single `loss.backward()` (mmengine's OptimWrapper, AMP, or DeepSpeed's engine, whose
ZeRO gradient hooks need that); a backward per sample inside `forward` would bypass them. The
recomputation replays the head with the same RNG state (dropout) and with BatchNorm running
statistics left untouched, so they are updated once per step, as without checkpointing.

A sample is a mapping (a dict, or the datasets' `GroundingSample` record) with `input_ids`
[T_all], `mask_ids` [T_all] (prompt tokens -1), `image` (PIL) or `pixel_values` + `meta` +
`image_hw` (the original size, `original_hw`), and for training `masks` [n, H, W] at the original
image size (`caption_start` is optional).
See hg_lmm.datasets for how samples are built.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager, nullcontext
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
from mmengine.model import BaseModel
from torch import nn
from torch.utils.checkpoint import checkpoint

from hg_lmm.heads.base import FINAL, MaskHead, check_head_output
from hg_lmm.heads.losses import MaskLoss, mask_metrics
from hg_lmm.lmm.adapter import Answer, FrozenLMMAdapter
from hg_lmm.lmm.base import LMMFeatures
from hg_lmm.utils.build import build
from hg_lmm.utils.checkpoint import trainable_state_names


def resize_masks(masks: torch.Tensor, size: Sequence[int], mode: str) -> torch.Tensor:
    """[n, H, W] -> [n, h, w]; `nearest` for ground truth, `bilinear` for logits."""
    if tuple(masks.shape[-2:]) == tuple(size):
        return masks
    kwargs = {"align_corners": False} if mode == "bilinear" else {}
    return F.interpolate(masks[:, None].float(), size=tuple(size), mode=mode, **kwargs)[:, 0]


class GroundingModel(BaseModel):
    """Frozen LMM + trainable mask head.

    Arguments:
      lmm: a `FrozenLMMAdapter` or its config dict.
      head: a head module or its config dict; `dims=lmm.dims` is filled in when building it.
      loss: a `MaskLoss` or its keyword arguments (BCE and Dice weights).
      threshold: probability above which a pixel is in the predicted mask.
      checkpoint_head: recompute each sample's head graph in the backward instead of keeping
        every sample's graph until then (see the module docstring); False keeps them all
        (faster by one head forward per sample, memory growing with the samples per step).
      data_preprocessor: mmengine's (the default only moves tensors to the device).

    Modes of `forward(data, data_samples=None, mode=...)` with `data` a list of samples:
      "loss": {"loss_mask", "loss_dice" (+ "sam_*" for the U-Net+SAM head), "accuracy", "miou"}.
      "predict": per sample {"logits" [n, H, W] at the original size, "masks" bool [n, H, W]
        (sigmoid, then resize, then threshold: `final_masks`)}.
      "tensor": per sample the final logits [n, H, W].
    """

    def __init__(
        self,
        *,
        lmm: FrozenLMMAdapter | Mapping[str, Any],
        head: nn.Module | Mapping[str, Any],
        loss: MaskLoss | Mapping[str, Any] | None = None,
        threshold: float = 0.5,
        checkpoint_head: bool = True,
        data_preprocessor: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(data_preprocessor=data_preprocessor)
        self.lmm = build(lmm)
        self.head = build(head, dims=self.lmm.dims)
        if not isinstance(self.head, MaskHead):
            raise TypeError(
                f"the head is a {type(self.head).__name__}; GroundingModel needs a mask head: "
                "subclass hg_lmm.heads.base.MaskHead (forward(features, image=None) -> dict)"
            )
        self.loss = loss if isinstance(loss, nn.Module) else MaskLoss(**(loss or {}))
        self.threshold = threshold
        self.checkpoint_head = checkpoint_head
        # Checkpoints (ours and mmengine's) hold the trainable state only, never the frozen LMM.
        self._register_state_dict_hook(_keep_trainable_state)

    # --- the one forward path -----------------------------------------------------------------

    def head_logits(self, features: LMMFeatures, sample: Mapping[str, Any]) -> dict[str, Any]:
        """Run the head on one sample's features: its named [n, h, w] logit maps, the final one
        under `hg_lmm.heads.base.FINAL` (hg_lmm.heads.base.MaskHead)."""
        return self._maps(features, self._head_image(sample))

    def _head_image(self, sample: Mapping[str, Any]) -> Any:
        """The sample's image after the head's frozen per-image work (`prepare_image`, e.g. SAM's
        image encoder), done here, once, outside any recomputation."""
        with torch.no_grad():
            return self.head.prepare_image(sample.get("image"))

    def _maps(self, features: LMMFeatures, image: Any) -> dict[str, torch.Tensor]:
        return check_head_output(self.head, self.head(features, image))

    def final_logits(self, maps: dict[str, torch.Tensor], image_hw: Sequence[int]) -> torch.Tensor:
        """The final map, resized (bilinear) to the original image size: [n, H, W]."""
        return resize_masks(maps[FINAL], image_hw, "bilinear")

    def final_masks(
        self, maps: dict[str, torch.Tensor], image_hw: Sequence[int], threshold: float
    ) -> torch.Tensor:
        """bool [n, H, W]: sigmoid of the final map, resized (bilinear) to the original size, then
        `> threshold`. This is the references' order (F-LMM's and HG-LMM's eval scripts); resizing
        the logits before the sigmoid gives slightly different masks (docs/architecture.md)."""
        probs = maps[FINAL].float().sigmoid()
        return resize_masks(probs, image_hw, "bilinear") > threshold

    def forward(
        self,
        data: Sequence[Mapping[str, Any]],
        data_samples: Any = None,
        mode: str = "tensor",
    ) -> Any:
        if mode == "loss":
            return self.compute_loss(data)
        if mode == "predict":
            return self.predict(data)
        if mode == "tensor":
            return [p["logits"] for p in self.predict(data)]
        raise ValueError(f"unknown mode {mode!r}; expected 'loss', 'predict' or 'tensor'")

    def compute_loss(self, data: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
        """Mean over samples of each loss term; GT masks resized (nearest) to each map's size.

        The frozen features of all samples come from one batched pass; each sample's head and
        loss are checkpointed when training with `checkpoint_head`, so that only the features
        (in the LMM's dtype, attention maps pooled per phrase by the head's `prepare_features`)
        are kept per sample until the backward.
        """
        totals: dict[str, torch.Tensor] = {}
        # The LMM's dtype (bf16 in training): the features are kept until the backward.
        batch = self.lmm.extract_batch(data, dtype=None)
        for sample in data:
            # Popped, so that only the head's prepared features of a sample stay alive.
            for k, v in self._sample_terms(batch.pop(0), sample).items():
                totals[k] = totals.get(k, 0) + v / len(data)
        return totals

    def _sample_terms(
        self, features: LMMFeatures, sample: Mapping[str, Any]
    ) -> dict[str, torch.Tensor]:
        """Loss terms and metrics of one sample (scalars)."""
        gt = torch.as_tensor(sample["masks"], device=features.hidden.device)
        # As the references: GT resized (nearest) to the processor's image size first, then to
        # each map (a no-op for the HG head; the U-Net grid crop and SAM's original size for
        # the U-Net+SAM head). Kept in its own dtype (bool masks stay bool: nearest keeps 0/1
        # exact).
        gt = resize_masks(gt.float(), self._meta_hw(features.meta), "nearest").to(gt.dtype)
        image = self._head_image(sample)
        # The head's parameter-free work on the features (e.g. each phrase's mean attention
        # maps) is done here, once: a checkpointed step then keeps its smaller output per sample.
        with torch.no_grad():
            features = self.head.prepare_features(features)

        def terms_of(*tensors: torch.Tensor) -> dict[str, torch.Tensor]:
            feats = dataclasses.replace(features, **dict(zip(names, tensors)))
            maps = self._maps(feats, image)
            n = gt.shape[0]
            if n != maps[FINAL].shape[0]:
                raise ValueError(
                    f"sample {sample.get('id', '?')}: {n} ground-truth masks but "
                    f"{int(feats.mask_ids.max()) + 1} phrases in mask_ids"
                )
            terms: dict[str, torch.Tensor] = {}
            for name, prefix in self.head.loss_prefixes.items():
                logits = maps[name]
                target = resize_masks(gt.float(), logits.shape[-2:], "nearest")
                terms.update(self.loss(logits, target, prefix=prefix))
                terms.update(mask_metrics(logits, target, prefix=prefix))
            return terms

        names = [n for n in _FEATURE_TENSORS if getattr(features, n) is not None]
        tensors = [getattr(features, n) for n in names]
        if not (self.checkpoint_head and self.training and torch.is_grad_enabled()):
            return terms_of(*tensors)
        # The feature tensors are passed as arguments so that checkpoint restores the RNG state
        # of their device (dropout) before recomputing.
        return checkpoint(
            terms_of,
            *tensors,
            use_reentrant=False,
            context_fn=partial(_recompute_contexts, self.head),
        )

    @torch.no_grad()
    def predict(self, data: Sequence[Mapping[str, Any]]) -> list[dict[str, torch.Tensor]]:
        """Per sample: logits and thresholded masks at the original image size."""
        return [
            self._prediction(features, self._head_image(sample), sample)
            for sample, features in zip(data, self.lmm.extract_batch(data))
        ]

    @torch.no_grad()
    def predict_group(
        self, data: Sequence[Mapping[str, Any]], batch_size: int | None = None
    ) -> list[dict[str, torch.Tensor]]:
        """`predict` of samples that share one image (e.g. the expressions of a RefCOCO image):
        the image's frozen work is done once for all of them, the first sample's image standing
        for every one: the LMM's vision pass and prompt (`FrozenLMMAdapter.iter_group`, a KV
        cache the captions run over, `batch_size` at a time) and the head's `prepare_image`
        (SAM's image encoder for the U-Net+SAM head). Same outputs as `predict` (to 1e-5 in
        float32, tests/test_model.py)."""
        if not data:
            return []
        image = self._head_image(data[0])
        out, pending = [], iter(data)
        # One caption pass at a time: its features are used by the head, then dropped.
        for chunk in self.lmm.iter_group(data, batch_size=batch_size):
            out += [self._prediction(f, image, next(pending)) for f in chunk]
        return out

    def _prediction(
        self, features: LMMFeatures, image: Any, sample: Mapping[str, Any]
    ) -> dict[str, torch.Tensor]:
        maps, hw = self._maps(features, image), original_hw(sample)
        return {
            "logits": self.final_logits(maps, hw),
            "masks": self.final_masks(maps, hw, self.threshold),
        }

    @torch.no_grad()
    def ground(
        self,
        phrase_token_ids: Sequence[Sequence[int]],
        answer: Answer,
        image: Any = None,
        threshold: float | None = None,
    ) -> torch.Tensor:
        """Masks for phrases of a generated answer.

        phrase_token_ids: for each phrase, the indices (into `answer.token_ids`) of its tokens.
        Returns bool [n, H, W] at the original image size (`image` is the PIL image; it is also
        what the U-Net+SAM head refines on).
        """
        mask_ids = torch.full_like(answer.features.mask_ids, -1)
        for k, idx in enumerate(phrase_token_ids):
            if len(idx) == 0:
                raise ValueError(f"phrase {k} has no tokens in the answer {answer.text!r}")
            mask_ids[torch.as_tensor(list(idx))] = k
        f = answer.features
        features = dataclasses.replace(f, mask_ids=mask_ids)
        # Without the image, the masks come at the processor's image size (meta image_shape).
        sample = {"image": image} if image is not None else {"image_hw": self._meta_hw(f.meta)}
        maps = self.head_logits(features, sample)
        threshold = self.threshold if threshold is None else threshold
        return self.final_masks(maps, original_hw(sample), threshold)

    @staticmethod
    def _meta_hw(meta: Mapping[str, Any]) -> tuple[int, int]:
        return meta["image_shape"]["height"], meta["image_shape"]["width"]


def original_hw(sample: Mapping[str, Any]) -> tuple[int, int]:
    """The size (h, w) a sample's predictions are returned at, and its ground-truth masks are
    given at: its `image`'s (PIL, (w, h)), or for a sample that carries `pixel_values` + `meta`
    instead, its `image_hw`."""
    if sample.get("image") is not None:
        w, h = sample["image"].size
        return h, w
    if "image_hw" not in sample:
        raise KeyError(
            f"sample {sample.get('id', '?')} has neither an 'image' nor an 'image_hw' (h, w): "
            "give the original image, or its size as 'image_hw' next to 'pixel_values' and 'meta'"
        )
    h, w = sample["image_hw"]
    return int(h), int(w)


# The LMMFeatures tensors a head reads (attn or attn_prior); the checkpointed head takes those
# that are set as arguments.
_FEATURE_TENSORS = ("attn", "attn_prior", "hidden", "vision", "pixel_values")


@contextmanager
def frozen_norm_statistics(module: nn.Module) -> Iterator[None]:
    """Inside the block, BatchNorm layers of `module` normalise as usual (batch statistics in
    training mode) but leave their running statistics and batch counters as they were.

    Done with momentum 0 (running = 1 * running + 0 * batch, exactly) plus restoring the counter,
    rather than `track_running_stats=False`: that would change which tensors batch_norm saves
    for the backward, which a checkpoint's recomputation must reproduce exactly.
    """
    norms = [
        (
            m,
            m.momentum,
            m.num_batches_tracked.clone() if m.num_batches_tracked is not None else None,
        )
        for m in module.modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats
    ]
    for m, _, _ in norms:
        m.momentum = 0.0
    try:
        yield
    finally:
        for m, momentum, count in norms:
            m.momentum = momentum
            if count is not None:
                m.num_batches_tracked.copy_(count)


def _recompute_contexts(head: nn.Module) -> tuple[Any, Any]:
    """checkpoint's (forward, recompute) contexts: the recompute must not update BatchNorm's
    running statistics a second time."""
    return nullcontext(), frozen_norm_statistics(head)


def _keep_trainable_state(module: nn.Module, state: dict, prefix: str, local_metadata: Any) -> None:
    keep = {prefix + k for k in trainable_state_names(module)}
    for key in [k for k in state if k.startswith(prefix) and k not in keep]:
        del state[key]
