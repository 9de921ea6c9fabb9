"""Faults through the real Cog server: out of memory in any stage fails its request alone, a
sticky device error makes the server say UNHEALTHY, and requests beyond the slots that fit wait.

The faults are injected from outside the serving code: coglet runs `tests/fault_injection.py`'s
Predictor, which patches library functions after the real setup (its MARKERS say which inputs
trigger which fault). Each test sends the faulty request between two good ones, at once.
"""

from __future__ import annotations

import re
from typing import Any

import pytest
import torch

from musicgen_cog.model.memory import prefill_bytes, working_memory
from tests.cog_server import CogServer
from tests.fault_injection import FAULT_ENV, FREE_MEMORY_ENV
from tests.helpers import data_uri, write_tone
from tests.test_concurrency import at_once, decoded

pytestmark = pytest.mark.slow  # servers of their own
STUB = {"COG_PREDICT_TYPE_STUB": "tests/fault_injection.py:Predictor"}
# the CPU's working memory for the other stages, and 2.5 tiny slots (2 rows x 2 layers x 2,304 x 32 fp32 + 4 MiB)
TINY_SLOT = 2 * 2 * 2 * 2304 * 32 * 4
FREE = working_memory(30.0, melody=True, mbd=True, device="cpu", predictions=4, prefill=prefill_bytes(TINY_SLOT)).total
FREE += int(2.5 * (TINY_SLOT + 4 * 2**20))
GOOD: list[dict[str, Any]] = [{"prompt": "good one", "duration": 1}, {"prompt": "good two", "duration": 2}]


def serve(tiny_weights, folder, **env) -> CogServer:
    server = CogServer(tiny_weights, folder / "server.log", env={**STUB, **env})
    server.wait_for("READY")
    return server


@pytest.fixture(scope="module")
def faulty(tiny_weights, schema_file, tmp_path_factory):
    """A server with 4 prediction slots whose KV cache, by the free memory it is shown, fits 2."""
    folder = tmp_path_factory.mktemp("faulty")
    server = serve(tiny_weights, folder, COG_MAX_CONCURRENCY="4", **{FREE_MEMORY_ENV: str(FREE)})
    yield server
    server.stop()


@pytest.fixture(scope="module")
def melody_of_2_5_s(tmp_path_factory) -> str:
    return data_uri(
        write_tone(tmp_path_factory.mktemp("melody") / "melody.wav", seconds=2.5, sample_rate=32000).read_bytes()
    )


STAGES = {
    "conditioning": ({"prompt": "x", "duration": 1, "input_audio": "melody"}, "conditioning (T5, stems)"),
    "admission": ({"prompt": "x", "duration": 1, "top_k": 7}, "joining the batch (the prefill of its conditions)"),
    "codec": ({"prompt": "x", "duration": 3}, "decoding the audio (EnCodec)"),
    "mbd": ({"prompt": "x", "duration": 1, "multi_band_diffusion": True}, "decoding with MultiBand Diffusion"),
    "writing": ({"prompt": "x", "duration": 4}, "normalizing and writing the audio"),
}


@pytest.mark.parametrize("stage", STAGES)
def test_out_of_memory_in_one_stage_fails_only_its_request_and_the_server_stays_ready(faulty, stage, melody_of_2_5_s):
    inputs, while_doing = STAGES[stage]
    inputs = {**inputs, "input_audio": melody_of_2_5_s} if "input_audio" in inputs else inputs
    bodies = at_once(faulty, [GOOD[0], inputs, GOOD[1]])
    assert [b["status"] for b in bodies] == ["succeeded", "failed", "succeeded"], bodies[1].get("error")
    assert bodies[1]["error"].endswith(
        f"OutOfMemory: the CPU ran out of memory while {while_doing}; try a shorter duration, or fewer requests at once"
    )
    assert faulty.health()["status"] == "READY"
    assert faulty.predict(input=GOOD[0]).json()["status"] == "succeeded"


def test_a_step_that_runs_out_of_memory_once_is_tried_again_and_every_request_in_it_succeeds(faulty):
    """The faulty step holds the marked request (top_k 8) and a good one (top_k 250): both succeed."""
    bodies = at_once(faulty, [GOOD[0], {"prompt": "x", "duration": 2, "top_k": 8}, GOOD[1]])
    assert [b["status"] for b in bodies] == ["succeeded"] * 3
    log = faulty.log_path.read_text()
    assert "fault injection: a step of windows with top_k [8, 250] ran out of memory" in log
    assert "a decoding step ran out of memory; trying it once more" in log


def test_predictions_beyond_the_slots_that_fit_wait_for_one_inside_the_server(faulty):
    assert f"KV cache: 2 of 4 slots fit in {FREE / 1e9:.2f} GB free" in faulty.log_path.read_text()
    inputs = [{"prompt": f"wait {i}", "duration": 2, "seed": i} for i in range(4)]
    bodies = at_once(faulty, inputs)
    assert [b["status"] for b in bodies] == ["succeeded"] * 4
    assert all(decoded(b["output"])[1].shape == (2 * 32000,) for b in bodies)


def test_a_sticky_device_error_fails_the_requests_and_the_server_says_unhealthy(tiny_weights, schema_file, tmp_path):
    server = serve(tiny_weights, tmp_path)
    try:
        bodies = at_once(server, [{"prompt": "x", "duration": 20}, {"prompt": "x", "duration": 2, "top_k": 9}])
        assert [b["status"] for b in bodies] == ["failed", "failed"]
        for body in bodies:
            assert (
                "DeviceFailed: the GPU failed (AcceleratorError: CUDA error: an illegal memory access" in body["error"]
            )
            assert body["error"].endswith("the server reports itself unhealthy and must be restarted")
        assert server.wait_for("UNHEALTHY", timeout=30)["status"] == "UNHEALTHY"
    finally:
        server.stop()


def test_a_path_that_fails_its_proof_is_stepped_down_from_before_the_server_says_ready(
    tiny_weights, schema_file, tmp_path
):
    """The GPU's ladder on a CPU (MUSICGEN_DECODER=batched) with a sampler that ranks tokens from
    the wrong end: both batched rungs fail the sampler check, per slot serves, and says so."""
    server = serve(tiny_weights, tmp_path, MUSICGEN_DECODER="batched", **{FAULT_ENV: "sampler"})
    try:
        body = server.predict(input=GOOD[0]).json()
        assert body["status"] == "succeeded" and body["metrics"]["decoding_path"] == "per-slot"
        log = server.log_path.read_text()
        for path, below in (("batched, row-wise attention", "batched, SDPA"), ("batched, SDPA", "per slot")):
            assert re.search(f'"decoding path {path} failed its proof: sampler \\d+ > 0; trying {below}"', log)
        assert "decoding path: per slot, proven in " in log
    finally:
        server.stop()


def test_a_capture_that_fails_after_ready_makes_the_server_unhealthy_while_it_serves_on(
    tiny_weights, schema_file, tmp_path
):
    """Not out of memory: PyTorch's allocator may be left believing a capture is under way, so
    the platform should replace the server; until it does, requests decode without graphs."""
    server = serve(tiny_weights, tmp_path, MUSICGEN_DECODER="batched", **{FAULT_ENV: "capture"})
    try:
        first = server.predict(input=GOOD[0]).json()  # meets no graph: its span is captured once it has left
        assert first["status"] == "succeeded" and first["metrics"]["decoding_path"] == "batched-rowwise"
        assert server.wait_for("UNHEALTHY", timeout=30)["status"] == "UNHEALTHY"
        assert server.predict(input=GOOD[1], when_ready=False).json()["status"] == "succeeded"
        assert (
            "CUDA graph capture failed (RuntimeError: CUDA error: operation not permitted when stream is capturing "
            "(injected)) after setup; decoding on without graphs; health now fails so that the platform replaces "
            "this server"
        ) in server.log_path.read_text()
    finally:
        server.stop()


@pytest.mark.skipif(torch.cuda.is_available(), reason="a machine without a GPU")
def test_an_image_that_expects_a_gpu_and_sees_none_fails_setup_saying_why(tiny_weights, schema_file, tmp_path):
    """What cog.yaml's MUSICGEN_DEVICE=cuda does in a container started without GPUs."""
    server = CogServer(tiny_weights, tmp_path / "server.log", env={"MUSICGEN_DEVICE": "cuda"})
    try:
        with pytest.raises(RuntimeError) as failed:
            server.wait_for("READY")
        assert str(failed.value).startswith("setup failed: ")
        assert "MUSICGEN_DEVICE=cuda, but torch" in str(failed.value) and "--gpus all" in str(failed.value)
    finally:
        server.stop()
