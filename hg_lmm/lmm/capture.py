"""Attention rows and hidden states of chosen tokens, recorded while a LLaMA decoder runs fast.

The heads read, per layer and head, the attention probabilities of a few query rows (the caption
or answer tokens) over the N image columns, plus those rows' hidden states: O(L*H*T_q*N) numbers.
`output_attentions=True` instead forces the eager attention and materialises every map,
O(L*H*T^2), and `output_hidden_states=True` keeps every position of every layer.

`RowCapture` leaves the decoder's own attention (SDPA, flash or eager) untouched and records,
with forward hooks on the public submodules of each `LlamaAttention`, `MistralAttention` or
`GemmaAttention` (transformers 4.39.1; Mistral's RoPE table is indexed by position, and its
sliding window must cover the sequence; Gemma's RoPE and attention are Llama's):

- the query projection's output at the requested rows, with RoPE applied by the module's own
  `rotary_emb` at the positions the module received;
- the post-RoPE keys that the KV cache holds once the module has run (a teacher-forced pass runs
  with `use_cache=True` for this and `release_cache=True` empties each layer's entry as soon as
  its rows are taken, so only one layer's keys are alive); without a cache, the key
  projection's output, rotated the same way (no projection is computed twice);

then computes softmax(q k^T / sqrt(d)) of those rows over *all* keys, causal and
padding-masked, as the eager attention does (the product in the model's dtype, the softmax in
float32), and keeps the image columns only. Hidden states come
from hooks on the decoder layers and on the final norm: HF's `hidden_states[1:]`, whose last
entry is taken after the norm.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
from torch import nn
from transformers.models.gemma.modeling_gemma import GemmaAttention
from transformers.models.llama.modeling_llama import (
    LlamaAttention,
    apply_rotary_pos_emb,
    repeat_kv,
)
from transformers.models.mistral.modeling_mistral import MistralAttention


@dataclass
class _Call:
    """What one attention call needs between its hooks (rows are indices into the chunk)."""

    rows: torch.Tensor  # [B, R] long
    query_positions: torch.Tensor  # [B, R] long, absolute positions in the sequence
    position_ids: torch.Tensor  # [1 or B, T_chunk], what RoPE was given
    cache: Any
    q: torch.Tensor | None = None  # [B, R, H*d], before RoPE
    k: torch.Tensor | None = None  # [B, T_chunk, H_kv*d], before RoPE (no cache only)


def _gather_rows(x: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """x [B', T, ...] (B' = 1 broadcasts), rows [B, R] -> [B, R, ...]."""
    x = x.expand(rows.shape[0], *x.shape[1:])
    index = rows.reshape(*rows.shape, *([1] * (x.dim() - 2))).expand(-1, -1, *x.shape[2:])
    return x.gather(1, index)


class RowCapture:
    """Context manager recording chosen rows of a `LlamaModel`'s forward passes.

    Arguments:
      decoder: the `LlamaModel` (`LlamaForCausalLM.model`, i.e. without the LM head).
      columns: [B, N] long, the key positions whose probabilities are kept (the image tokens).
      rows: [B, R] long, absolute query positions to record in one forward (teacher forcing):
        from position 0, or a chunk that continues a KV-cached prefix (the rows are then in the
        chunk; the keys read from the cache cover prefix and chunk). Shorter samples pad their
        rows with any position of the chunk and drop them afterwards.
      from_position: instead of `rows`, record every query at a position >= this, across all
        forwards inside the block (KV-cache generation; every batch row shares positions).
      key_mask: optional [B, T] bool, False at padding keys (right padding).
      release_cache: empty each layer's KV-cache entry once its rows are computed (for a
        teacher-forced forward run with `use_cache=True` only to read the post-RoPE keys; the
        cache is then of no further use).

    After the block, `attn` is [L, B, H, R, N] float32 (softmax over all keys, then the
    `columns`), `hidden` is [L, B, R, D] in the decoder's dtype, and `num_rows` is R.
    Memory is O(L*H*R*N) for the records plus one layer's keys at a time.
    """

    def __init__(
        self,
        decoder: nn.Module,
        *,
        columns: torch.Tensor,
        rows: torch.Tensor | None = None,
        from_position: int | None = None,
        key_mask: torch.Tensor | None = None,
        release_cache: bool = False,
    ) -> None:
        if (rows is None) == (from_position is None):
            raise ValueError("pass exactly one of rows= (teacher forcing) or from_position=")
        layers = list(getattr(decoder, "layers", []))
        bad = [type(layer.self_attn).__name__ for layer in layers if not _is_llama(layer)]
        if not layers or bad or not hasattr(decoder, "norm"):
            raise TypeError(
                "RowCapture needs a transformers LlamaModel, MistralModel or GemmaModel "
                "(layers[i].self_attn a "
                f"Llama, Mistral or Gemma attention, a final `norm`); got "
                f"{type(decoder).__name__} {bad}"
            )
        self.layers = layers
        self.norm = decoder.norm
        self.columns = columns
        self.rows = rows
        self.from_position = from_position
        self.key_mask = key_mask
        self.release_cache = release_cache
        self._attn: list[list[torch.Tensor]] = [[] for _ in layers]
        self._hidden: list[list[torch.Tensor]] = [[] for _ in layers]
        self._call: _Call | None = None
        self._rows: torch.Tensor | None = None  # rows of the forward in progress
        self._handles: list[Any] = []

    # --- results ----------------------------------------------------------------------------

    @property
    def num_rows(self) -> int:
        return sum(a.shape[2] for a in self._attn[0])

    @property
    def attn(self) -> torch.Tensor:
        """[L, B, H, R, N] float32."""
        return torch.stack([torch.cat(a, dim=2) for a in self._attn])

    @property
    def hidden(self) -> torch.Tensor:
        """[L, B, R, D]: outputs of layers 0..L-2, then the final norm's output."""
        return torch.stack([torch.cat(h, dim=1) for h in self._hidden])

    # --- hooks ------------------------------------------------------------------------------

    def __enter__(self) -> RowCapture:
        last = len(self.layers) - 1
        for i, layer in enumerate(self.layers):
            attn = layer.self_attn
            self._handles += [
                attn.register_forward_pre_hook(self._before_attention, with_kwargs=True),
                attn.q_proj.register_forward_hook(partial(self._keep, "q")),
                attn.k_proj.register_forward_hook(partial(self._keep, "k")),
                attn.register_forward_hook(partial(self._after_attention, i), with_kwargs=True),
            ]
            if i < last:  # the last entry is taken after the final norm, as HF does
                self._handles.append(layer.register_forward_hook(partial(self._after_layer, i)))
        self._handles.append(self.norm.register_forward_hook(partial(self._after_layer, last)))
        return self

    def __exit__(self, *exc: Any) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self._call = None

    def _select(self, cache_position: torch.Tensor, batch: int) -> torch.Tensor | None:
        """Indices into this chunk of the rows to record, [B, R], or None for none."""
        if self.rows is not None:
            start = int(cache_position[0])
            rows = self.rows.to(cache_position.device) - start
            if rows.numel() and (int(rows.min()) < 0 or int(rows.max()) >= len(cache_position)):
                raise RuntimeError(
                    f"RowCapture(rows=...) records one forward, and rows {self.rows.tolist()} are "
                    f"not all in its chunk (positions {start}..{start + len(cache_position) - 1});"
                    " use from_position= across several KV-cache steps"
                )
            return rows
        chosen = (cache_position >= self.from_position).nonzero().flatten()
        return chosen[None].expand(batch, -1) if len(chosen) else None

    def _before_attention(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        hidden = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
        batch, length = hidden.shape[:2]
        cache = kwargs.get("past_key_value")
        cache_position = kwargs.get("cache_position")
        if cache_position is None:
            past = cache.get_seq_length(module.layer_idx) if cache is not None else 0
            cache_position = torch.arange(past, past + length, device=hidden.device)
        position_ids = kwargs.get("position_ids")
        if position_ids is None:
            position_ids = cache_position[None]
        rows = self._select(cache_position, batch)
        self._rows = rows
        self._call = None
        if rows is not None:
            self._call = _Call(rows, cache_position[rows], position_ids, cache)

    def _keep(self, name: str, module: nn.Module, args: tuple, output: torch.Tensor) -> None:
        call = self._call
        if call is None:
            return
        if name == "q":
            call.q = _gather_rows(output, call.rows)
        elif call.cache is None:  # with a cache, the post-RoPE keys are read from it
            call.k = output

    def _after_attention(
        self, index: int, module: nn.Module, args: tuple, kwargs: dict, output: Any
    ) -> None:
        call, self._call = self._call, None
        if call is None:
            return
        if call.q is None or (call.cache is None and call.k is None):
            raise RuntimeError(
                f"layer {index}'s attention did not call q_proj/k_proj (pretraining_tp > 1?); "
                "RowCapture cannot read its queries and keys"
            )
        batch, num_rows = call.rows.shape
        heads, head_dim = module.num_heads, module.head_dim
        q = call.q.view(batch, num_rows, heads, head_dim).transpose(1, 2)
        # The module's own RoPE at the positions it was given; rows are picked afterwards so
        # that position-dependent variants (dynamic NTK) see what the module saw.
        cos, sin = _rotary(module, q, call.position_ids)
        q, _ = apply_rotary_pos_emb(
            q, q, _gather_rows(cos, call.rows), _gather_rows(sin, call.rows)
        )
        if call.cache is not None:
            keys = call.cache[module.layer_idx][0]
            if self.release_cache:  # transformers 4.39's DynamicCache: per-layer lists
                call.cache.key_cache[module.layer_idx] = keys.new_empty(0)
                call.cache.value_cache[module.layer_idx] = keys.new_empty(0)
        else:
            keys = call.k.view(batch, -1, module.num_key_value_heads, head_dim).transpose(1, 2)
            keys, _ = apply_rotary_pos_emb(keys, keys, cos, sin)
        window = getattr(module.config, "sliding_window", None)
        if isinstance(module, MistralAttention) and window and keys.shape[2] > window:
            # The causal mask below has no window; past it the records would not be the model's.
            raise ValueError(
                f"sequence of {keys.shape[2]} tokens is longer than Mistral's sliding window "
                f"({window}); RowCapture computes full causal attention, shorten the input"
            )
        keys = repeat_kv(keys, module.num_key_value_groups)
        scores = torch.matmul(q, keys.transpose(2, 3)) / math.sqrt(head_dim)
        key_pos = torch.arange(keys.shape[2], device=keys.device)
        allowed = key_pos[None, None, :] <= call.query_positions[:, :, None]  # causal, [B, R, K]
        if self.key_mask is not None:
            allowed = allowed & self.key_mask[:, None, : keys.shape[2]].to(allowed.device)
        scores = scores.masked_fill(~allowed[:, None], float("-inf"))
        probs = scores.softmax(dim=-1, dtype=torch.float32)
        columns = self.columns.to(probs.device)[:, None, None, :]
        self._attn[index].append(probs.gather(-1, columns.expand(-1, heads, num_rows, -1)))

    def _after_layer(self, index: int, module: nn.Module, args: tuple, output: Any) -> None:
        if self._rows is None:
            return
        states = output[0] if isinstance(output, tuple) else output
        self._hidden[index].append(_gather_rows(states, self._rows))


def _is_llama(layer: nn.Module) -> bool:
    return isinstance(
        getattr(layer, "self_attn", None), (LlamaAttention, MistralAttention, GemmaAttention)
    )


def _rotary(
    module: nn.Module, x: torch.Tensor, position_ids: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(cos, sin) [1 or B, T, d] at `position_ids` from the module's own rotary embedding: Llama's
    takes the positions, Mistral's returns a table up to `seq_len` that is indexed by them."""
    if isinstance(module, MistralAttention):
        cos, sin = module.rotary_emb(x, seq_len=int(position_ids.max()) + 1)
        return cos[position_ids], sin[position_ids]
    return module.rotary_emb(x, position_ids)
