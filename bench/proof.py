"""What setup()'s proof of the decoding path (musicgen_cog/model/proof.py) costs and finds here.

`predict.Predictor().setup()` as the server runs it, on tiny random weights or on the full-size
random fine-tune (MusicGen-melody size: bench.setup_time's folder), at COG_MAX_CONCURRENCY's
slots (default 8; `make predict` runs 1). Prints the path setup chose with each check's figure,
the proof's seconds against setup's, and the process's peak RSS. On a CPU the default path is per
slot; MUSICGEN_DECODER=batched proves the GPU's ladder instead.
Last line: `proof <P> s of setup <S> s, path <name> on <device>`.

    python -m bench.proof [tiny|full]   (default tiny)
"""

from __future__ import annotations

import resource
import sys
import time

from bench import setup_time
from musicgen_cog import environment
from musicgen_cog.weights import random_weights


def main() -> None:
    size = sys.argv[1] if len(sys.argv) > 1 else "tiny"
    if size == "full":
        root = environment.REPO_ROOT / ".cache" / f"bench-weights-full-{random_weights.generator_version()}"
        setup_time.ensure_weights(root)
    else:
        root = random_weights.ensure_weights_folder(random_weights.cached_tiny_folder())
    environment.configure(root)
    import torch

    import predict

    started = time.perf_counter()
    predictor = predict.Predictor()
    predictor.setup(weights=None)
    setup = time.perf_counter() - started
    model, proof = predictor.model, predictor.proof
    device = torch.cuda.get_device_name() if model.device == "cuda" else "cpu"
    parameters = sum(p.numel() for p in model.musicgen.lm.parameters()) / 1e9
    slots = model.loop.slots if model.loop is not None else 1
    print(f"{size} weights: LM {parameters:.2f} B parameters, {slots} slots, torch threads {torch.get_num_threads()}")
    print(f"decoding path: {proof}")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6  # kB on Linux
    seconds = proof.seconds if proof is not None else 0.0
    print(f"peak RSS {peak:.2f} GB")
    print(f"proof {seconds:.2f} s of setup {setup:.1f} s, path {model.path.name} on {device}")


if __name__ == "__main__":
    main()
