"""Decoding speed: audiocraft's loop against ours, same model, inputs and seed, in one process.

CPU: a random LM of MusicGen-small size (24 layers, d=1024), fp32. GPU: MusicGen-melody size
(48 layers, d=1536) in fp16, plus ms per step against the floor set by the bytes each step must
read (weights + KV cache) at the memory bandwidth measured on that GPU. Last line:
`speedup <X>x on <device>` (ours over audiocraft's, in steps per second).

    python -m bench.decode_speed [SECONDS]
"""
from __future__ import annotations

import sys
import time

from musicgen_cog import environment, random_weights

ROOT = environment.REPO_ROOT


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
    root = environment.configure(ROOT / ".cache" / f"bench-tiny-{random_weights.generator_version()}")
    if not (root / "trained_model.tar").is_file():
        random_weights.write_weights_folder(root, "tiny")
    import torch
    from audiocraft.models import MusicGen, builders
    from omegaconf import OmegaConf

    from musicgen_cog.fast_decode import install_fast_decoder
    from musicgen_cog.loading import load_model
    from musicgen_cog.seeding import seed_everything

    cuda = torch.cuda.is_available()
    device = "cuda" if cuda else "cpu"
    size = "full" if cuda else "small"
    seconds = seconds or (8.0 if cuda else 3.0)
    codec = load_model(root, device=device).musicgen.compression_model
    cfg = OmegaConf.create(random_weights.lm_config(random_weights.SIZES[size]))
    cfg.device, cfg.dtype = device, ("float16" if cuda else "float32")
    torch.manual_seed(0)
    lm = builders.get_lm_model(cfg).eval()
    lm.cfg = cfg
    musicgen = MusicGen("bench", codec, lm)
    decoder = install_fast_decoder(lm, int(musicgen.max_duration * musicgen.frame_rate) + lm.num_codebooks + 1)
    assert decoder is not None, "the bench LM should be decodable by the fast loop"
    musicgen.set_generation_params(duration=seconds)
    attributes, _ = musicgen._prepare_tokens_and_attributes(["lofi hip hop beat"], None)
    name = torch.cuda.get_device_name() if cuda else "cpu"
    parameters = sum(p.numel() for p in lm.parameters())
    print(f"{name}: LM {size} ({parameters / 1e9:.2f} B parameters, {cfg.dtype}), {seconds:g} s of tokens, "
          f"torch threads {torch.get_num_threads()}")

    def timed(step_function) -> tuple[float, torch.Tensor, int]:
        lm._sample_next_token = step_function
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

    results = {}
    for label, step in (("audiocraft", decoder.audiocraft_step), ("ours", decoder._sample_next_token)):
        timed(step)  # warm-up: allocation, kernels, caches
        elapsed, tokens, steps = timed(step)
        results[label] = (steps / elapsed, tokens)
        print(f"{label:>10}: {steps} steps in {elapsed:.2f} s = {steps / elapsed:.1f} steps/s, "
              f"{1000 * elapsed / steps:.2f} ms/step")
    identical = torch.equal(results["audiocraft"][1], results["ours"][1])
    print(f"tokens identical: {identical}")
    if cuda:
        weight_bytes = sum(p.numel() * p.element_size() for p in lm.parameters())
        bandwidth = measured_bandwidth(torch)
        floor_ms = 1000 * weight_bytes / bandwidth
        ours_ms = 1000 / results["ours"][0]
        print(f"floor: {weight_bytes / 1e9:.2f} GB of weights per step at {bandwidth / 1e12:.2f} TB/s measured = "
              f"{floor_ms:.2f} ms/step; ours {ours_ms:.2f} ms/step = {100 * floor_ms / ours_ms:.0f}% of the floor")
    print(f"speedup {results['ours'][0] / results['audiocraft'][0]:.2f}x on {name}")


if __name__ == "__main__":
    main()
