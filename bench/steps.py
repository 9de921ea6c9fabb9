"""Where a decoding step's time goes, and how far it is from the memory floor.

For B = 1, 4, 8 and 16 requests decoding together in 16 slots, at each duration: ms per step
through the shared loop (steps where all B decode, host included), the captured step replayed
alone (on a CPU: run eagerly), the sampling part of it run alone (eager: in the graph it costs
less), the host's share (loop minus step), the attention of all the step's layers alone, row-wise
(MUSICGEN_ATTENTION's default) and by SDPA under a mask to the furthest row's bucket (`sdpa`),
and the floor: the bytes one step must read (the weights, and the filled part of each request's
KV cache, on average over the clip) at the bandwidth of a large copy on this device. Warm-up
first, as setup() does. Last line: `floor fraction <P>% on <device>` (B = 1, the first duration).

    python -m bench.steps [SECONDS ...]   (default 8 30 on a GPU, 1 on a CPU)
"""

from __future__ import annotations

import sys
import time
from functools import partial

from bench.models import bench_model, bytes_per_step, describe, loop_ms, measured_bandwidth

REPEATS = {"cuda": 50, "cpu": 3}  # a CPU's step takes seconds at 16 slots
BATCHES = (1, 4, 8, 16)


def main() -> None:
    model, name = bench_model(slots=max(BATCHES))
    import torch

    from musicgen_cog.model.attention import masked_sdpa, rowwise_attention
    from musicgen_cog.model.decoding_path import batched_start
    from musicgen_cog.model.generation import EXTEND_STRIDE
    from musicgen_cog.model.loading import start_decoding_loop
    from musicgen_cog.model.progress import planned_steps
    from musicgen_cog.model.steps import BatchedSteps
    from musicgen_cog.model.warm_up import warm_up

    cuda = name != "cpu"
    durations = [float(a) for a in sys.argv[1:]] or ([8.0, 30.0] if cuda else [1.0])
    start_decoding_loop(model, max(BATCHES), batched_start(model.device))  # the GPU's step, on a CPU too
    loop = model.loop
    assert loop is not None and isinstance(loop.steps, BatchedSteps)
    batched: BatchedSteps = loop.steps
    warmed = warm_up(model)
    print(f"{describe(model, name)}; {max(BATCHES)} slots, warm-up: {warmed.seconds:.1f} s")
    bandwidth = measured_bandwidth() if cuda else None

    def device_ms(work) -> float:
        work()
        repeats = REPEATS["cuda" if cuda else "cpu"]
        if not cuda:
            started = time.perf_counter()
            for _ in range(repeats):
                work()
            return 1000 * (time.perf_counter() - started) / repeats
        begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        begin.record()
        for _ in range(repeats):
            work()
        end.record()
        end.synchronize()
        return begin.elapsed_time(end) / repeats

    def attention_ms(count: int, position: int, rowwise: bool) -> float:
        """Every layer's attention alone, for `count` busy slots at `position` and the rest free."""
        decoder = batched.decoder
        keys, values = decoder.caches[0]
        rows, heads, _, head_dim = keys.shape
        query = torch.randn((rows, heads, 1, head_dim), dtype=keys.dtype, device=keys.device)
        positions = torch.zeros(rows, dtype=torch.long, device=keys.device)
        positions[: 2 * count] = position
        span = batched.span(position)
        if rowwise:
            work = partial(rowwise_attention, query, keys, values, positions + 1, span)
        else:
            work = partial(masked_sdpa, query, keys, values, positions + 1, decoder.attended_length(position))
        return len(decoder.caches) * device_ms(work)

    fractions = []
    print(
        "B | clip | loop ms/step | step alone | sampling (eager) | host | attention row-wise | attention sdpa "
        "| floor ms/step | of the floor"
    )
    for seconds in durations:
        steps = planned_steps(model.musicgen, seconds, 0, EXTEND_STRIDE)
        middle = steps // 2  # the cache position met mid-clip
        span = batched.span(middle)
        for count in BATCHES:
            per_step = loop_ms(model, count, seconds)
            state, lm = batched.state, model.musicgen.lm
            assert state is not None
            logits = torch.randn(2 * batched.decoder.slots, lm.num_codebooks, lm.card, device=state.tokens.device)
            with torch.no_grad(), model.autocast():  # as the loop runs them (the loop is idle now)
                graph = batched.graphs.get(span) if batched.graphs_enabled else None
                alone = device_ms(graph.replay if graph else partial(batched._run_step, span))
                sampling_ms = device_ms(partial(batched._choose, state, logits))
                rowwise, sdpa = (attention_ms(count, middle, rowwise) for rowwise in (True, False))
            floor = None
            if bandwidth:
                floor = 1000 * sum(bytes_per_step(model, count, steps)) / bandwidth
                fractions.append((count, seconds, floor / per_step))
            print(
                f"{count:>2} | {seconds:g} s | {per_step:6.2f} | {alone:6.2f} | {sampling_ms:6.2f} | "
                f"{per_step - alone:6.2f} | {rowwise:6.2f} | {sdpa:6.2f} | "
                + (f"{floor:5.2f} | {100 * floor / per_step:4.0f}%" if floor else "n/a (no GPU) | n/a")
            )
    if fractions:
        count, seconds, fraction = fractions[0]
        print(f"floor fraction {100 * fraction:.0f}% on {name}")
    else:
        print(f"floor fraction n/a on {name} (the floor is a GPU's memory bandwidth)")


if __name__ == "__main__":
    main()
