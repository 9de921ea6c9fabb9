"""How many slots of the KV cache fit beside everything else, measured at setup.

After the resident models are loaded, the free memory of the device (a GPU's `mem_get_info`; a
CPU's available memory, a container's limit included) less the working memory the other stages
of the largest request need at once gives the slots that fit; the decoding loop gets the fewer of
those and the concurrency limit. Predictions beyond the slots wait in the loop for one.

The working memory of each stage is written down here, once. Measured on a CPU in fp32 with the
real architectures and random weights (`python -m bench.stage_memory`, docs/benchmarks.md); the
same tensors are fp32 on a GPU too. MultiBand Diffusion's is estimated (its real architecture is
known only from its checkpoint, which no machine here has). GPU figures: computed, not measured.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch

log = logging.getLogger(__name__)
MIB, GIB = 1 << 20, 1 << 30
TEXT_ENCODER = 64 * MIB  # T5-base over the CFG pair of 512 tokens: 10 MiB measured
STEMS = 1400 * MIB  # htdemucs over a 30 s window and its null copy: 1,367 MiB measured
CODEC_PER_SECOND = 42 * MIB  # EnCodec 32 kHz decoding: 41.4 MiB per second of audio measured (10 s and 30 s)
CODEC_BASE = 48 * MIB  # ... plus 47 MiB whatever the length
MBD = 3 * GIB  # weights and a window's working memory of MultiBand Diffusion: estimated, unmeasured
# cuBLAS keeps a workspace per stream (32 MiB on Hopper): the loop's, the capture's, each request's
CUBLAS_WORKSPACE = 32 * MIB
STEP_WORK_PER_SLOT = 4 * MIB  # a slot's share of a step's own tensors (logits, sampling) and slot state
MEMINFO = Path("/proc/meminfo")
CGROUP = Path("/sys/fs/cgroup")
# (limit, usage) files of cgroup v2, then v1
CGROUP_FILES = (("memory.max", "memory.current"), ("memory/memory.limit_in_bytes", "memory/memory.usage_in_bytes"))


class NotEnoughMemory(RuntimeError):
    """Not even one slot fits: setup fails with the figures."""


@dataclass(frozen=True)
class WorkingMemory:
    """Bytes the stages beside the loop may hold, by stage: all at once when several predictions
    run (each may be in another stage), the largest alone when one does (its stages take turns)."""

    stages: dict[str, int]
    at_once: bool = True
    beside: dict[str, int] = field(default_factory=dict)  # held whatever runs (cuBLAS workspaces)

    @property
    def total(self) -> int:
        held = sum(self.stages.values()) if self.at_once else max(self.stages.values())
        return held + sum(self.beside.values())

    def describe(self) -> str:
        listed = ", ".join(f"{name} {gigabytes(size)}" for name, size in self.stages.items())
        beside = "".join(f", and {name} {gigabytes(size)}" for name, size in self.beside.items())
        return (listed if self.at_once else f"the largest of {listed}") + beside


def working_memory(
    window_seconds: float, melody: bool, mbd: bool, device: str, predictions: int, prefill: int
) -> WorkingMemory:
    """What conditioning (T5, and htdemucs for a melody model), a window's prefill (`prefill`
    bytes), the codec's decode of a whole window, MBD (where the checkpoint can use it) and, on a
    GPU, a cuBLAS workspace per stream (the loop's, the health check's, each prediction's) need,
    for `predictions` run at once. Each stage serves one request at a time (the conditioning,
    codec and MBD locks; the loop's single thread), so several predictions hold at most one of
    each at once."""
    stages = {"conditioning": TEXT_ENCODER + (STEMS if melody else 0), "prefill": prefill}
    stages["codec"] = CODEC_BASE + int(CODEC_PER_SECOND * window_seconds)
    if mbd:
        stages["MultiBand Diffusion"] = MBD
    beside = {"cuBLAS workspaces": CUBLAS_WORKSPACE * (predictions + 2)} if device == "cuda" else {}
    return WorkingMemory(stages, at_once=predictions > 1, beside=beside)


def prefill_bytes(kv_per_slot: int) -> int:
    """A prefill's peak: audiocraft's streaming forward keeps every layer's query, key and value
    projections of the whole prefix (keys and values are views of them) until they are copied
    into the slot: half as much again as the slot's keys and values, for a prefix as long."""
    return kv_per_slot * 3 // 2


@dataclass(frozen=True)
class SlotPlan:
    slots: int
    limit: int
    per_slot: int
    free: int
    working: WorkingMemory
    device: str

    def describe(self) -> str:
        return (
            f"KV cache: {self.slots} of {self.limit} slots fit in {gigabytes(self.free)} free on the {self.device} "
            f"({gigabytes(self.per_slot)} each; kept for the other stages: {self.working.describe()})"
        )


def plan_slots(limit: int, per_slot: int, working: WorkingMemory, free: int, device: str) -> SlotPlan:
    """The slots that fit in `free` bytes beside `working`, at most `limit`; NotEnoughMemory if none."""
    per_slot += STEP_WORK_PER_SLOT
    fit = max(0, (free - working.total) // per_slot)
    if fit < 1:
        needed = per_slot + working.total
        raise NotEnoughMemory(
            f"not enough {device.upper()} memory for one request: a slot of the KV cache takes "
            f"{gigabytes(per_slot)} and the other stages {gigabytes(working.total)} at once "
            f"({working.describe()}), {gigabytes(needed)} in all, but {gigabytes(free)} is free after loading "
            "the model. Use a device with more memory, free some, or serve one prediction at a time "
            "(COG_MAX_CONCURRENCY=1: its stages take turns, so only the largest one's memory is kept)."
        )
    return SlotPlan(min(limit, fit), limit, per_slot, free, working, device)


def free_memory(device: str) -> int:
    """Bytes this process can still allocate on `device`: the GPU's free memory, or the CPU's
    available memory within the container's limit (cgroup v2 or v1) if it has one."""
    if device == "cuda":
        free, _total = torch.cuda.mem_get_info()
        return int(free)
    available = _meminfo_available()
    limit = _cgroup_headroom()
    return available if limit is None else min(available, limit)


def _meminfo_available() -> int:
    text = MEMINFO.read_text()
    found = re.search(r"^MemAvailable:\s+(\d+) kB", text, re.MULTILINE)
    assert found, "/proc/meminfo has no MemAvailable (Linux 3.14 and later have it)"
    return int(found.group(1)) * 1024


def _cgroup_headroom() -> int | None:
    """The container's memory limit less what it uses, or None without a limit."""
    for limit_file, usage_file in CGROUP_FILES:
        limit_path, usage_path = CGROUP / limit_file, CGROUP / usage_file
        if limit_path.is_file() and usage_path.is_file():
            raw = limit_path.read_text().strip()
            if raw == "max" or int(raw) >= 1 << 60:  # v1 writes a huge number for "no limit"
                return None
            return max(0, int(raw) - int(usage_path.read_text().strip()))
    return None


def gigabytes(size: int) -> str:
    return f"{size / 1e9:.2f} GB"
