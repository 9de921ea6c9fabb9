"""Decoding speed: audiocraft's loop against ours, same model, inputs and seed, in one process.

One request alone (one slot), greedy (temperature 0: the tokens can be compared whatever the
draws; on a GPU ours draws otherwise than torch.multinomial). On a GPU also ours without CUDA
graphs, and ms per step against the floor set by the bytes each step must read (weights + the
filled part of the KV cache) at the memory bandwidth measured on that GPU. Last line:
`speedup <X>x on <device>` (ours over audiocraft's, steps/s).

    python -m bench.decode_speed [SECONDS]
"""

from __future__ import annotations

import sys
import time

from bench.models import bench_model, bytes_per_step, describe, measured_bandwidth


def main() -> None:
    model, name = bench_model(slots=1)
    import torch

    from musicgen_cog.model.generation import EXTEND_STRIDE, GenerationRequest, generate_tokens
    from musicgen_cog.model.progress import planned_steps
    from musicgen_cog.model.randomness import RequestRandomness
    from musicgen_cog.model.sampling import Sampling
    from musicgen_cog.model.steps import BatchedSteps

    cuda = name != "cpu"
    seconds = float(sys.argv[1]) if len(sys.argv) > 1 else (8.0 if cuda else 3.0)
    assert model.loop is not None
    musicgen, steps_taken = model.musicgen, model.loop.steps
    steps = planned_steps(musicgen, seconds, 0, EXTEND_STRIDE)
    print(f"{describe(model, name)}; {seconds:g} s of tokens, {steps} steps")

    def timed(run) -> tuple[float, torch.Tensor]:
        run()  # warm-up: allocation, kernels, caches, graph capture
        if cuda:
            torch.cuda.synchronize()
        started = time.perf_counter()
        tokens = run()
        if cuda:
            torch.cuda.synchronize()
        return time.perf_counter() - started, tokens

    def audiocrafts() -> torch.Tensor:
        musicgen.set_generation_params(duration=seconds, temperature=0.0)
        attributes, _ = musicgen._prepare_tokens_and_attributes(["lofi hip hop beat"], None)
        torch.manual_seed(1)
        with musicgen.autocast:
            return musicgen._generate_tokens(attributes, None)

    def ours() -> torch.Tensor:
        request = GenerationRequest("lofi hip hop beat", seconds, Sampling(250, 0.0, 0.0, 3.0))
        return generate_tokens(model, request, RequestRandomness(1, musicgen.device))

    runs = [("audiocraft", audiocrafts, False), ("ours", ours, cuda)]
    if cuda:
        runs.append(("ours, no CUDA graphs", ours, False))
    results = {}
    for label, run, graphs in runs:
        if isinstance(steps_taken, BatchedSteps):
            steps_taken.graphs_enabled = graphs
        elapsed, tokens = timed(run)
        results[label] = (steps / elapsed, tokens)
        print(
            f"{label:>10}: {steps} steps in {elapsed:.2f} s = {steps / elapsed:.1f} steps/s, "
            f"{1000 * elapsed / steps:.2f} ms/step"
        )
    agreement = (results["audiocraft"][1] == results["ours"][1]).float().mean().item()
    print(
        f"tokens identical: {agreement == 1.0} ({100 * agreement:.1f}% agree"
        f"{'; fp16 rounds differently in the fixed-shape attention' if cuda else ''})"
    )
    if cuda:
        weight_bytes, kv_bytes = bytes_per_step(model, 1, steps)
        bandwidth = measured_bandwidth()
        floor_ms = 1000 * (weight_bytes + kv_bytes) / bandwidth
        print(
            f"floor: {weight_bytes / 1e9:.2f} GB of weights + {kv_bytes / 1e9:.2f} GB of KV cache per step "
            f"(mean) at {bandwidth / 1e12:.2f} TB/s measured = {floor_ms:.2f} ms/step"
        )
        for label, (rate, _) in results.items():
            print(f"{label:>10}: {1000 / rate:.2f} ms/step = {100 * floor_ms * rate / 1000:.0f}% of the floor")
    print(f"speedup {results['ours'][0] / results['audiocraft'][0]:.2f}x on {name}")


if __name__ == "__main__":
    main()
