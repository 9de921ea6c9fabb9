"""Decode attention that depends on the row alone: each row over its own filled length.

A fixed-shape step (every slot, one CUDA graph) holds rows at different positions. Attending all
of them as far as the furthest row under a mask changes a row's reductions with its company, and
with them its last bits, then its tokens. Here each row attends to its own `lengths[row]`
positions, split into chunks of CHUNK positions (a fixed size, not a fixed number of splits)
whose softmax partials are folded in chunk order: a row's output is a function of its own query,
keys, values and length alone, the same bits beside any company, in any row of the batch.

- CUDA: two Triton kernels (the partials of each row, head and chunk; then their fold, in order).
  They read only the chunks a row has filled, so idle and short rows cost almost nothing, and
  they take every length from device memory: one CUDA graph serves every step.
- CPU: the same fold in torch, chunk by chunk, from elementwise products and sums only (a matrix
  product's kernel may treat a row by its place in the batch; see `SlotDecoder._per_pair`).
- `masked_sdpa` (MUSICGEN_ATTENTION=sdpa, or a rung of the descent in `decoding_path.py`): torch's
  scaled_dot_product_attention under a mask as far as the furthest row's bucket; not row-invariant.
"""

from __future__ import annotations

import functools
import typing as tp

import torch

CHUNK = 256  # positions per split; a row's result never depends on how many splits others need
BLOCK = 64  # positions a Triton program reads at once inside its chunk


def rowwise_attention(
    query: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, lengths: torch.Tensor, span: int
) -> torch.Tensor:
    """Attention of query [B, H, 1, D] over the first `lengths[b]` positions of row b of keys and
    values [>= B, H, L, D]; [B, H, 1, D] in the query's dtype. `span` >= every length (a host
    number: how far the CPU's fold goes; the CUDA kernels read each row's own length)."""
    if query.is_cuda:
        return _triton_attention(query, keys, values, lengths)
    return folded_attention(query, keys, values, lengths, span)


def folded_attention(
    query: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, lengths: torch.Tensor, span: int
) -> torch.Tensor:
    """`rowwise_attention` in torch: fp32, chunk by chunk up to `span`. A chunk past a row's length
    leaves its running max, sum and output exactly as they were (weights exp(-inf) = 0)."""
    batch, heads, _, dim = query.shape
    q = query.float() * dim**-0.5
    lengths = lengths.view(batch, 1, 1)
    peak = torch.full((batch, heads, 1), -torch.inf, device=query.device)
    total = torch.zeros((batch, heads, 1), device=query.device)
    out = torch.zeros((batch, heads, dim), device=query.device)
    for start in range(0, min(span, keys.shape[2]), CHUNK):
        stop = min(start + CHUNK, keys.shape[2])
        k, v = keys[:batch, :, start:stop].float(), values[:batch, :, start:stop].float()
        scores = (q * k).sum(-1)  # [B, H, C]: a sum per position, no matrix product
        filled = torch.arange(start, stop, device=query.device).view(1, 1, -1) < lengths
        scores = scores.masked_fill(~filled, -torch.inf)
        new_peak = torch.maximum(peak, scores.amax(-1, keepdim=True))
        kept, weights = torch.exp(peak - new_peak), torch.exp(scores - new_peak)
        total = total * kept + weights.sum(-1, keepdim=True)
        out = out * kept + (weights.unsqueeze(-1) * v).sum(-2)
        peak = new_peak
    return (out / total).unsqueeze(2).to(query.dtype)


def masked_sdpa(
    query: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, lengths: torch.Tensor, length: int
) -> torch.Tensor:
    """`rowwise_attention`'s result by SDPA: every row over `length` cache positions, those past its
    own `lengths[b]` masked by an additive bias in the query's dtype (SDPA converts a boolean mask
    in every call). A row's reductions reach as far as its company's: not row-invariant."""
    batch = query.shape[0]
    allowed = torch.arange(length, device=query.device).view(1, 1, 1, -1) < lengths.view(batch, 1, 1, 1)
    bias = torch.zeros(allowed.shape, dtype=query.dtype, device=query.device).masked_fill_(~allowed, -torch.inf)
    k, v = keys[:batch, :, :length].to(query.dtype), values[:batch, :, :length].to(query.dtype)
    return torch.nn.functional.scaled_dot_product_attention(query, k, v, attn_mask=bias)


def _triton_attention(
    query: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, lengths: torch.Tensor
) -> torch.Tensor:
    """The CUDA path (also run by the tests on a CPU under TRITON_INTERPRET=1): grid of (row and
    head, chunk) programs for the partials, then one program per row and head folds them."""
    kernels = triton_kernels()
    batch, heads, _, dim = query.shape
    chunks = -(-keys.shape[2] // CHUNK)
    block_dim = 1 << (dim - 1).bit_length()
    device = query.device
    peaks = torch.empty((batch * heads, chunks), dtype=torch.float32, device=device)
    totals = torch.empty_like(peaks)
    partials = torch.empty((batch * heads, chunks, block_dim), dtype=torch.float32, device=device)
    out = torch.empty_like(query)
    kernels.partials[(batch * heads, chunks)](
        query, keys, values, lengths, peaks, totals, partials,
        *query.stride()[:2], query.stride(3), *keys.stride(), *values.stride(),
        heads, keys.shape[2], dim**-0.5,
        CHUNKS=chunks, CHUNK=CHUNK, BLOCK=BLOCK, DIM=dim, BLOCK_DIM=block_dim,
    )  # fmt: skip
    kernels.fold[(batch * heads,)](
        peaks, totals, partials, lengths, out,
        *out.stride()[:2], out.stride(3), heads,
        CHUNKS=chunks, CHUNK=CHUNK, DIM=dim, BLOCK_DIM=block_dim,
    )  # fmt: skip
    return out


class TritonKernels(tp.NamedTuple):
    partials: tp.Any
    fold: tp.Any


@functools.cache
def triton_kernels() -> TritonKernels:
    """The Triton kernels, built on first use: Triton ships with torch's CUDA builds, and reads
    TRITON_INTERPRET (run on a CPU) when a kernel is defined."""
    import triton
    import triton.language as tl

    @triton.jit
    def partials(
        Q, K, V, Lengths, Peaks, Totals, Partials,
        q_row, q_head, q_dim, k_row, k_head, k_pos, k_dim, v_row, v_head, v_pos, v_dim,
        heads, cache_length, scale,
        CHUNKS: tl.constexpr, CHUNK: tl.constexpr, BLOCK: tl.constexpr, DIM: tl.constexpr, BLOCK_DIM: tl.constexpr,
    ):  # fmt: skip
        row_head, chunk = tl.program_id(0), tl.program_id(1)
        row, head = row_head // heads, row_head % heads
        dims = tl.arange(0, BLOCK_DIM)
        in_dim = dims < DIM
        q = tl.load(Q + row * q_row + head * q_head + dims * q_dim, mask=in_dim, other=0.0).to(tl.float32) * scale
        start = chunk * CHUNK
        stop = tl.minimum(tl.minimum(start + CHUNK, tl.load(Lengths + row)), cache_length)
        peak = tl.full((), float("-inf"), tl.float32)
        total = tl.full((), 0.0, tl.float32)
        out = tl.zeros((BLOCK_DIM,), tl.float32)
        # a fixed trip count (masked loads past `stop` read no memory): the same loop for every row
        for block in range(0, CHUNK // BLOCK):
            positions = start + block * BLOCK + tl.arange(0, BLOCK)
            filled = positions < stop
            both = filled[:, None] & in_dim[None, :]
            k = tl.load(
                K + row * k_row + head * k_head + positions[:, None] * k_pos + dims[None, :] * k_dim,
                mask=both,
                other=0.0,
            )
            scores = tl.where(filled, tl.sum(k.to(tl.float32) * q[None, :], axis=1), float("-inf"))
            new_peak = tl.maximum(peak, tl.max(scores, axis=0))
            shift = tl.where(new_peak == float("-inf"), 0.0, new_peak)  # nothing filled yet: no NaN
            kept, weights = tl.exp(peak - shift), tl.exp(scores - shift)
            v = tl.load(
                V + row * v_row + head * v_head + positions[:, None] * v_pos + dims[None, :] * v_dim,
                mask=both,
                other=0.0,
            )
            total = total * kept + tl.sum(weights, axis=0)
            out = out * kept + tl.sum(weights[:, None] * v.to(tl.float32), axis=0)
            peak = new_peak
        at = row_head * CHUNKS + chunk
        tl.store(Peaks + at, peak)
        tl.store(Totals + at, total)
        tl.store(Partials + at * BLOCK_DIM + dims, out)

    @triton.jit
    def fold(
        Peaks, Totals, Partials, Lengths, Out, o_row, o_head, o_dim, heads,
        CHUNKS: tl.constexpr, CHUNK: tl.constexpr, DIM: tl.constexpr, BLOCK_DIM: tl.constexpr,
    ):  # fmt: skip
        row_head = tl.program_id(0)
        row, head = row_head // heads, row_head % heads
        dims = tl.arange(0, BLOCK_DIM)
        filled_chunks = (tl.load(Lengths + row) + CHUNK - 1) // CHUNK
        peak = tl.full((), float("-inf"), tl.float32)
        total = tl.full((), 0.0, tl.float32)
        out = tl.zeros((BLOCK_DIM,), tl.float32)
        for chunk in range(0, CHUNKS):  # in chunk order; a chunk past the row's length adds nothing
            at = row_head * CHUNKS + chunk
            used = chunk < filled_chunks
            chunk_peak = tl.where(used, tl.load(Peaks + at), float("-inf"))
            new_peak = tl.maximum(peak, chunk_peak)
            shift = tl.where(new_peak == float("-inf"), 0.0, new_peak)
            kept, added = tl.exp(peak - shift), tl.exp(chunk_peak - shift)
            total = total * kept + tl.where(used, tl.load(Totals + at), 0.0) * added
            out = out * kept + tl.where(used, tl.load(Partials + at * BLOCK_DIM + dims), 0.0) * added
            peak = new_peak
        result = out / total
        tl.store(Out + row * o_row + head * o_head + dims * o_dim, result.to(Out.dtype.element_ty), mask=dims < DIM)

    return TritonKernels(partials, fold)
