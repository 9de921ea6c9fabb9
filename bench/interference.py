"""Does other requests' work hold the decoding loop's steps? ms per step with and without it.

B text requests decode through the shared loop (16 slots) while, in other threads, nothing
runs, or a request's MultiBand Diffusion decode runs again and again, or a melody request's
conditioning (T5 and htdemucs stems) does, or (on a GPU) a heavy stand-in for MBD's kernels: 4096 x 4096
fp16 matrix products, back to back, on a request's own stream. The bench's MBD and htdemucs are
the tiny folder's, far lighter than the real ones: the stand-in load says what a real MBD would
do to the loop's high-priority stream. Target on a GPU: within 1.2x of the step alone.

    python -m bench.interference [SECONDS] [B]   (default 8 s and B = 4 on a GPU, 1 s and B = 1 on a CPU)
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable

from bench.models import bench_model, describe, loop_ms


def main() -> None:
    model, name = bench_model(slots=16)
    import torch

    from musicgen_cog.audio.decoding import Audio
    from musicgen_cog.model.generation import GenerationRequest, generate, generate_tokens
    from musicgen_cog.model.randomness import RequestRandomness
    from musicgen_cog.model.sampling import Sampling
    from musicgen_cog.model.warm_up import warm_up

    cuda = name != "cpu"
    seconds = float(sys.argv[1]) if len(sys.argv) > 1 else (8.0 if cuda else 1.0)
    count = int(sys.argv[2]) if len(sys.argv) > 2 else (4 if cuda else 1)
    warm_up(model)
    sampling = Sampling(250, 0.0, 1.0, 3.0)
    device = model.musicgen.device
    print(f"{describe(model, name)}; {count} requests of {seconds:g} s decoding")

    tokens = generate_tokens(model, GenerationRequest("mbd", 8.0, sampling), RequestRandomness(99, device))
    rate = model.musicgen.sample_rate
    melody = Audio(torch.sin(torch.arange(8 * rate) / rate * 2 * 3.14159 * 220.0)[None] * 0.3, rate)

    def mbd() -> None:
        with model.streams.request():
            model.mbd().tokens_to_wav(tokens)

    def melody_conditioning() -> None:
        generate(model, GenerationRequest("melody", 0.1, sampling, melody=melody), RequestRandomness(98, device))

    def heavy_kernels() -> None:
        with model.streams.request():
            a = torch.randn(4096, 4096, dtype=torch.float16, device=device)
            for _ in range(20):
                a = (a @ a).clamp_(-1, 1)
            torch.cuda.current_stream().synchronize()

    loads: dict[str, Callable[[], None] | None] = {
        "alone": None,
        "beside MBD": mbd,
        "beside melody": melody_conditioning,
    }
    if cuda:
        loads["beside heavy kernels"] = heavy_kernels
    alone = None
    print("load | ms/step | vs alone")
    for label, work in loads.items():
        stop = threading.Event()
        runner = threading.Thread(target=repeat, args=(work, stop)) if work else None
        if runner:
            runner.start()
        try:
            measured = loop_ms(model, count, seconds)
        finally:
            stop.set()
            if runner:
                runner.join()
        alone = alone or measured
        print(f"{label} | {measured:6.2f} | {measured / alone:4.2f}x")


def repeat(work: Callable[[], None], stop: threading.Event) -> None:
    while not stop.is_set():
        work()


if __name__ == "__main__":
    main()
