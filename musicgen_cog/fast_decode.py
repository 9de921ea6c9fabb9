"""Token decoding on a preallocated KV cache: audiocraft's generate loop, our per-step forward.

audiocraft rebuilds every layer's KV cache with `torch.cat` at each step and walks its modules
through Python streaming state. We replace only `LMModel._sample_next_token`: the first call of
each `generate` (the conditioning prefix and any audio prompt) runs audiocraft's own forward;
its keys and values are copied into a cache allocated once, and every later step runs one
function over that cache, the CFG pair in one batch, with audiocraft's own modules, sampling
functions and RNG. Patterns, prompts, windows and melody looping stay audiocraft's.

With `static_shapes` every step has the same shapes (attention over the whole cache, masked
by position), which is what a CUDA graph captures once and replays.
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

log = logging.getLogger(__name__)
DECODER_ENV = "MUSICGEN_DECODER"  # "fast" (default) or "audiocraft"


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
    for layer in transformer.layers:
        attn = layer.self_attn
        if not attn.memory_efficient or attn.kv_repeat != 1 or attn.past_context is not None or attn.qk_layer_norm \
                or attn.attention_as_float32 or attn.rope is not None or not layer.norm_first:
            return "an attention variant other than MusicGen's (memory-efficient, causal, pre-norm, no rope)"
    return None


class StaticCacheDecoder:
    """Installs itself as `lm._sample_next_token`; one instance per loaded LM."""

    def __init__(self, lm: LMModel, max_steps: int, static_shapes: bool = False):
        self.lm = lm
        self.audiocraft_step = lm._sample_next_token
        self.max_steps = max_steps  # decoding steps one `generate` call can take (one window)
        self.static_shapes = static_shapes
        self.caches: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.position = 0
        self.fast_call = False

    def install(self) -> None:
        self.lm._sample_next_token = self._sample_next_token

    def _sample_next_token(self, sequence: torch.Tensor, cfg_conditions, unconditional_state, use_sampling: bool,
                           temp: float, top_k: int, top_p: float, cfg_coef: tp.Optional[float] = None,
                           two_step_cfg: tp.Optional[bool] = None) -> torch.Tensor:
        two_step = self.lm.two_step_cfg if two_step_cfg is None else two_step_cfg
        if two_step or "offsets" not in self.lm.transformer._streaming_state:
            token = self.audiocraft_step(sequence, cfg_conditions, unconditional_state, use_sampling, temp, top_k,
                                         top_p, cfg_coef=cfg_coef, two_step_cfg=two_step_cfg)
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
        length = prefix + self.max_steps
        if not self.caches or self.caches[0][0].shape[0] != batch or self.caches[0][0].shape[2] < length \
                or self.caches[0][0].dtype != first.dtype or self.caches[0][0].device != first.device:
            self.caches = [(first.new_zeros(batch, heads, length, head_dim),
                            first.new_zeros(batch, heads, length, head_dim)) for _ in layers]
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
        graph = self._graphed(sequence) if sequence.is_cuda else None
        if graph is not None:
            return graph.run(sequence, position)
        return self._forward(sequence, torch.tensor(position, device=sequence.device))

    def _graphed(self, sequence: torch.Tensor) -> "CudaGraphStep | None":
        key = (sequence.shape, self.caches[0][0].data_ptr())
        if getattr(self, "_graph_key", None) != key:
            try:
                self._graph, self._graph_key = CudaGraphStep(self, sequence), key
            except RuntimeError as exc:  # a driver or kernel that cannot be captured: stay correct, run eagerly
                log.warning("CUDA graph capture failed (%s); decoding without graphs", exc)
                self._graph, self._graph_key = None, key
        return self._graph

    @torch.no_grad()
    def _forward(self, sequence: torch.Tensor, position: int | torch.Tensor) -> torch.Tensor:
        """One step. An int position attends to the filled part of the cache (exactly audiocraft's
        numbers); a tensor position attends to all of it under a mask, with fixed shapes (graphable)."""
        lm, transformer = self.lm, self.lm.transformer
        static = isinstance(position, torch.Tensor)
        x = sum([lm.emb[k](sequence[:, k]) for k in range(lm.num_codebooks)])
        positions = position.view(1, 1, 1) if static else torch.full((1, 1, 1), position, device=x.device)
        x = x + transformer.positional_scale * create_sin_embedding(
            positions, x.shape[-1], max_period=transformer.max_period, dtype=x.dtype)
        if static:
            index = position.view(1)
            mask = (torch.arange(self.caches[0][0].shape[2], device=x.device) <= position).view(1, 1, 1, -1)
        for layer, (keys, values) in zip(transformer.layers, self.caches, strict=True):
            attn = layer.self_attn
            projected = F.linear(layer.norm1(x), attn.in_proj_weight, attn.in_proj_bias)
            q, k, v = projected.view(x.shape[0], 1, 3, attn.num_heads, -1).permute(0, 3, 2, 1, 4).unbind(dim=2)
            if static:
                keys.index_copy_(2, index, k.to(keys.dtype))
                values.index_copy_(2, index, v.to(values.dtype))
                y = F.scaled_dot_product_attention(q, keys.to(q.dtype), values.to(q.dtype), attn_mask=mask)
            else:
                keys[:, :, position] = k[:, :, 0]
                values[:, :, position] = v[:, :, 0]
                y = F.scaled_dot_product_attention(q, keys[:, :, :position + 1], values[:, :, :position + 1])
            y = attn.out_proj(y.to(x.dtype).transpose(1, 2).reshape(x.shape[0], 1, -1))
            x = x + layer.layer_scale_1(layer.dropout1(y))
            x = x + layer.layer_scale_2(layer._ff_block(layer.norm2(x)))
        if lm.out_norm:
            x = lm.out_norm(x)
        return torch.stack([lm.linears[k](x) for k in range(lm.num_codebooks)], dim=1)


class CudaGraphStep:
    """The fixed-shape step captured once in a CUDA graph, then replayed: one launch per step.

    Capturing runs the step at the current position (warm-up and capture write that position's
    keys/values, which the real step rewrites), so it is built right before the step it serves.
    Autocast is off while capturing: its cache of cast weights must not be baked into a graph
    (the LM's weights are already fp16 on a GPU).
    """

    def __init__(self, decoder: StaticCacheDecoder, sequence: torch.Tensor):
        self.tokens = sequence.clone()
        self.position = torch.tensor(decoder.position - 1, device=sequence.device)
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.autocast(device_type="cuda", enabled=False):
            with torch.cuda.stream(stream):
                for _ in range(2):
                    decoder._forward(self.tokens, self.position)
            torch.cuda.current_stream().wait_stream(stream)
            self.graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.graph):
                self.logits = decoder._forward(self.tokens, self.position)

    def run(self, sequence: torch.Tensor, position: int) -> torch.Tensor:
        self.tokens.copy_(sequence)
        self.position.fill_(position)
        self.graph.replay()
        return self.logits


def install_fast_decoder(lm: LMModel, max_steps: int) -> StaticCacheDecoder | None:
    """Use the static-cache step for `lm` unless `MUSICGEN_DECODER=audiocraft` or the LM cannot."""
    choice = os.environ.get(DECODER_ENV, "fast")
    if choice not in ("fast", "audiocraft"):
        raise ValueError(f"{DECODER_ENV} must be 'fast' or 'audiocraft', got {choice!r}")
    reason = unsupported_reason(lm)
    if choice == "audiocraft" or reason:
        log.info("decoding with audiocraft's own loop%s", f" ({reason})" if reason else "")
        return None
    # On a GPU, fixed shapes let each step be one CUDA graph replay; on a CPU, the sliced
    # attention reproduces audiocraft's numbers exactly and launch overhead matters little.
    decoder = StaticCacheDecoder(lm, max_steps, static_shapes=next(lm.parameters()).is_cuda)
    decoder.install()
    return decoder
