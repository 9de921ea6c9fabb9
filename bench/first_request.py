"""setup() and the first request against a warm one, through predict() as the server calls it.

A full-size random fine-tune on a GPU (bench.setup_time's folder), the tiny folder on a CPU.
Boots twice in one process: first cold (files evicted from the page cache, imports paid), then
again with everything cached; each setup() includes its warm-up. Then an 8 s text request
twice (other seeds). Prints `setup <S>s first boot, <S2>s second boot` and `first request <F>s,
warm <W>s = <R>x`; on a GPU then the device memory held after loading and after warm-up (a third
boot, by parts), with the slot plan.

    python -m bench.first_request [SECONDS]   (default 8)
"""

from __future__ import annotations

import asyncio
import gc
import sys
import time
from pathlib import Path

from bench import setup_time
from musicgen_cog import environment
from musicgen_cog.weights import random_weights


def weights_folder(cuda: bool) -> Path:
    if not cuda:
        return random_weights.ensure_weights_folder(random_weights.cached_tiny_folder())
    root = environment.REPO_ROOT / ".cache" / f"bench-weights-full-{random_weights.generator_version()}"
    setup_time.ensure_weights(root)
    return root


def main() -> None:
    started = time.perf_counter()
    import torch

    cuda = torch.cuda.is_available()
    root = environment.configure(weights_folder(cuda))
    setup_time.evict(setup_time.files_setup_reads(root))
    seconds = sys.argv[1] if len(sys.argv) > 1 else "8"
    import predict
    from musicgen_cog.api.cog_schema import check_inputs, read_predictor

    boots = []
    for _ in range(2):
        predictor = predict.Predictor()
        predictor.setup(weights=None)
        boots.append(time.perf_counter() - started)
        if len(boots) == 1:  # free the first model before the second boot
            assert predictor.model.loop is not None
            predictor.model.loop.close()
            del predictor
            gc.collect()
            if cuda:
                torch.cuda.empty_cache()
        started = time.perf_counter()
    info = read_predictor()
    device = torch.cuda.get_device_name() if cuda else "cpu"
    parameters = sum(p.numel() for p in predictor.model.musicgen.lm.parameters())
    print(f"{device}: LM {parameters / 1e9:.2f} B parameters, {predict.MAX_CONCURRENCY} slots")
    print(f"setup {boots[0]:.2f}s first boot (cold files, imports), {boots[1]:.2f}s second boot")
    times = []
    for seed in ("1", "2"):
        inputs = check_inputs(info, {"prompt": "brushed jazz trio", "duration": seconds, "seed": seed})
        if cuda:
            torch.cuda.synchronize()
        began = time.perf_counter()
        Path(asyncio.run(predictor.predict(**inputs))).unlink()
        times.append(time.perf_counter() - began)
    print(f"first request {times[0]:.2f}s, warm {times[1]:.2f}s = {times[0] / times[1]:.2f}x ({seconds} s of text)")
    if cuda:
        assert predictor.model.loop is not None
        predictor.model.loop.close()
        del predictor
        memory_by_parts(root)


def memory_by_parts(root: Path) -> None:
    """GPU memory allocated after loading (KV cache not yet allocated) and after warm-up."""
    import torch

    import predict
    from musicgen_cog.model.loading import load_model
    from musicgen_cog.model.warm_up import warm_up

    gc.collect()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    model = load_model(root, slots=predict.MAX_CONCURRENCY)
    loaded = torch.cuda.memory_allocated()
    warm_up(model)
    warmed, peak = torch.cuda.memory_allocated(), torch.cuda.max_memory_allocated()
    assert model.plan is not None
    print(f"memory: {loaded / 1e9:.2f} GB after loading, {warmed / 1e9:.2f} GB after warm-up, peak {peak / 1e9:.2f} GB")
    print(model.plan.describe())


if __name__ == "__main__":
    main()
