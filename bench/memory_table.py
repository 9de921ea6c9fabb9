"""The memory table of docs/memory-and-faults.md#memory: the slots MusicGen-melody gets per GPU card
and per CPU memory size, by the arithmetic setup() runs (`musicgen_cog/model/memory.py`). Computed,
not measured: what stays resident after loading is estimated here from the models' parameter counts.

    python -m bench.memory_table
"""

from __future__ import annotations

import torch

from musicgen_cog.model.fast_decode import kv_bytes
from musicgen_cog.model.memory import NotEnoughMemory, gigabytes, plan_slots, prefill_bytes, working_memory

POSITIONS = 512 + 235 + 1505  # the T5 bound, a 30 s window's chroma, the window's steps
# resident after loading: the LM (1.39 B parameters: fp16 on a GPU, embeddings and outputs fp32;
# fp32 on a CPU), T5-base's encoder, htdemucs and EnCodec (fp32), and the CUDA context or the
# Python process with its libraries
RESIDENT = {"cuda": 0.5e9 + 2.82e9 + 0.44e9 + 0.17e9 + 0.24e9, "cpu": 1.0e9 + 5.56e9 + 0.44e9 + 0.17e9 + 0.24e9}
SIZES = {"cuda": (16, 24, 48, 80, 141), "cpu": (16, 32, 64, 128)}
LIMITS = (1, 8, 16)


def slots(device: str, size_gb: int, limit: int) -> int:
    dtype = torch.float16 if device == "cuda" else torch.float32
    free = int(size_gb * 1e9 - RESIDENT[device])
    slot = kv_bytes(48, 1536, POSITIONS, dtype)
    working = working_memory(30.0, melody=True, mbd=True, device=device, predictions=limit, prefill=prefill_bytes(slot))
    try:
        return plan_slots(limit, slot, working, free, device).slots
    except NotEnoughMemory:
        return 0


def table() -> str:
    lines = [
        "| device | memory | free after loading | a slot | slots at COG_MAX_CONCURRENCY=1 / 8 (default) / 16 |",
        "|---|---|---|---|---|",
    ]
    for device, sizes in SIZES.items():
        dtype = torch.float16 if device == "cuda" else torch.float32
        for size in sizes:
            counts = " / ".join(str(slots(device, size, limit)) for limit in LIMITS)
            free, slot = gigabytes(int(size * 1e9 - RESIDENT[device])), gigabytes(kv_bytes(48, 1536, POSITIONS, dtype))
            lines.append(f"| {'GPU' if device == 'cuda' else 'CPU'} | {size} GB | {free} | {slot} | {counts} |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(table())
