"""The LM's decoding step over a preallocated KV cache shared by several requests (slots).

audiocraft rebuilds every layer's KV cache with `torch.cat` at each step and walks its modules
through Python streaming state, one request at a time. Here each request owns a slot: two rows
(its conditional and unconditional CFG rows) of one cache, allocated once for the longest prefix
an accepted request can bring and a whole window after it. A request's prefix (its conditions
and any audio prompt) runs audiocraft's own forward; the keys and values it leaves are copied
into the slot, and every later step runs one function over the cache with audiocraft's own
modules, either for one slot at its filled length (exactly audiocraft's arithmetic) or for every
row at its own position (fixed shapes, for CUDA graphs). `steps.py` chooses and drives them.
"""

from __future__ import annotations

import logging
import typing as tp
from functools import partial

import torch
import torch.nn.functional as F
from audiocraft.models.lm import LMModel
from audiocraft.modules.transformer import create_sin_embedding

from .attention import masked_sdpa, rowwise_attention
from .conditions import unbounded_conditioner
from .window import Window

log = logging.getLogger(__name__)
# The cache holds whole buckets of positions; the CPU's fold and SDPA's mask reach whole buckets
# (smaller ones read fewer unused positions, larger ones need fewer SDPA graphs).
KV_BUCKET = 256
Caches = list[tuple[torch.Tensor, torch.Tensor]]  # per layer: keys, values [rows, heads, length, head_dim]


def unsupported_reason(lm: LMModel) -> str | None:
    """Why this LM's architecture cannot use the fast step, or None when it can."""
    from audiocraft.modules import transformer as transformer_module

    transformer = lm.transformer
    if transformer_module._efficient_attention_backend != "torch":
        return "an attention backend other than torch's scaled_dot_product_attention"
    if lm.fuser.fuse2cond["cross"] or lm.fuser.fuse2cond["sum"] or lm.fuser.fuse2cond["input_interpolate"]:
        return "conditions fused other than by prepending (cross-attention, sum)"
    if transformer.positional_embedding != "sin":
        return f"positional embedding {transformer.positional_embedding!r}"
    unbounded = unbounded_conditioner(lm)
    if unbounded:
        return f"a conditioner whose length the cache cannot be sized for: {unbounded}"
    layers: tp.Any = transformer.layers  # torch types submodules as `Tensor | Module`
    for layer in layers:
        attn = layer.self_attn
        if (
            not attn.memory_efficient
            or attn.kv_repeat != 1
            or attn.past_context is not None
            or attn.qk_layer_norm
            or attn.attention_as_float32
            or attn.rope is not None
            or not layer.norm_first
        ):
            return "an attention variant other than MusicGen's (memory-efficient, causal, pre-norm, no rope)"
    return None


def kv_bytes_per_slot(lm: tp.Any, positions: int, dtype: torch.dtype) -> int:
    """Memory one slot of `lm` takes in a cache of `positions`."""
    return kv_bytes(len(lm.transformer.layers), lm.transformer.layers[0].self_attn.embed_dim, positions, dtype)


def kv_bytes(layers: int, dim: int, positions: int, dtype: torch.dtype) -> int:
    """Keys and values of a slot's 2 rows in every layer, over `positions` rounded up to buckets."""
    length = -(-positions // KV_BUCKET) * KV_BUCKET
    return 2 * 2 * layers * length * dim * torch.empty((), dtype=dtype).element_size()


class SlotDecoder:
    """The LM's forward for requests held in `slots` slots of one KV cache (rows 2s and 2s+1: slot s)
    of `length` positions (rounded up to whole buckets), allocated at first use and never again."""

    def __init__(self, lm: LMModel, slots: int, length: int, attention: str = "rowwise"):
        # Any: audiocraft's submodules are reached by attribute, which torch types as `Tensor | Module`
        self.lm: tp.Any = lm
        self.slots = slots
        self.length = -(-length // KV_BUCKET) * KV_BUCKET
        self.attention = attention  # of the batched step: "rowwise" or "sdpa" (a DecodingPath's)
        self.caches: Caches = []

    @property
    def rows(self) -> int:
        return 2 * self.slots

    def cache_length(self) -> int:
        return self.caches[0][0].shape[2] if self.caches else 0

    @torch.no_grad()
    def prefill(self, window: Window) -> tuple[torch.Tensor, int]:
        """Run audiocraft's forward over `window`'s prefix (the CFG pair of its sequence before
        `first_step`) with its condition tensors; keep the keys/values in its slot, with room for
        its remaining steps. Returns the logits [2, K, card] of the last position and the
        positions now filled."""
        lm, slot, steps = self.lm, window.slot, window.length - window.first_step
        prefix = window.sequence[..., : window.first_step]
        with lm.streaming():
            logits = lm(torch.cat([prefix, prefix]), conditions=[], condition_tensors=window.conditions)[:, :, -1]
            layers = lm.transformer.layers
            first = layers[0].self_attn._streaming_state["past_keys"]  # [2, heads, filled, head_dim]
            filled = first.shape[2]
            if filled + steps > self.length:  # the bounds of conditions.py keep every accepted request inside
                raise ValueError(f"this window needs {filled + steps} cache positions; the cache holds {self.length}")
            self._allocate(first)
            rows = slice(2 * slot, 2 * slot + 2)
            for layer, (keys, values) in zip(layers, self.caches, strict=True):
                state = layer.self_attn._streaming_state
                keys[rows, :, :filled] = state["past_keys"]
                values[rows, :, :filled] = state["past_values"]
                # stale entries of an earlier, longer request are never read; they must stay finite
                keys[rows, :, filled:].zero_()
                values[rows, :, filled:].zero_()
        return logits, filled

    def _allocate(self, like: torch.Tensor) -> None:
        """The cache, the first time: `length` positions of `like`'s dtype for every slot."""
        if self.caches:
            return
        _, heads, _, head_dim = like.shape
        shape = (self.rows, heads, self.length, head_dim)
        self.caches = [(like.new_zeros(shape), like.new_zeros(shape)) for _ in self.lm.transformer.layers]
        log.info("KV cache: %d slots x %d positions", self.slots, self.length)

    def step_slot(self, slot: int, tokens: torch.Tensor, position: int) -> torch.Tensor:
        """Logits [2, K, card] for one slot's CFG pair of tokens [2, K, 1] at cache `position`."""
        rows = slice(2 * slot, 2 * slot + 2)
        caches = [(keys[rows], values[rows]) for keys, values in self.caches]
        return self._forward(tokens, caches, position)[:, :, 0]

    def attended_length(self, position: int) -> int:
        """Cache positions a fixed-shape step up to `position` attends to: whole buckets up to it."""
        return min(self.cache_length(), (position // KV_BUCKET + 1) * KV_BUCKET)

    @torch.no_grad()
    def _forward(
        self,
        sequence: torch.Tensor,
        caches: Caches,
        position: int | torch.Tensor,
        length: int = 0,
        busy: tuple[int, ...] | None = None,
    ) -> torch.Tensor:
        """One step, logits [B, K, 1, card]. An int position attends to the filled part of the cache
        (exactly audiocraft's numbers); per-row positions (a tensor [B]: the batched step, the B rows
        being the first B of `caches`) run shapes that never depend on the positions (graphable):
        each row attends to its own filled length (`attention.rowwise_attention`; `length` bounds
        the CPU's fold), or, with MUSICGEN_ATTENTION=sdpa, every row to `length` under a mask.
        `busy`: the slots holding a request, when the host knows them (a CPU's eager step)."""
        lm, transformer = self.lm, self.lm.transformer
        x = sum([lm.emb[k](sequence[:, k]) for k in range(lm.num_codebooks)])
        batch = x.shape[0]
        if isinstance(position, torch.Tensor):
            positions = position.view(batch, 1, 1)
            rows = torch.arange(batch, device=x.device)
            filled = position + 1
        else:
            positions = torch.full((1, 1, 1), position, device=x.device)
        x = x + transformer.positional_scale * create_sin_embedding(
            positions, x.shape[-1], max_period=transformer.max_period, dtype=x.dtype
        )
        apply = partial(self._per_pair, busy=busy) if isinstance(position, torch.Tensor) else _whole
        for layer, (keys, values) in zip(transformer.layers, caches, strict=True):
            attn = layer.self_attn
            projected = apply(partial(_projections, layer), x)
            q, k, v = projected.view(batch, 1, 3, attn.num_heads, -1).permute(0, 3, 2, 1, 4).unbind(dim=2)
            if isinstance(position, torch.Tensor):
                keys[rows, :, position] = k[:, :, 0].to(keys.dtype)
                values[rows, :, position] = v[:, :, 0].to(values.dtype)
                y = self.attend(q, keys, values, filled, length)
            else:
                keys[:, :, position] = k[:, :, 0]
                values[:, :, position] = v[:, :, 0]
                y = F.scaled_dot_product_attention(q, keys[:, :, : position + 1], values[:, :, : position + 1])
            y = apply(attn.out_proj, y.to(x.dtype).transpose(1, 2).reshape(batch, 1, -1))
            x = x + layer.layer_scale_1(layer.dropout1(y))
            x = x + layer.layer_scale_2(apply(partial(_feed_forward, layer), x))
        if lm.out_norm:
            x = lm.out_norm(x)
        return apply(partial(_logits, lm), x)

    def attend(
        self, query: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, lengths: torch.Tensor, span: int
    ) -> torch.Tensor:
        """The batched step's attention: query [B, H, 1, D], row b over the first `lengths[b]`
        positions of row b of keys and values, reading at most `span` (`attention.py`)."""
        attention = masked_sdpa if self.attention == "sdpa" else rowwise_attention
        return attention(query, keys, values, lengths, span)

    @staticmethod
    def _per_pair(
        function: tp.Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, busy: tuple[int, ...] | None
    ) -> torch.Tensor:
        """`function` (matrix products) over the rows of `x`: on a GPU as one product of every row;
        on a CPU one product per CFG pair, each from a fresh buffer. MKL computes a row of a product
        by its place in it (rows 4-5 of a 6-row product differ from rows 0-1, seen with 2 threads)
        and may by its alignment: per pair, a slot's rows get the same arithmetic in any slot. Of
        the `busy` slots only, when given (a CPU pays for every row it multiplies): free slots'
        rows are zeros, which nothing reads."""
        if x.is_cuda or x.shape[0] <= 2:
            return function(x)
        slots = range(x.shape[0] // 2) if busy is None else busy
        products = {slot: function(x[2 * slot : 2 * slot + 2].clone()) for slot in slots}
        first = next(iter(products.values()))
        rows = first.new_zeros((x.shape[0], *first.shape[1:]))
        for slot, product in products.items():
            rows[2 * slot : 2 * slot + 2] = product
        return rows


def _whole(function: tp.Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    return function(x)


# a layer's matrix products, each with what precedes it on the same rows (audiocraft's order)
def _projections(layer: tp.Any, x: torch.Tensor) -> torch.Tensor:
    attn = layer.self_attn
    return F.linear(layer.norm1(x), attn.in_proj_weight, attn.in_proj_bias)


def _feed_forward(layer: tp.Any, x: torch.Tensor) -> torch.Tensor:
    return layer._ff_block(layer.norm2(x))


def _logits(lm: tp.Any, x: torch.Tensor) -> torch.Tensor:
    return torch.stack([lm.linears[k](x) for k in range(lm.num_codebooks)], dim=1)
