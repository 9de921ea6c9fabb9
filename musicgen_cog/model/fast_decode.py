"""Token decoding on a preallocated KV cache: audiocraft's generate loop, our per-step forward.

audiocraft rebuilds every layer's KV cache with `torch.cat` at each step and walks its modules
through Python streaming state. We replace only `LMModel._sample_next_token`: the first call of
each `generate` (the conditioning prefix and any audio prompt) runs audiocraft's own forward;
its keys and values are copied into a cache allocated once, and every later step runs one
function over that cache, the CFG pair in one batch, with audiocraft's own modules, sampling
functions and RNG. Patterns, prompts, windows and melody looping stay audiocraft's.

With `static_shapes` the step attends to a fixed-length window of the cache (the filled part
rounded up to a bucket of KV_BUCKET positions, masked by position), so each bucket has fixed
shapes: on a GPU one CUDA graph per bucket is captured once and replayed at every step.
"""

from __future__ import annotations

import logging
import os
import typing as tp

import torch
import torch.nn.functional as F
from audiocraft.models.lm import LMModel
from audiocraft.modules.transformer import create_sin_embedding
from audiocraft.utils import utils

if tp.TYPE_CHECKING:
    from audiocraft.models import MusicGen

log = logging.getLogger(__name__)
DECODER_ENV = "MUSICGEN_DECODER"  # "fast" (default) or "audiocraft"
# Fixed-shape steps attend to whole buckets of the cache: smaller buckets read fewer unused
# keys/values per step, larger ones need fewer graphs (a 30 s window spans 7 of 256).
KV_BUCKET = 256


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


class StaticCacheDecoder:
    """Installs itself as `lm._sample_next_token`; one instance per loaded LM."""

    def __init__(self, lm: LMModel, max_steps: int, static_shapes: bool = False, graphs: bool = False):
        # Any: audiocraft's submodules are reached by attribute, which torch types as `Tensor | Module`
        self.lm: tp.Any = lm
        self.audiocraft_step = lm._sample_next_token
        self.max_steps = max_steps  # decoding steps one `generate` call can take (one window)
        self.static_shapes = static_shapes
        self.graphs_enabled = graphs  # replay captured steps (CUDA); turned off for good if a capture fails
        self.graphs: dict[tuple, CudaGraphStep] = {}  # by (token shape, attended length); valid for these caches
        self.caches: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.position = 0

    def install(self) -> None:
        self.lm._sample_next_token = self._sample_next_token

    def _sample_next_token(
        self,
        sequence: torch.Tensor,
        cfg_conditions,
        unconditional_state,
        use_sampling: bool,
        temp: float,
        top_k: int,
        top_p: float,
        cfg_coef: float | None = None,
        two_step_cfg: bool | None = None,
    ) -> torch.Tensor:
        two_step = self.lm.two_step_cfg if two_step_cfg is None else two_step_cfg
        if two_step or "offsets" not in self.lm.transformer._streaming_state:
            token = self.audiocraft_step(
                sequence,
                cfg_conditions,
                unconditional_state,
                use_sampling,
                temp,
                top_k,
                top_p,
                cfg_coef=cfg_coef,
                two_step_cfg=two_step_cfg,
            )
            if not two_step:
                self._take_prefix_cache()
            return token
        batch = sequence.shape[0]
        if cfg_conditions:
            sequence = torch.cat([sequence, sequence], dim=0)
        all_logits = self._step(sequence)
        cfg_coef = self.lm.cfg_coef if cfg_coef is None else cfg_coef
        if cfg_conditions:
            cond_logits, uncond_logits = all_logits.split(batch, dim=0)
            logits = uncond_logits + (cond_logits - uncond_logits) * cfg_coef
        else:
            logits = all_logits
        logits = logits.permute(0, 1, 3, 2)[..., -1]
        if use_sampling and temp > 0.0:
            probs = torch.softmax(logits / temp, dim=-1)
            if top_p > 0.0:
                return utils.sample_top_p(probs, p=top_p)
            if top_k > 0:
                return utils.sample_top_k(probs, k=top_k)
            return utils.multinomial(probs, num_samples=1)
        return torch.argmax(logits, dim=-1, keepdim=True)

    def _take_prefix_cache(self) -> None:
        """Copy audiocraft's streaming keys/values after the prefix step into the static cache."""
        layers = self.lm.transformer.layers
        first = layers[0].self_attn._streaming_state["past_keys"]  # [B, H, T, D]
        batch, heads, prefix, head_dim = first.shape
        length = -(-(prefix + self.max_steps) // KV_BUCKET) * KV_BUCKET  # whole buckets
        if (
            not self.caches
            or self.caches[0][0].shape[0] != batch
            or self.caches[0][0].shape[2] < length
            or self.caches[0][0].dtype != first.dtype
            or self.caches[0][0].device != first.device
        ):
            self.graphs.clear()  # captured against the old caches' memory
            self.caches = [
                (first.new_zeros(batch, heads, length, head_dim), first.new_zeros(batch, heads, length, head_dim))
                for _ in layers
            ]
        for layer, (keys, values) in zip(layers, self.caches, strict=True):
            state = layer.self_attn._streaming_state
            keys[:, :, :prefix] = state["past_keys"]
            values[:, :, :prefix] = state["past_values"]
            if self.static_shapes:  # stale entries from a longer earlier request must stay masked and finite
                keys[:, :, prefix:].zero_()
                values[:, :, prefix:].zero_()
        self.position = prefix

    def _step(self, sequence: torch.Tensor) -> torch.Tensor:
        """Logits [B, K, 1, card] for one new token per row, extending the cache by one position."""
        position = self.position
        self.position += 1
        if not self.static_shapes:
            return self._forward(sequence, position)
        length = self.attended_length(position)
        graph = self._graph(sequence, length) if self.graphs_enabled else None
        if graph is not None:
            return graph.run(sequence, position)
        return self._forward(sequence, torch.tensor(position, device=sequence.device), length)

    def attended_length(self, position: int) -> int:
        """Cache positions a fixed-shape step at `position` attends to: whole buckets up to it."""
        return min(self.caches[0][0].shape[2], (position // KV_BUCKET + 1) * KV_BUCKET)

    def _graph(self, sequence: torch.Tensor, length: int) -> CudaGraphStep | None:
        key = (tuple(sequence.shape), length)
        if key not in self.graphs:
            try:
                self.graphs[key] = CudaGraphStep(self, sequence, length)
            except RuntimeError as exc:  # a driver or kernel that cannot be captured: stay correct, run eagerly
                log.warning("CUDA graph capture failed (%s); decoding without graphs from now on", exc)
                self.graphs_enabled = False
                return None
        return self.graphs[key]

    @torch.no_grad()
    def _forward(self, sequence: torch.Tensor, position: int | torch.Tensor, length: int = 0) -> torch.Tensor:
        """One step. An int position attends to the filled part of the cache (exactly audiocraft's
        numbers); a tensor position attends to the first `length` positions under a mask, with
        shapes that do not depend on the position (graphable)."""
        lm, transformer = self.lm, self.lm.transformer
        x = sum([lm.emb[k](sequence[:, k]) for k in range(lm.num_codebooks)])
        if isinstance(position, torch.Tensor):
            positions = position.view(1, 1, 1)
            index = position.view(1)
            mask = (torch.arange(length, device=x.device) <= position).view(1, 1, 1, -1)
        else:
            positions = torch.full((1, 1, 1), position, device=x.device)
        x = x + transformer.positional_scale * create_sin_embedding(
            positions, x.shape[-1], max_period=transformer.max_period, dtype=x.dtype
        )
        for layer, (keys, values) in zip(transformer.layers, self.caches, strict=True):
            attn = layer.self_attn
            projected = F.linear(layer.norm1(x), attn.in_proj_weight, attn.in_proj_bias)
            q, k, v = projected.view(x.shape[0], 1, 3, attn.num_heads, -1).permute(0, 3, 2, 1, 4).unbind(dim=2)
            if isinstance(position, torch.Tensor):
                keys.index_copy_(2, index, k.to(keys.dtype))
                values.index_copy_(2, index, v.to(values.dtype))
                y = F.scaled_dot_product_attention(
                    q, keys[:, :, :length].to(q.dtype), values[:, :, :length].to(q.dtype), attn_mask=mask
                )
            else:
                keys[:, :, position] = k[:, :, 0]
                values[:, :, position] = v[:, :, 0]
                y = F.scaled_dot_product_attention(q, keys[:, :, : position + 1], values[:, :, : position + 1])
            y = attn.out_proj(y.to(x.dtype).transpose(1, 2).reshape(x.shape[0], 1, -1))
            x = x + layer.layer_scale_1(layer.dropout1(y))
            x = x + layer.layer_scale_2(layer._ff_block(layer.norm2(x)))
        if lm.out_norm:
            x = lm.out_norm(x)
        return torch.stack([lm.linears[k](x) for k in range(lm.num_codebooks)], dim=1)


class CudaGraphStep:
    """The fixed-shape step for one attended length, captured once in a CUDA graph, then replayed.

    Capture runs the step at the current position (warm-up and capture write that position's
    keys/values, which the real step rewrites), so it is built right before the step it serves.
    It runs under the caller's autocast (audiocraft keeps the embeddings and output layers in
    fp32 and relies on it) with autocast's weight-cast cache off: a cached cast is freed when
    the caller's autocast exits, and a graph that captured it would read freed memory.
    """

    def __init__(self, decoder: StaticCacheDecoder, sequence: torch.Tensor, length: int):
        self.tokens = sequence.clone()
        self.position = torch.tensor(decoder.position - 1, device=sequence.device)
        self.length = length
        device = sequence.device.type
        with torch.autocast(
            device,
            dtype=torch.get_autocast_dtype(device),
            enabled=torch.is_autocast_enabled(device),
            cache_enabled=False,
        ):
            self.logits = self._capture(lambda: decoder._forward(self.tokens, self.position, length))

    def _capture(self, step: tp.Callable[[], torch.Tensor]) -> torch.Tensor:
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(2):
                step()
        torch.cuda.current_stream().wait_stream(stream)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            return step()

    def replay(self) -> None:
        self.graph.replay()

    def run(self, sequence: torch.Tensor, position: int) -> torch.Tensor:
        self.tokens.copy_(sequence)
        self.position.fill_(position)
        self.replay()
        return self.logits


def install_fast_decoder(musicgen: MusicGen) -> StaticCacheDecoder | None:
    """Use the static-cache step for `musicgen`'s LM unless `MUSICGEN_DECODER=audiocraft` or it cannot."""
    lm = musicgen.lm
    choice = os.environ.get(DECODER_ENV, "fast")
    if choice not in ("fast", "audiocraft"):
        raise ValueError(f"{DECODER_ENV} must be 'fast' or 'audiocraft', got {choice!r}")
    reason = unsupported_reason(lm)
    if choice == "audiocraft" or reason:
        log.info("decoding with audiocraft's own loop%s", f" ({reason})" if reason else "")
        return None
    # On a GPU, fixed shapes let each step be one CUDA graph replay; on a CPU, the sliced
    # attention reproduces audiocraft's numbers exactly and launch overhead matters little.
    cuda = next(lm.parameters()).is_cuda
    window_steps = int(musicgen.max_duration * musicgen.frame_rate) + lm.num_codebooks + 1  # one generate call
    decoder = StaticCacheDecoder(lm, window_steps, static_shapes=cuda, graphs=cuda)
    decoder.install()
    return decoder
