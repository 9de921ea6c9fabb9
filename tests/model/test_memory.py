"""Slots sized by memory: what a GPU's `mem_get_info` or a CPU's available memory (a container's
limit included) leaves beside the other stages' working memory, at most the concurrency limit.

The device's answers are stood in for: `torch.cuda.mem_get_info` for cards of 16, 24 and 80 GB,
a cgroup's files for a container limited to 4 GB. The per-slot figure is MusicGen-melody's."""

from __future__ import annotations

import logging

import pytest
import torch

from bench.memory_table import POSITIONS, RESIDENT
from musicgen_cog.model import memory
from musicgen_cog.model.fast_decode import kv_bytes
from musicgen_cog.model.loading import load_model, start_decoding_loop
from musicgen_cog.model.memory import GIB, NotEnoughMemory, free_memory, plan_slots, prefill_bytes, working_memory

GPU_SLOT = kv_bytes(layers=48, dim=1536, positions=POSITIONS, dtype=torch.float16)
CPU_SLOT = kv_bytes(layers=48, dim=1536, positions=POSITIONS, dtype=torch.float32)
RESIDENT_ON_A_GPU = int(RESIDENT["cuda"])  # CUDA context, fp16 LM, fp32 T5, htdemucs and EnCodec: computed


def melody(device: str, predictions: int) -> memory.WorkingMemory:
    """The other stages' working memory beside MusicGen-melody's slots."""
    slot = GPU_SLOT if device == "cuda" else CPU_SLOT
    return working_memory(
        30.0, melody=True, mbd=True, device=device, predictions=predictions, prefill=prefill_bytes(slot)
    )


def test_a_text_only_checkpoint_keeps_no_stems_and_two_predictions_keep_every_stage():
    """No htdemucs without a melody conditioner, no MBD where the checkpoint cannot use it, no cuBLAS
    workspaces on a CPU; two predictions may each be in another stage, so all are kept at once."""
    working = working_memory(10.0, melody=False, mbd=False, device="cpu", predictions=2, prefill=1000)
    assert working.stages == {"conditioning": 64 * 2**20, "prefill": 1000, "codec": (48 + 42 * 10) * 2**20}
    assert working.total == (64 + 48 + 420) * 2**20 + 1000
    assert working.describe() == "conditioning 0.07 GB, prefill 0.00 GB, codec 0.49 GB"


def test_a_melody_size_slot_takes_1_36_gb_in_fp16_and_twice_that_in_fp32():
    assert GPU_SLOT == 2 * 2 * 48 * 2304 * 1536 * 2 == 1_358_954_496
    assert CPU_SLOT == 2 * GPU_SLOT


# The other stages beside 8 predictions on a GPU, stage by stage as docs/memory-and-faults.md gives
# them, worked out here by hand: T5 64 MiB and htdemucs 1,400 MiB; a prefill of 1.5 fp16 slots; the
# codec's 48 MiB and 42 MiB per second of a 30 s window; MBD 3 GiB; a 32 MiB cuBLAS workspace for
# each of 10 streams (the loop's, the health check's, 8 predictions').
STAGES_OF_8_ON_A_GPU = [1_535_115_264, 2_038_431_744, 1_371_537_408, 3_221_225_472, 335_544_320]
A_GPU_SLOT_AND_ITS_STEP_WORK = 1_358_954_496 + 4_194_304


@pytest.mark.parametrize("card, slots", [(16, 2), (24, 8), (80, 8)])
def test_the_slots_a_gpu_card_gets_for_the_default_limit_of_8(card, slots, monkeypatch):
    """The planner's sum and division against the figures above: what fits (49 on 80 GB), capped at the limit."""
    free = card * 10**9 - RESIDENT_ON_A_GPU
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda *device: (free, card * 10**9))
    plan = plan_slots(8, GPU_SLOT, melody("cuda", 8), free_memory("cuda"), "cuda")
    assert plan.working.total == sum(STAGES_OF_8_ON_A_GPU) and plan.per_slot == A_GPU_SLOT_AND_ITS_STEP_WORK
    assert plan.slots == min(8, (free - sum(STAGES_OF_8_ON_A_GPU)) // A_GPU_SLOT_AND_ITS_STEP_WORK) == slots
    assert plan.describe() == (
        f"KV cache: {slots} of 8 slots fit in {free / 1e9:.2f} GB free on the cuda (1.36 GB each; kept for the "
        "other stages: conditioning 1.54 GB, prefill 2.04 GB, codec 1.37 GB, MultiBand Diffusion 3.22 GB, "
        "and cuBLAS workspaces 0.34 GB)"
    )


def test_an_80_gb_card_holds_far_more_than_8_slots_when_the_limit_allows():
    working = melody("cuda", 32)
    assert plan_slots(32, GPU_SLOT, working, 80 * 10**9 - RESIDENT_ON_A_GPU, "cuda").slots == 32
    working = melody("cuda", 64)
    assert plan_slots(64, GPU_SLOT, working, 80 * 10**9 - RESIDENT_ON_A_GPU, "cuda").slots == 48


def cgroup(tmp_path, limit: int | str, usage: int, version: int = 2):
    root = tmp_path / "cgroup"
    folder = root if version == 2 else root / "memory"
    folder.mkdir(parents=True)
    names = ("memory.max", "memory.current") if version == 2 else ("memory.limit_in_bytes", "memory.usage_in_bytes")
    (folder / names[0]).write_text(f"{limit}\n")
    (folder / names[1]).write_text(f"{usage}\n")
    return root


MACHINE_AVAILABLE = 8 * GIB


@pytest.fixture
def machine(tmp_path, monkeypatch) -> int:
    """A machine whose /proc/meminfo says MACHINE_AVAILABLE is available (the real file changes
    between two reads)."""
    meminfo = tmp_path / "meminfo"
    kilobytes = MACHINE_AVAILABLE // 1024
    meminfo.write_text(f"MemTotal: 16777216 kB\nMemFree: 1048576 kB\nMemAvailable: {kilobytes:>10} kB\nBuffers: 4 kB\n")
    monkeypatch.setattr(memory, "MEMINFO", meminfo)
    return MACHINE_AVAILABLE


def test_without_a_container_the_cpu_has_the_machines_available_memory(machine, monkeypatch):
    monkeypatch.setattr(memory, "CGROUP", memory.CGROUP / "absent")
    assert free_memory("cpu") == machine


def test_a_kernel_without_memavailable_fails_setup_saying_so(tmp_path, monkeypatch):
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal: 16777216 kB\nMemFree: 1048576 kB\n")
    monkeypatch.setattr(memory, "MEMINFO", meminfo)
    monkeypatch.setattr(memory, "CGROUP", memory.CGROUP / "absent")
    with pytest.raises(AssertionError, match=r"^/proc/meminfo has no MemAvailable \(Linux 3\.14 and later have it\)$"):
        free_memory("cpu")


@pytest.mark.parametrize("version", [2, 1])
def test_a_containers_limit_caps_the_cpus_free_memory(tmp_path, monkeypatch, machine, version):
    monkeypatch.setattr(memory, "CGROUP", cgroup(tmp_path, 4 * GIB, 1 * GIB, version))
    assert free_memory("cpu") == 3 * GIB


@pytest.mark.parametrize("version", [2, 1])
def test_a_container_with_room_to_spare_gets_what_the_machine_has_available(tmp_path, monkeypatch, machine, version):
    monkeypatch.setattr(memory, "CGROUP", cgroup(tmp_path, 64 * GIB, 1 * GIB, version))
    assert free_memory("cpu") == machine


def test_a_container_over_its_limit_has_nothing_free(tmp_path, monkeypatch, machine):
    monkeypatch.setattr(memory, "CGROUP", cgroup(tmp_path, 4 * GIB, 5 * GIB))
    assert free_memory("cpu") == 0


@pytest.mark.parametrize("limit, version", [("max", 2), (2**63 - 4096, 1)], ids=["v2-max", "v1-huge-number"])
def test_no_limit_leaves_the_machines_available_memory(tmp_path, monkeypatch, machine, limit, version):
    monkeypatch.setattr(memory, "CGROUP", cgroup(tmp_path, limit, 1 * GIB, version))
    assert free_memory("cpu") == machine


def test_a_cgroup_that_gives_a_limit_but_not_its_usage_is_no_limit(tmp_path, monkeypatch, machine):
    root = cgroup(tmp_path, 4 * GIB, 1 * GIB)
    (root / "memory.current").unlink()
    monkeypatch.setattr(memory, "CGROUP", root)
    assert free_memory("cpu") == machine


def test_sizes_are_written_in_gigabytes_of_a_billion_bytes():
    assert memory.gigabytes(2 * 10**9) == "2.00 GB"
    assert memory.gigabytes(1_375_000_000) == "1.38 GB"  # a tie at two decimals, rounded to even


def test_a_4_gb_container_cannot_hold_a_melody_size_slot_and_says_what_it_needs(tmp_path, monkeypatch, machine):
    monkeypatch.setattr(memory, "CGROUP", cgroup(tmp_path, 4 * GIB, int(0.5 * GIB)))
    working = melody("cpu", 8)
    with pytest.raises(NotEnoughMemory) as refused:
        plan_slots(8, CPU_SLOT, working, free_memory("cpu"), "cpu")
    needed = CPU_SLOT + memory.STEP_WORK_PER_SLOT + working.total
    assert str(refused.value) == (
        "not enough CPU memory for one request: a slot of the KV cache takes 2.72 GB and the other stages "
        f"{working.total / 1e9:.2f} GB at once (conditioning 1.54 GB, prefill 4.08 GB, codec 1.37 GB, "
        f"MultiBand Diffusion 3.22 GB), {needed / 1e9:.2f} GB in all, but 3.76 GB is free after loading the "
        "model. Use a device with more memory, free some, or serve one prediction at a time "
        "(COG_MAX_CONCURRENCY=1: its stages take turns, so only the largest one's memory is kept)."
    )


def test_one_prediction_at_a_time_keeps_only_its_largest_stage(tmp_path, monkeypatch):
    """A 16 GB machine after the fp32 model (7.4 GB resident): no room for 8 predictions' stages
    beside a slot, room for one prediction, whose stages take turns (the largest: a prefill)."""
    free = 16 * 10**9 - int(7.4e9)
    with pytest.raises(NotEnoughMemory):
        plan_slots(8, CPU_SLOT, melody("cpu", 8), free, "cpu")
    alone = melody("cpu", 1)
    assert alone.total == prefill_bytes(CPU_SLOT) and alone.describe().startswith("the largest of conditioning")
    assert plan_slots(1, CPU_SLOT, alone, free, "cpu").slots == 1


def test_the_loop_gets_the_slots_that_fit_and_says_so(tiny_weights, monkeypatch, logs):
    model = load_model(tiny_weights, device="cpu", slots=1)
    tiny_slot = kv_bytes(layers=2, dim=32, positions=POSITIONS, dtype=torch.float32)
    per_slot = tiny_slot + memory.STEP_WORK_PER_SLOT
    working = working_memory(30.0, melody=True, mbd=True, device="cpu", predictions=8, prefill=prefill_bytes(tiny_slot))
    monkeypatch.setattr(memory, "_meminfo_available", lambda: working.total + 3 * per_slot + 1)
    monkeypatch.setattr(memory, "CGROUP", memory.CGROUP / "absent")
    start_decoding_loop(model, 8)
    assert model.loop is not None and model.loop.slots == 3 and model.plan is not None and model.plan.slots == 3
    lines = [r.getMessage() for r in logs.records if r.levelno == logging.INFO]
    assert any(line.startswith("KV cache: 3 of 8 slots fit in ") for line in lines)


def test_a_machine_too_small_for_one_slot_fails_setup_naming_the_memory(tiny_weights, monkeypatch):
    monkeypatch.setattr(memory, "_meminfo_available", lambda: 1 * GIB)
    monkeypatch.setattr(memory, "CGROUP", memory.CGROUP / "absent")
    with pytest.raises(NotEnoughMemory, match=r"^not enough CPU memory for one request: .* but 1\.07 GB is free"):
        load_model(tiny_weights, device="cpu", slots=8)


def test_the_manuals_memory_table_is_what_the_planner_computes():
    from bench.memory_table import table
    from tests.conftest import ROOT

    assert table() in (ROOT / "docs" / "memory-and-faults.md").read_text()
