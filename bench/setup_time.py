"""Cold-boot cost: `setup` with a full-size fine-tune next to reading the same files from disk.

A random MusicGen-melody-size fine-tune (48 layers, d=1536, ~1.5 B parameters, fp32 as the
trainer saves it) in the real layout, beside tiny base assets. Before each measurement the
files are evicted from the page cache (posix_fadvise DONTNEED), so both are cold reads.
Prints `setup <S>s, raw read <R>s` and their ratio.

    python -m bench.setup_time [WEIGHTS_DIR]   (default .cache/bench-weights-full-<generator version>)
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from musicgen_cog import environment
from musicgen_cog.weights import random_weights

ROOT = environment.REPO_ROOT
CHUNK = 64 << 20


def files_setup_reads(root: Path) -> list[Path]:
    from musicgen_cog.weights import assets

    hub_files = [assets.locate(root, a) / name for a in (assets.T5, assets.ENCODEC) for name in a.filenames]
    return [root / assets.FINETUNE_FILENAME, assets.locate(root, assets.HTDEMUCS), *hub_files]


def evict(files: list[Path]) -> None:
    for path in files:
        fd = os.open(path.resolve(), os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def raw_read_seconds(files: list[Path]) -> float:
    evict(files)
    started = time.perf_counter()
    for path in files:
        with open(path, "rb", buffering=0) as f:
            while f.read(CHUNK):
                pass
    return time.perf_counter() - started


def ensure_weights(root: Path) -> None:
    from musicgen_cog.weights import assets

    if (root / assets.FINETUNE_FILENAME).is_file():
        return
    print(f"writing full-size random weights to {root} (once; ~6 GB)", flush=True)
    random_weights.write_weights_folder(root, "tiny", finetune=False)
    random_weights.write_finetune(root / assets.FINETUNE_FILENAME, random_weights.SIZES["full"])


def main() -> None:
    default = ROOT / ".cache" / f"bench-weights-full-{random_weights.generator_version()}"
    root = environment.configure(Path(sys.argv[1]) if len(sys.argv) > 1 else default)
    ensure_weights(root)
    import torch

    from musicgen_cog.model.loading import load_model

    files = files_setup_reads(root)
    size_gb = sum(p.resolve().stat().st_size for p in files) / 1e9
    raw = raw_read_seconds(files)
    evict(files)
    started = time.perf_counter()
    model = load_model(root, device="cpu")
    setup = time.perf_counter() - started
    parameters = sum(p.numel() for p in model.musicgen.lm.parameters()) / 1e9
    print(
        f"language model: {parameters:.2f} B parameters; files read: {size_gb:.2f} GB; "
        f"torch threads: {torch.get_num_threads()}"
    )
    print(f"setup {setup:.2f}s, raw read {raw:.2f}s")
    print(f"setup / raw read = {setup / raw:.2f}x")


if __name__ == "__main__":
    main()
