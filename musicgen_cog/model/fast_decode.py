"""The LM's decoding step over a preallocated KV cache shared by several requests (slots).

audiocraft rebuilds every layer's KV cache with `torch.cat` at each step and walks its modules
through Python streaming state, one request at a time. Here each request owns a slot: two rows
(its conditional and unconditional CFG rows) of one cache, sized at first use for a whole window. A request's prefix
(its conditions and any audio prompt) runs audiocraft's own forward; the keys and values it
leaves are copied into the slot, and every later step runs one function over the cache with
audiocraft's own modules.

Two ways to run a step, chosen by device:
- per slot (CPU): each slot's rows attend to exactly their filled part of the cache, the CFG
  pair as one batch of 2, which is exactly audiocraft's arithmetic (oneDNN picks other kernels
  for other row counts, so rows of several requests are not stacked: a request's numbers must
  not depend on its company);
- all slots at once (CUDA): every row of the cache in one fixed-shape call, each row at its own
  position under a mask over whole buckets of KV_BUCKET positions, captured once per bucket in
  a CUDA graph and replayed; the row count never changes, so neither do a row's numbers.
"""

from __future__ import annotations

import logging
import os
import typing as tp

import torch
import torch.nn.functional as F
from audiocraft.models.lm import LMModel
from audiocraft.modules.transformer import create_sin_embedding

if tp.TYPE_CHECKING:
    from audiocraft.models import MusicGen

log = logging.getLogger(__name__)
DECODER_ENV = "MUSICGEN_DECODER"  # "fast" (default) or "audiocraft"
# Fixed-shape steps attend to whole buckets of the cache: smaller buckets read fewer unused
# keys/values per step, larger ones need fewer graphs (a 30 s window spans 7 of 256).
KV_BUCKET = 256
# Condition tokens a request usually puts before its window (a prompt's T5 tokens, 235 chroma
# frames of a 30 s melody): the cache is sized for a whole window after this many at first use.
TYPICAL_PREFIX = 512
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


def decoder_choice() -> str:
    """MUSICGEN_DECODER: "fast" (default, our step and shared loop) or "audiocraft" (its own loop)."""
    choice = os.environ.get(DECODER_ENV, "fast")
    if choice not in ("fast", "audiocraft"):
        raise ValueError(f"{DECODER_ENV} must be 'fast' or 'audiocraft', got {choice!r}")
    return choice


class SlotDecoder:
    """The LM's forward for requests held in `slots` slots of one KV cache (rows 2s and 2s+1: slot s)."""

    def __init__(
        self, lm: LMModel, slots: int, batched: bool = False, graphs: bool = False, min_length: int = KV_BUCKET
    ):
        # Any: audiocraft's submodules are reached by attribute, which torch types as `Tensor | Module`
        self.lm: tp.Any = lm
        self.slots = slots
        self.batched = batched  # all slots in one fixed-shape call (CUDA) instead of one call per slot
        self.graphs_enabled = graphs  # replay captured steps (CUDA); turned off for good if a capture fails
        self.graphs: dict[tuple, CudaGraphStep] = {}  # by (rows, attended length); valid for these caches
        self.caches: Caches = []
        self.min_length = min_length  # positions allocated at first use: growing later drops every graph

    @property
    def rows(self) -> int:
        return 2 * self.slots

    def cache_length(self) -> int:
        return self.caches[0][0].shape[2] if self.caches else 0

    @torch.no_grad()
    def prefill(self, slot: int, sequence: torch.Tensor, conditions: dict, steps: int) -> tuple[torch.Tensor, int]:
        """Run audiocraft's forward over a request's prefix ([2, K, T]: the CFG pair of its sequence
        so far) with its condition tensors; keep its keys/values in `slot`, with room for `steps`
        more. Returns the logits [2, K, card] of the last position and the positions now filled."""
        lm = self.lm
        with lm.streaming():
            logits = lm(sequence, conditions=[], condition_tensors=conditions)[:, :, -1]
            layers = lm.transformer.layers
            first = layers[0].self_attn._streaming_state["past_keys"]  # [2, heads, filled, head_dim]
            filled = first.shape[2]
            self._ensure_cache(first, filled + steps)
            rows = slice(2 * slot, 2 * slot + 2)
            for layer, (keys, values) in zip(layers, self.caches, strict=True):
                state = layer.self_attn._streaming_state
                keys[rows, :, :filled] = state["past_keys"]
                values[rows, :, :filled] = state["past_values"]
                # stale entries of an earlier, longer request stay masked; they must also stay finite
                keys[rows, :, filled:].zero_()
                values[rows, :, filled:].zero_()
        return logits, filled

    def _ensure_cache(self, like: torch.Tensor, needed: int) -> None:
        """Allocate (or grow, keeping every slot's entries) the cache to hold `needed` positions."""
        if self.caches and self.cache_length() >= needed and self.caches[0][0].dtype == like.dtype:
            return
        needed = max(needed, self.min_length, self.cache_length())
        length = -(-needed // KV_BUCKET) * KV_BUCKET  # whole buckets
        _, heads, _, head_dim = like.shape
        old = self.caches
        self.graphs.clear()  # captured against the old caches' memory
        self.caches = [
            (like.new_zeros(self.rows, heads, length, head_dim), like.new_zeros(self.rows, heads, length, head_dim))
            for _ in self.lm.transformer.layers
        ]
        for (keys, values), (old_keys, old_values) in zip(self.caches, old, strict=False):
            keys[:, :, : old_keys.shape[2]] = old_keys
            values[:, :, : old_values.shape[2]] = old_values
        log.info("KV cache: %d slots x %d positions", self.slots, length)

    def step_slot(self, slot: int, tokens: torch.Tensor, position: int) -> torch.Tensor:
        """Logits [2, K, card] for one slot's CFG pair of tokens [2, K, 1] at cache `position`."""
        rows = slice(2 * slot, 2 * slot + 2)
        caches = [(keys[rows], values[rows]) for keys, values in self.caches]
        return self._forward(tokens, caches, position)[:, :, 0]

    def step_all(self, tokens: torch.Tensor, positions: torch.Tensor, furthest: int) -> torch.Tensor:
        """Logits [rows, K, card] for tokens [rows, K, 1] of every row, row r at `positions[r]`, none
        past `furthest` (rows of free slots compute harmless numbers at their own positions)."""
        length = self.attended_length(furthest)
        graph = self._graph(tokens, positions, length) if self.graphs_enabled else None
        if graph is not None:
            return graph.run(tokens, positions)[:, :, 0]
        return self._forward(tokens, self.caches, positions, length)[:, :, 0]

    def attended_length(self, position: int) -> int:
        """Cache positions a fixed-shape step up to `position` attends to: whole buckets up to it."""
        return min(self.cache_length(), (position // KV_BUCKET + 1) * KV_BUCKET)

    def _graph(self, tokens: torch.Tensor, positions: torch.Tensor, length: int) -> CudaGraphStep | None:
        key = (tokens.shape[0], length)
        if key not in self.graphs:
            try:
                self.graphs[key] = CudaGraphStep(self, tokens, positions, length)
            except RuntimeError as exc:  # a driver or kernel that cannot be captured: stay correct, run eagerly
                log.warning("CUDA graph capture failed (%s); decoding without graphs from now on", exc)
                self.graphs_enabled = False
                return None
        return self.graphs[key]

    @torch.no_grad()
    def _forward(
        self, sequence: torch.Tensor, caches: Caches, position: int | torch.Tensor, length: int = 0
    ) -> torch.Tensor:
        """One step, logits [B, K, 1, card]. An int position attends to the filled part of the cache
        (exactly audiocraft's numbers); per-row positions (a tensor [B]) attend to the first `length`
        positions under a mask, with shapes that do not depend on the positions (graphable)."""
        lm, transformer = self.lm, self.lm.transformer
        x = sum([lm.emb[k](sequence[:, k]) for k in range(lm.num_codebooks)])
        batch = x.shape[0]
        if isinstance(position, torch.Tensor):
            positions = position.view(batch, 1, 1)
            rows = torch.arange(batch, device=x.device)
            mask = (torch.arange(length, device=x.device).view(1, -1) <= position.view(-1, 1)).view(batch, 1, 1, -1)
        else:
            positions = torch.full((1, 1, 1), position, device=x.device)
        x = x + transformer.positional_scale * create_sin_embedding(
            positions, x.shape[-1], max_period=transformer.max_period, dtype=x.dtype
        )
        for layer, (keys, values) in zip(transformer.layers, caches, strict=True):
            attn = layer.self_attn
            projected = F.linear(layer.norm1(x), attn.in_proj_weight, attn.in_proj_bias)
            q, k, v = projected.view(batch, 1, 3, attn.num_heads, -1).permute(0, 3, 2, 1, 4).unbind(dim=2)
            if isinstance(position, torch.Tensor):
                keys[rows, :, position] = k[:, :, 0].to(keys.dtype)
                values[rows, :, position] = v[:, :, 0].to(values.dtype)
                y = F.scaled_dot_product_attention(
                    q, keys[:, :, :length].to(q.dtype), values[:, :, :length].to(q.dtype), attn_mask=mask
                )
            else:
                keys[:, :, position] = k[:, :, 0]
                values[:, :, position] = v[:, :, 0]
                y = F.scaled_dot_product_attention(q, keys[:, :, : position + 1], values[:, :, : position + 1])
            y = attn.out_proj(y.to(x.dtype).transpose(1, 2).reshape(batch, 1, -1))
            x = x + layer.layer_scale_1(layer.dropout1(y))
            x = x + layer.layer_scale_2(layer._ff_block(layer.norm2(x)))
        if lm.out_norm:
            x = lm.out_norm(x)
        return torch.stack([lm.linears[k](x) for k in range(lm.num_codebooks)], dim=1)


class CudaGraphStep:
    """The all-slots step for one attended length, captured once in a CUDA graph, then replayed.

    Capture runs the step at the current positions (warm-up and capture write those positions'
    keys/values, which the real step rewrites), so it is built right before the step it serves
    and with its inputs.
    It runs under the caller's autocast (audiocraft keeps the embeddings and output layers in
    fp32 and relies on it) with autocast's weight-cast cache off: a cached cast is freed when
    the caller's autocast exits, and a graph that captured it would read freed memory.
    """

    def __init__(self, decoder: SlotDecoder, tokens: torch.Tensor, positions: torch.Tensor, length: int):
        self.tokens = tokens.clone()
        self.positions = positions.clone()
        self.length = length
        device = tokens.device.type
        with torch.autocast(
            device,
            dtype=torch.get_autocast_dtype(device),
            enabled=torch.is_autocast_enabled(device),
            cache_enabled=False,
        ):
            self.logits = self._capture(lambda: decoder._forward(self.tokens, decoder.caches, self.positions, length))

    def _capture(self, step: tp.Callable[[], torch.Tensor]) -> torch.Tensor:
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(2):
                step()
        torch.cuda.current_stream().wait_stream(stream)
        self.graph = torch.cuda.CUDAGraph()
        # thread_local: requests' threads keep running their own CUDA work (T5, stems, codec) meanwhile
        with torch.cuda.graph(self.graph, capture_error_mode="thread_local"):
            return step()

    def replay(self) -> None:
        self.graph.replay()

    def run(self, tokens: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        self.tokens.copy_(tokens)
        self.positions.copy_(positions)
        self.replay()
        return self.logits


def slot_decoder_for(musicgen: MusicGen, slots: int, batched: bool | None = None) -> SlotDecoder | None:
    """Our step for `musicgen`'s LM, or None for audiocraft's own loop (MUSICGEN_DECODER=audiocraft,
    or an architecture the step does not reproduce). `batched`: all slots in one step (default:
    on a GPU only; a CPU can run it to compare)."""
    lm = musicgen.lm
    reason = unsupported_reason(lm)
    if decoder_choice() == "audiocraft" or reason:
        log.info("decoding with audiocraft's own loop, one request at a time%s", f" ({reason})" if reason else "")
        return None
    # On a GPU, fixed shapes let each step be one CUDA graph replay; on a CPU, per-slot attention
    # reproduces audiocraft's numbers exactly and launch overhead matters little.
    cuda = next(lm.parameters()).is_cuda
    window_steps = int(musicgen.max_duration * musicgen.frame_rate) + lm.num_codebooks + 1
    return SlotDecoder(
        lm,
        slots,
        batched=cuda if batched is None else batched,
        graphs=cuda,
        min_length=window_steps + TYPICAL_PREFIX,
    )
