"""Decoding speed: audiocraft's loop against ours, same model, inputs and seed, in one process.

CPU: a random LM of MusicGen-small size (24 layers, d=1024), fp32. GPU: MusicGen-melody size
(48 layers, d=1536) in fp16 (audiocraft's layout: transformer fp16, embeddings and output layers
fp32 under autocast), also ours without CUDA graphs, and ms per step against the floor set by the
bytes each step must read (weights + the filled part of the KV cache) at the memory bandwidth
measured on that GPU. Last line: `speedup <X>x on <device>` (ours over audiocraft's, steps/s).

    python -m bench.decode_speed [SECONDS]
"""

from __future__ import annotations

import sys
import time

from musicgen_cog import environment
from musicgen_cog.weights import random_weights


def measured_bandwidth(torch) -> float:
    """Device memory bandwidth in bytes/s from large copies (read + write)."""
    src = torch.empty(1 << 28, dtype=torch.float32, device="cuda")  # 1 GiB
    dst = torch.empty_like(src)
    dst.copy_(src)
    torch.cuda.synchronize()
    started = time.perf_counter()
    for _ in range(10):
        dst.copy_(src)
    torch.cuda.synchronize()
    return 2 * src.numel() * 4 * 10 / (time.perf_counter() - started)


def main() -> None:
    seconds = float(sys.argv[1]) if len(sys.argv) > 1 else None
    root = random_weights.ensure_weights_folder(environment.configure(random_weights.cached_tiny_folder()))
    import torch
    from audiocraft.models import MusicGen, builders
    from omegaconf import OmegaConf

    from musicgen_cog.api.seeding import seed_everything
    from musicgen_cog.model.fast_decode import install_fast_decoder
    from musicgen_cog.model.loading import load_model

    cuda = torch.cuda.is_available()
    device = "cuda" if cuda else "cpu"
    size = "full" if cuda else "small"
    seconds = seconds or (8.0 if cuda else 3.0)
    codec = load_model(root, device=device).musicgen.compression_model
    cfg = OmegaConf.create(random_weights.lm_config(random_weights.SIZES[size]))
    cfg.device, cfg.dtype = device, ("float16" if cuda else "float32")
    torch.manual_seed(0)
    lm = builders.get_lm_model(cfg).eval()
    lm.cfg = cfg  # type: ignore[assignment]  # as audiocraft's own loaders attach it
    musicgen = MusicGen("bench", codec, lm)
    decoder = install_fast_decoder(musicgen)
    assert decoder is not None, "the bench LM should be decodable by the fast loop"
    musicgen.set_generation_params(duration=seconds)
    attributes, _ = musicgen._prepare_tokens_and_attributes(["lofi hip hop beat"], None)
    name = torch.cuda.get_device_name() if cuda else "cpu"
    parameters = sum(p.numel() for p in lm.parameters())
    print(
        f"{name}: LM {size} ({parameters / 1e9:.2f} B parameters, {cfg.dtype}), {seconds:g} s of tokens, "
        f"torch threads {torch.get_num_threads()}"
    )

    def timed(step_function) -> tuple[float, torch.Tensor, int]:
        lm._sample_next_token = step_function  # type: ignore[method-assign]  # the step under test
        counted = []
        musicgen.set_custom_progress_callback(lambda done, total: counted.append(done))
        seed_everything(1)
        if cuda:
            torch.cuda.synchronize()
        started = time.perf_counter()
        with musicgen.autocast:
            tokens = musicgen._generate_tokens(attributes, None, progress=True)
        if cuda:
            torch.cuda.synchronize()
        return time.perf_counter() - started, tokens, len(counted)

    runs = [("audiocraft", decoder.audiocraft_step, False), ("ours", decoder._sample_next_token, cuda)]
    if cuda:
        runs.append(("ours, no CUDA graphs", decoder._sample_next_token, False))
    results = {}
    for label, step, graphs in runs:
        decoder.graphs_enabled = graphs
        timed(step)  # warm-up: allocation, kernels, caches, graph capture
        elapsed, tokens, steps = timed(step)
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
        weight_bytes = sum(p.numel() * p.element_size() for p in lm.parameters())
        keys = decoder.caches[0][0]
        kv_bytes_per_position = 2 * len(decoder.caches) * keys[:, :, 0].numel() * keys.element_size()
        prefix = decoder.position - (steps - 1)  # our step serves every step but the first (the prefix)
        kv_bytes = kv_bytes_per_position * (prefix + steps / 2)  # the filled part, on average
        bandwidth = measured_bandwidth(torch)
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
