"""The model the benches decode with: a random LM of a real size beside the tiny folder's codec.

CPU: MusicGen-small size (24 layers, d=1024) in fp32. GPU: MusicGen-melody size (48 layers,
d=1536) in audiocraft's GPU layout (transformer fp16, embeddings and output layers fp32, run
under fp16 autocast).
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

from musicgen_cog import environment
from musicgen_cog.weights import random_weights


def bench_model(slots: int) -> tuple[Any, str]:
    """(LoadedModel with a decoding loop of `slots` slots, device name) for this machine."""
    root = random_weights.ensure_weights_folder(environment.configure(random_weights.cached_tiny_folder()))
    import torch
    from audiocraft.models import MusicGen, builders
    from omegaconf import OmegaConf

    from musicgen_cog.model.loading import LoadedModel, load_model, start_decoding_loop
    from musicgen_cog.model.streams import streams_for

    cuda = torch.cuda.is_available()
    device = "cuda" if cuda else "cpu"
    codec = load_model(root, device=device).musicgen.compression_model
    cfg = OmegaConf.create(random_weights.lm_config(random_weights.SIZES["full" if cuda else "small"]))
    cfg.device, cfg.dtype = device, ("float16" if cuda else "float32")
    torch.manual_seed(0)
    lm = builders.get_lm_model(cfg).eval()
    lm.cfg = cfg  # type: ignore[assignment]  # as audiocraft's own loaders attach it
    model = LoadedModel(MusicGen("bench", codec, lm), Path("bench"), root, streams=streams_for(device))
    start_decoding_loop(model, slots)
    assert model.loop is not None, "the bench LM should be decodable by our loop"
    return model, torch.cuda.get_device_name() if cuda else "cpu"


def describe(model: Any, device: str) -> str:
    lm = model.musicgen.lm
    parameters = sum(p.numel() for p in lm.parameters())
    import torch

    threads = torch.get_num_threads()
    return (
        f"{device}: LM {parameters / 1e9:.2f} B parameters ({lm.cfg.dtype}), torch threads {threads}, {model.path.name}"
    )


def measured_bandwidth() -> float:
    """Device memory bandwidth in bytes/s from large copies (read + write) on the GPU."""
    import time

    import torch

    src = torch.empty(1 << 28, dtype=torch.float32, device="cuda")  # 1 GiB
    dst = torch.empty_like(src)
    dst.copy_(src)
    torch.cuda.synchronize()
    started = time.perf_counter()
    for _ in range(10):
        dst.copy_(src)
    torch.cuda.synchronize()
    return 2 * src.numel() * 4 * 10 / (time.perf_counter() - started)


def bytes_per_step(model: Any, requests: int, steps: int) -> tuple[int, float]:
    """What one decoding step must read at the least (the floor's bytes): the LM's weights, and
    the filled part of `requests` requests' KV caches, on average over `steps` steps (a short
    prefix aside)."""
    weights = sum(p.numel() * p.element_size() for p in model.musicgen.lm.parameters())
    caches = model.loop.decoder.caches
    keys = caches[0][0]
    per_position = 2 * 2 * len(caches) * keys[0, :, 0].numel() * keys.element_size()  # keys, values; a slot's 2 rows
    return weights, requests * per_position * steps / 2


def loop_ms(model: Any, count: int, seconds: float) -> float:
    """ms per step of `model`'s decoding loop while `count` text requests of `seconds` decode
    together (the steps where all of them do), the host included."""
    from musicgen_cog.model.generation import GenerationRequest, generate_tokens
    from musicgen_cog.model.randomness import RequestRandomness
    from musicgen_cog.model.sampling import Sampling

    times: list[float] = []
    steps = model.loop.steps
    step = steps.step

    def timed(windows: list[Any]) -> dict:
        result = step(windows)
        if len(windows) == count:
            times.append(time.perf_counter())
        return result

    steps.step = timed
    try:
        threads = [
            threading.Thread(
                target=generate_tokens,
                args=(model, GenerationRequest(f"request {i}", seconds, Sampling(250, 0.0, 1.0, 3.0))),
                kwargs={"randomness": RequestRandomness(i, model.musicgen.device)},
            )
            for i in range(count)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        del steps.step
    if len(times) < 2:
        raise RuntimeError(
            f"only {len(times)} step(s) ran with all {count} requests decoding: "
            f"a request failed (see above) or {seconds} s is too short"
        )
    return 1000 * (times[-1] - times[0]) / (len(times) - 1)
