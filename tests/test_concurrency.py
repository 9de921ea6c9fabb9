"""Concurrent predictions through the real Cog server: up to the limit at once, one shared decoding
loop, and each client sees only its own audio, logs, cancellation and failure."""

from __future__ import annotations

import base64
import io
import json
import re
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from typing import Any

import pytest
import soundfile

from musicgen_cog.api.concurrency import DEFAULT_CONCURRENCY
from musicgen_cog.model.decoding_path import DECODER_ENV
from tests.cog_server import CogServer, Receiver
from tests.helpers import SAMPLE_RATE, data_uri, write_tone
from tests.model.test_decoding_loop import wait_until


def decoded(uri: str) -> tuple[str, Any]:
    """(mime type, samples) of an output data URI."""
    header, payload = uri.split(",", 1)
    mime = header.removeprefix("data:").removesuffix(";base64")
    return mime, soundfile.read(io.BytesIO(base64.b64decode(payload)))[0]


def at_once(server, inputs: list[dict]) -> list[dict]:
    """POST every input at the same time; the response bodies, in order."""
    with ThreadPoolExecutor(len(inputs)) as pool:
        return list(pool.map(lambda i: server.predict(input=i, when_ready=False).json(), inputs))


def in_the_model(server) -> dict[str, list[datetime]]:
    """When each prediction was in the model, from the server's log: the time of its `... generating
    ...` line, then, once it has one, of its `decoded ...` line."""
    spans: dict[str, list[datetime]] = {}
    for line in server.log_path.read_text().split("\n")[:-1]:  # whole lines: the server is writing
        record = json.loads(line) if line.startswith("{") else {}
        fields = record.get("fields", {})
        prediction, message = fields.get("prediction_id"), fields.get("message", "")
        if prediction and re.search(r"\bgenerating \d", message):
            spans[prediction] = [datetime.fromisoformat(record["timestamp"])]
        elif prediction in spans and message.startswith("decoded "):
            spans[prediction].append(datetime.fromisoformat(record["timestamp"]))
    return spans


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> str:
    return data_uri(write_tone(tmp_path_factory.mktemp("clip") / "clip.wav", seconds=3.0).read_bytes())


def test_eight_concurrent_requests_of_mixed_modes_all_succeed_with_their_own_files_and_logs(server, clip):
    inputs = [
        {"prompt": "text", "duration": 2, "seed": 100},
        {"prompt": "mp3", "duration": 1, "seed": 101, "output_format": "mp3"},
        {"prompt": "melody", "duration": 2, "seed": 102, "input_audio": clip},
        {"prompt": "continue", "duration": 1, "seed": 103, "input_audio": clip, "continuation": True},
        {"prompt": "mbd", "duration": 1, "seed": 104, "multi_band_diffusion": True},
        {"prompt": "top p", "duration": 3, "seed": 105, "top_p": 0.9, "normalization_strategy": "peak"},
        {"prompt": "argmax", "duration": 1, "seed": 106, "temperature": 0, "classifier_free_guidance": 1},
        {"duration": 2, "seed": 107, "input_audio": clip, "output_format": "mp3"},  # no prompt: melody alone
    ]
    assert len(inputs) == DEFAULT_CONCURRENCY
    bodies = at_once(server, inputs)
    for given, body in zip(inputs, bodies, strict=True):
        assert body["status"] == "succeeded", body.get("error")
        mime, samples = decoded(body["output"])
        assert mime == ("audio/mpeg" if given.get("output_format") == "mp3" else "audio/wav")
        seconds = given["duration"] + (3 if given.get("continuation") else 0)
        if mime == "audio/wav":
            assert samples.shape == (seconds * SAMPLE_RATE,)
        else:  # mp3 frames pad the end
            assert seconds * SAMPLE_RATE <= samples.shape[0] < seconds * SAMPLE_RATE + 2 * 1152
        assert re.findall(r"Using seed (\d+)", body["logs"]) == [str(given["seed"])]  # its own logs only


@pytest.fixture(scope="module")
def batched_server(tiny_weights, schema_file, tmp_path_factory):
    """A second real server whose loop runs the GPU's batched step on this CPU."""
    folder = tmp_path_factory.mktemp("batched-server")
    instance = CogServer(tiny_weights, folder / "server.log", env={DECODER_ENV: "batched"})
    try:
        instance.wait_for("READY")
        yield instance
    finally:
        instance.stop()


@pytest.mark.parametrize("steps", ["default", pytest.param("batched", marks=pytest.mark.slow)])
def test_a_seeded_request_gives_the_same_audio_alone_and_in_company(request, steps, clip):
    """The same bytes: on either path (a CPU's default steps per slot), a request's numbers never
    depend on its company."""
    server = request.getfixturevalue("server" if steps == "default" else "batched_server")
    seeded = {"prompt": "the same", "duration": 2, "seed": 4242, "top_k": 50}
    alone = server.predict(input=seeded).json()
    others = [{"prompt": f"other {i}", "duration": 1 + i % 3, "input_audio": clip} for i in range(5)]
    together = at_once(server, [*others[:3], seeded, *others[3:]])
    assert alone["status"] == together[3]["status"] == "succeeded"
    assert together[3]["output"] == alone["output"]
    spans = in_the_model(server)
    start, end = spans[together[3]["id"]]
    beside = [b for b in together if b is not together[3] and spans[b["id"]][0] < end and start < spans[b["id"]][1]]
    assert beside, "the seeded request was in the model alone"


def test_one_cancelled_mid_way_while_two_others_finish(server):
    receiver = Receiver()
    try:
        earlier = set(in_the_model(server))
        server.start("cancel-me", receiver, prompt="long", duration=120)
        with ThreadPoolExecutor(2) as pool:
            finishing = [
                pool.submit(server.predict, input={"prompt": "x", "duration": 3, "seed": seed}, when_ready=False)
                for seed in (1, 2)
            ]
            wait_until(lambda: len(set(in_the_model(server)) - earlier) == 3)  # all three in the model at once
            server.cancel_mid_way("cancel-me", receiver)
            bodies = [f.result().json() for f in finishing]
    finally:
        receiver.close()
    assert [b["status"] for b in bodies] == ["succeeded", "succeeded"]
    assert all(decoded(b["output"])[1].shape == (3 * SAMPLE_RATE,) for b in bodies)


def test_failing_requests_beside_good_ones_fail_alone_with_todays_messages(server):
    good: list[dict[str, Any]] = [{"prompt": f"good {i}", "duration": 2} for i in range(3)]
    bad: list[dict[str, Any]] = [
        {"prompt": "x", "top_k": 2049},
        {"prompt": "x", "input_audio": data_uri(b"not audio" * 100)},
    ]
    bodies = at_once(server, [good[0], bad[0], good[1], bad[1], good[2]])
    assert [b["status"] for b in bodies] == ["succeeded", "failed", "succeeded", "failed", "succeeded"]
    assert bodies[1]["error"].endswith("InputError: top_k must be between 0 and the codebook size 2048, got 2049")
    assert "InputError: input_audio" in bodies[3]["error"]
