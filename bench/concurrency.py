"""Throughput of concurrent requests: N requests at once through the shared decoding loop.

Each of N threads asks for the same duration (its own prompt and seed), all at once, as N
clients of the server would; the loop has N slots. Prints, for N = 1, 4, 8, 16, the wall time,
the seconds of audio made per second, and both against N = 1.

    python -m bench.concurrency [SECONDS] [--all-slots]   (default 1 s on a CPU, 8 on a GPU)

`--all-slots` runs a CPU's loop as a GPU's: every slot in one step (a CPU steps each slot alone).
"""

from __future__ import annotations

import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from bench.models import bench_model, describe

COUNTS = (1, 4, 8, 16)


def main() -> None:
    model, name = bench_model(slots=max(COUNTS))
    import torch

    from musicgen_cog.model.decoding_path import batched_start
    from musicgen_cog.model.generation import GenerationRequest, generate_tokens
    from musicgen_cog.model.loading import start_decoding_loop
    from musicgen_cog.model.randomness import RequestRandomness
    from musicgen_cog.model.sampling import Sampling

    cuda = name != "cpu"
    arguments = [a for a in sys.argv[1:] if a != "--all-slots"]
    path = batched_start(model.device) if "--all-slots" in sys.argv else None
    seconds = float(arguments[0]) if arguments else (8.0 if cuda else 1.0)
    batched = path is not None or cuda
    print(f"{describe(model, name)}; each request {seconds:g} s of audio; all slots in one step: {batched}")

    def one(index: int, start: threading.Barrier) -> None:
        start.wait()
        request = GenerationRequest(f"request {index}", seconds, Sampling(250, 0.0, 1.0, 3.0))
        tokens = generate_tokens(model, request, RequestRandomness(index, model.musicgen.device))
        model.musicgen.generate_audio(tokens)  # the codec's share of the work, as a prediction does

    def run(count: int) -> float:
        start = threading.Barrier(count + 1)
        with ThreadPoolExecutor(count) as pool:
            done = [pool.submit(one, i, start) for i in range(count)]
            start.wait()
            started = time.perf_counter()
            for future in done:
                future.result()
        if cuda:
            torch.cuda.synchronize()
        return time.perf_counter() - started

    rows = []
    for count in COUNTS:
        start_decoding_loop(model, count, path)  # sized for the concurrency, as the server does
        run(count)  # warm-up: allocation, kernels, graph capture for this many slots
        elapsed = run(count)
        rows.append((count, elapsed, count * seconds / elapsed))
        print(f"N={count:>2}: {elapsed:6.2f} s for {count} x {seconds:g} s = {rows[-1][2]:6.2f} s of audio/s")
    alone, single_rate = rows[0][1], rows[0][2]
    print("N  | wall time vs one alone | audio/s vs one alone")
    for count, elapsed, rate in rows:
        print(f"{count:>2} | {elapsed / alone:5.2f}x | {rate / single_rate:5.2f}x")
    print(f"throughput at N=16: {rows[-1][2]:.2f} s of audio per second on {name}")


if __name__ == "__main__":
    main()
