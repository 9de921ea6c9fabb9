"""The real Cog HTTP server on a loopback port, with tiny weights: contract, modes, errors, lifecycle."""

from __future__ import annotations

import base64
import io
import re
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import requests
import soundfile

from musicgen_cog.api.concurrency import DEFAULT_CONCURRENCY
from tests.cog_server import CogServer, Receiver
from tests.helpers import HOSTED_API, SAMPLE_RATE, data_uri, decoding_steps, write_tone


def data_uri_audio(uri: str) -> tuple[np.ndarray, int]:
    header, encoded = uri.split(",", 1)
    assert header == "data:audio/wav;base64"
    return soundfile.read(io.BytesIO(base64.b64decode(encoded)))


# --- the schema contract -----------------------------------------------------------------------


def test_served_input_schema_matches_the_hosted_api_field_by_field(server):
    served = requests.get(f"{server.url}/openapi.json", timeout=10).json()["components"]["schemas"]
    properties = served["Input"]["properties"]
    hosted = {field["name"]: field for field in HOSTED_API["inputs"]}
    assert sorted(properties, key=lambda name: properties[name]["x-order"]) == list(hosted)  # names, order
    for name, expected in hosted.items():
        prop = properties[name]
        if "enum" in expected:
            enum = served[prop["allOf"][0]["$ref"].rsplit("/", 1)[1]]
            assert (enum["type"], enum["enum"]) == (expected["type"], expected["enum"]), name
        elif expected.get("file"):  # a file: a string holding a URI (http(s) or data:)
            assert (prop["type"], prop["format"]) == ("string", "uri")
        else:
            assert prop["type"] == expected["type"], name
        if "default" in expected:
            assert prop["default"] == expected["default"], name
        else:  # no hosted default: optional, so omitting it must be accepted
            assert name not in served["Input"].get("required", []) and prop.get("nullable") is True, name
        assert prop["description"] == expected["description"], name
    assert served["Output"] == HOSTED_API["output"]


def test_the_only_widened_constraint_is_continuation_end_minus_one(server):
    properties = requests.get(f"{server.url}/openapi.json", timeout=10).json()["components"]["schemas"]["Input"][
        "properties"
    ]
    constrained = {
        name: (p.get("minimum"), p.get("maximum")) for name, p in properties.items() if "minimum" in p or "maximum" in p
    }
    # hosted: continuation_start ge=0 and continuation_end ge=0; we accept -1 for "end of clip" as documented
    assert constrained == {"continuation_start": (0, None), "continuation_end": (-1, None)}


# --- predictions over HTTP ---------------------------------------------------------------------


def test_a_sync_prediction_returns_a_data_uri_of_the_audio(server, predictor):
    response = server.predict(input={"prompt": "lofi", "duration": 2, "seed": 0})
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "succeeded", body
    samples, rate = data_uri_audio(body["output"])
    assert rate == SAMPLE_RATE and samples.shape == (2 * SAMPLE_RATE,)
    steps = decoding_steps(predictor.model.musicgen, 2)
    assert "Using seed 0" in body["logs"] and f"generation: {steps}/{steps} steps (100%)" in body["logs"]


def test_omitted_optional_inputs_are_accepted(server):
    body = server.predict(input={"prompt": "x", "duration": 1}).json()
    assert body["status"] == "succeeded" and re.search(r"Using seed \d+", body["logs"])


def test_melody_from_an_uploaded_data_uri(server, tmp_path):
    melody = write_tone(tmp_path / "m.mp3", seconds=2.0, sample_rate=48000, channels=2)
    body = server.predict(
        input={
            "prompt": "x",
            "duration": 1,
            "input_audio": data_uri(melody.read_bytes(), "audio/mpeg"),
            "output_format": "mp3",
        }
    ).json()
    assert body["status"] == "succeeded", body.get("error")
    assert body["output"].startswith("data:audio/mpeg;base64,")


def test_continuation_with_minus_one_end(server, tmp_path):
    audio = write_tone(tmp_path / "c.wav", seconds=2.0)
    body = server.predict(
        input={
            "prompt": "x",
            "duration": 1,
            "continuation": True,
            "continuation_end": -1,
            "input_audio": data_uri(audio.read_bytes()),
        }
    ).json()
    assert body["status"] == "succeeded", body.get("error")
    assert data_uri_audio(body["output"])[0].shape == (3 * SAMPLE_RATE,)


@pytest.mark.parametrize(
    "bad_input, field",
    [
        ({"duration": "eight"}, "duration"),
        ({"duration": 2.5}, "duration"),
        ({"top_p": "high"}, "top_p"),
        ({"normalization_strategy": "lufs"}, "normalization_strategy"),
        ({"output_format": "ogg"}, "output_format"),
        ({"continuation_end": -2}, "continuation_end"),
        ({"continuation_start": -1}, "continuation_start"),
        ({"continuation": "maybe"}, "continuation"),
    ],
)
def test_schema_violations_are_422_naming_the_input(server, bad_input, field):
    response = server.predict(input={"prompt": "x", **bad_input})
    assert response.status_code == 422
    assert [d["loc"] for d in response.json()["detail"]] == [["body", "input", field]]


@pytest.mark.parametrize(
    "request_input, message",
    [
        ({"prompt": "x", "duration": 99999}, "duration must be between 1 and 300 seconds, got 99999"),
        ({"prompt": "x", "top_k": 2049}, "top_k must be between 0 and the codebook size 2048, got 2049"),
        ({"prompt": "x", "top_p": 1.5}, "top_p must be between 0 and 1, got 1.5"),
        ({"prompt": "x", "continuation": True}, "Must provide `input_audio` if continuation is `True`."),
        ({"duration": 1}, "Must provide either prompt or input_audio"),
    ],
)
def test_predictor_checks_fail_the_prediction_naming_the_input(server, request_input, message):
    body = server.predict(input=request_input).json()
    # coglet 0.23.1 words every failure of an async predictor
    # `Prediction failed: Async prediction failed: <class>: <message>`
    # (docs/serving.md#what-a-failed-prediction-says); a coglet that words it better fails here, to update that page.
    assert body["status"] == "failed"
    assert body["error"] == f"Prediction failed: Async prediction failed: InputError: {message}"


def test_an_explicit_null_is_a_422_as_in_cog(server):
    response = server.predict(input={"prompt": None, "duration": 1})
    assert response.status_code == 422 and response.json()["detail"][0]["loc"] == ["body", "input", "prompt"]


def test_a_non_audio_file_fails_naming_input_audio(server):
    fake = data_uri(b"definitely not audio" * 50)
    body = server.predict(input={"prompt": "x", "input_audio": fake}).json()
    assert body["status"] == "failed" and "input_audio could not be decoded" in body["error"]
    assert server.predict(input={"prompt": "x", "duration": 1}).json()["status"] == "succeeded"


def test_async_prediction_delivers_webhooks_processing_then_succeeded(server):
    receiver = Receiver()
    try:
        response = server.predict(
            headers={"Prefer": "respond-async"},
            id="async-1",
            input={"prompt": "x", "duration": 2, "seed": 1},
            webhook=f"{receiver.url}/hook",
            webhook_events_filter=["start", "completed"],
        )
        assert response.status_code == 202
        receiver.wait_for(lambda r: any(b["status"] == "succeeded" for b in r.json_bodies()))
        statuses = [b["status"] for b in receiver.json_bodies()]
        assert statuses[0] == "processing" and statuses[-1] == "succeeded"
        final = receiver.json_bodies()[-1]
        assert final["id"] == "async-1" and data_uri_audio(final["output"])[0].shape == (2 * SAMPLE_RATE,)
    finally:
        receiver.close()


def test_a_request_past_the_concurrency_limit_gets_409(server):
    ids = [f"busy-{i}" for i in range(DEFAULT_CONCURRENCY)]
    for prediction_id in ids:
        response = server.predict(
            headers={"Prefer": "respond-async"}, id=prediction_id, input={"prompt": "x", "duration": 60}
        )
        assert response.status_code == 202
    try:
        server.wait_for("BUSY", timeout=10)
        extra = server.predict(input={"prompt": "x", "duration": 1}, when_ready=False, retry_busy=False)
        assert extra.status_code == 409 and server.health()["status"] == "BUSY"
    finally:
        for prediction_id in ids:
            requests.post(f"{server.url}/predictions/{prediction_id}/cancel", timeout=10)
        server.wait_for("READY", timeout=120)


def test_output_files_do_not_accumulate(server, tmp_path):
    """The output folder keeps the files of the latest 2 x limit predictions (musicgen_cog/audio/writing.py)."""
    outputs = server.log_path.parent / "outputs"
    kept = 2 * DEFAULT_CONCURRENCY
    with ThreadPoolExecutor(DEFAULT_CONCURRENCY) as pool:
        requests_ = [{"prompt": f"x{i}", "duration": 1} for i in range(kept + 3)]
        bodies = list(pool.map(lambda given: server.predict(input=given).json(), requests_))
    assert [b["status"] for b in bodies] == ["succeeded"] * (kept + 3)
    assert len(list(outputs.iterdir())) == kept


# --- servers of their own ----------------------------------------------------------------------


@pytest.mark.slow
def test_upload_url_puts_each_file_under_a_unique_name(tiny_weights, schema_file, tmp_path):
    receiver = Receiver()
    server = CogServer(tiny_weights, tmp_path / "server.log", args=("--upload-url", f"{receiver.url}/upload/"))
    try:
        server.wait_for("READY")
        outputs = [server.predict(input={"prompt": "x", "duration": 1, "seed": 5}).json()["output"] for _ in range(2)]
        puts = [(path, body) for method, path, body in receiver.received if method == "PUT"]
        assert len(puts) == 2 and puts[0][0] != puts[1][0]
        for output, (path, body) in zip(outputs, puts, strict=True):
            assert path.startswith("/upload/musicgen-seed5-") and path.endswith(".wav")
            assert output.startswith(f"{receiver.url}{path}")
            assert soundfile.read(io.BytesIO(body))[0].shape == (SAMPLE_RATE,)
    finally:
        server.stop()
        receiver.close()


@pytest.mark.slow
def test_setup_without_weights_fails_naming_what_is_missing_and_how_to_get_it(schema_file, tmp_path):
    empty = tmp_path / "no-weights"
    empty.mkdir()
    server = CogServer(empty, tmp_path / "server.log")
    try:
        deadline = time.monotonic() + 120
        while server.health()["status"] != "SETUP_FAILED" and time.monotonic() < deadline:
            time.sleep(0.2)
        health = server.health()
        assert health["status"] == "SETUP_FAILED"
        logs = health["setup"]["logs"]
        assert "missing MusicGen-melody base model (facebook/musicgen-melody)" in logs
        assert f"make weights WEIGHTS_DIR={empty}" in logs
    finally:
        server.stop()
