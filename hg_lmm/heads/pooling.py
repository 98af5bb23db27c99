"""Per-phrase pooling and layer weighting of token-level LMM outputs, shared by both heads."""

from __future__ import annotations

import dataclasses

import torch

from hg_lmm.lmm.base import LMMFeatures


def num_phrases(mask_ids: torch.Tensor) -> int:
    """n = mask_ids.max() + 1, the number of phrases of a sample (mask_ids: [T], -1 = none)."""
    if mask_ids.dim() != 1:
        raise ValueError(f"mask_ids must be [T], got shape {tuple(mask_ids.shape)}")
    if mask_ids.numel() == 0 or int(mask_ids.max()) < 0:
        raise ValueError(
            "mask_ids holds no phrase (every token is -1); a sample needs at least one token with "
            "a phrase index >= 0"
        )
    if int(mask_ids.min()) < -1:
        raise ValueError(f"mask_ids must be -1 or a phrase index >= 0, got {mask_ids.tolist()}")
    return int(mask_ids.max()) + 1


def phrase_pooling(mask_ids: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Mean-pooling matrix over each phrase's tokens.

    mask_ids: [T] long, the phrase index of each token or -1.
    Returns P [n, T] with P[k, t] = 1 / |{t : mask_ids[t] = k}| on phrase k's tokens and 0
    elsewhere, so `P @ x` is the per-phrase mean of any token-major x.
    Raises ValueError when a phrase index below the maximum has no token, since its mask would be
    predicted from nothing.
    """
    n = num_phrases(mask_ids)
    onehot = mask_ids[None, :] == torch.arange(n, device=mask_ids.device)[:, None]
    counts = onehot.sum(dim=1)
    empty = torch.nonzero(counts == 0).flatten().tolist()
    if empty:
        raise ValueError(
            f"phrase(s) {empty} have no token in mask_ids={mask_ids.tolist()}; every phrase index "
            f"0..{n - 1} needs at least one token (renumber the phrases or drop the empty ones)"
        )
    return onehot.to(dtype) / counts[:, None].to(dtype)


def attention_prior(attn: torch.Tensor, pooling: torch.Tensor) -> torch.Tensor:
    """A_k: each phrase's mean attention map, every layer and head stacked layer-major.

    attn: [L, H, T, g, g] attention probabilities from the caption tokens to the image grid.
    pooling: [n, T] from `phrase_pooling`.
    Returns [n, L*H, g, g]; channel l*H + h is layer l, head h.
    """
    L, H, T, g1, g2 = attn.shape
    pooled = torch.einsum("nt,lhtxy->nlhxy", pooling.to(attn.dtype), attn)
    return pooled.reshape(pooling.shape[0], L * H, g1, g2)


def layer_weighted(hidden: torch.Tensor, layer_weights: torch.Tensor) -> torch.Tensor:
    """The text states both heads read: sum_l softmax(w)_l * hidden[l].

    hidden: [L, T, D] LMM hidden states at the caption tokens.
    layer_weights: [L] the head's learnt `text_layer_weights` (1.0 at start, as in the
      references: the softmax starts uniform over layers).
    Returns [T, D] in the dtype of `hidden`.
    """
    weights = torch.softmax(layer_weights, dim=0)
    return (hidden * weights[:, None, None]).sum(dim=0)


def phrase_attention(
    features: LMMFeatures, dtype: torch.dtype, pooling: torch.Tensor | None = None
) -> torch.Tensor:
    """`attention_prior` of `features.attn` in `dtype`, [n, L*H, g, g], or the precomputed
    `features.attn_prior` (`with_attention_prior`), which holds the same values.

    pooling: optional [n, T] `phrase_pooling(features.mask_ids, dtype)`, to avoid recomputing it.
    """
    if features.attn is None:
        if features.attn_prior is None:
            raise ValueError("LMMFeatures has neither attn nor attn_prior")
        return features.attn_prior.to(dtype)
    if pooling is None:
        pooling = phrase_pooling(features.mask_ids, dtype=dtype)
    return attention_prior(features.attn.to(dtype), pooling)


@torch.no_grad()
def with_attention_prior(features: LMMFeatures, dtype: torch.dtype) -> LMMFeatures:
    """The features with `attn` [L, H, T, g, g] replaced by `attn_prior` [n, L*H, g, g]
    (`phrase_attention` in `dtype`). The pooling has no parameter, so a head gives the same
    output on either; a training step keeps n phrase maps per sample instead of T token maps
    until its backward (`GroundingModel` calls the head's `prepare_features`)."""
    if features.attn is None:
        return features
    return dataclasses.replace(features, attn=None, attn_prior=phrase_attention(features, dtype))
