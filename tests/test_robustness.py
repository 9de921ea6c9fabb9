"""Bad input, faults and load through the real HTTP server: nothing crashes, hangs or leaks.

Every request has a time limit; "no hang" means each one answers within it.
"""

from __future__ import annotations

import base64
import hashlib
import http.server
import io
import math
import os
import statistics
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests
import soundfile

from musicgen_cog.api.concurrency import DEFAULT_CONCURRENCY
from musicgen_cog.weights.finetune_source import finetune_cache_path
from tests.cog_server import CogServer, Receiver
from tests.helpers import SAMPLE_RATE, data_uri, process_tree_memory_mb, samples_per_frame, tone, write_tone
from tests.loopback import LoopbackServer, Quiet

REQUEST_LIMIT = 120  # seconds any single request may take before it counts as a hang


def wav_bytes(samples: np.ndarray, rate: int, subtype: str = "PCM_16") -> bytes:
    buffer = io.BytesIO()
    soundfile.write(buffer, samples, rate, format="WAV", subtype=subtype)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def audio(tmp_path_factory):
    """Payloads by name: data URIs of odd, broken and extreme audio."""
    folder = tmp_path_factory.mktemp("payloads")
    mp3 = write_tone(folder / "t.mp3", seconds=3.0).read_bytes()
    with_nan = tone(1.0, 44100, 1)
    with_nan[100] = math.nan
    with_inf = tone(1.0, 44100, 1)
    with_inf[200] = math.inf
    square = np.sign(np.sin(2 * np.pi * 220 * np.arange(88200) / 44100)).astype(np.float32)[:, None]
    return {
        "empty file": data_uri(b""),
        "random bytes named .wav": data_uri(os.urandom(4096)),
        "text file": data_uri(b"lyrics, not audio\n" * 40, "text/plain"),
        "truncated mp3": data_uri(mp3[: len(mp3) // 2], "audio/mpeg"),
        "zero-length audio": data_uri(wav_bytes(np.zeros((0, 1), np.float32), 44100)),
        "10 ms audio": data_uri(wav_bytes(tone(0.01, 44100, 1), 44100)),
        "10 minutes of audio": data_uri(wav_bytes(tone(600.0, 8000, 1), 8000)),
        "11 minutes of audio": data_uri(wav_bytes(tone(660.0, 8000, 1), 8000)),
        "8 kHz": data_uri(wav_bytes(tone(2.0, 8000, 1), 8000)),
        "96 kHz": data_uri(wav_bytes(tone(2.0, 96000, 2), 96000)),
        "192 kHz": data_uri(wav_bytes(tone(2.0, 192000, 1), 192000)),
        "6 channels": data_uri(wav_bytes(tone(2.0, 48000, 6), 48000)),
        "silence": data_uri(wav_bytes(np.zeros((88200, 1), np.float32), 44100)),
        "full-scale square wave": data_uri(wav_bytes(square, 44100, "FLOAT")),
        "float wav with NaN": data_uri(wav_bytes(with_nan, 44100, "FLOAT")),
        "float wav with inf": data_uri(wav_bytes(with_inf, 44100, "FLOAT")),
        "4 s clip": data_uri(wav_bytes(tone(4.0, 44100, 1), 44100)),
    }


OK, FAILED, INVALID = "a valid file", "a failed prediction naming", "422 naming"

# (case, input beyond the defaults (an audio payload by name under "input_audio"), outcome, detail)
CASES = [
    ("empty file", {"input_audio": "empty file"}, FAILED, "input_audio"),
    ("random bytes named .wav", {"input_audio": "random bytes named .wav"}, FAILED, "input_audio"),
    ("a text file", {"input_audio": "text file"}, FAILED, "input_audio"),
    ("truncated mp3", {"input_audio": "truncated mp3"}, OK, 1),
    ("zero-length audio", {"input_audio": "zero-length audio"}, FAILED, "input_audio"),
    ("10 ms audio as melody", {"input_audio": "10 ms audio"}, OK, 1),
    ("10 ms audio continued", {"input_audio": "10 ms audio", "continuation": True}, OK, 1),
    ("10 minutes of audio (the limit)", {"input_audio": "10 minutes of audio"}, OK, 1),
    ("11 minutes of audio", {"input_audio": "11 minutes of audio"}, FAILED, "input_audio"),
    ("8 kHz", {"input_audio": "8 kHz"}, OK, 1),
    ("96 kHz stereo", {"input_audio": "96 kHz"}, OK, 1),
    ("192 kHz", {"input_audio": "192 kHz", "continuation": True}, OK, 3),
    ("6 channels", {"input_audio": "6 channels"}, OK, 1),
    ("silence as melody, peak normalization", {"input_audio": "silence", "normalization_strategy": "peak"}, OK, 1),
    ("silence continued", {"input_audio": "silence", "continuation": True}, OK, 3),
    ("full-scale square wave", {"input_audio": "full-scale square wave"}, OK, 1),
    ("float wav holding NaN", {"input_audio": "float wav with NaN"}, FAILED, "input_audio"),
    ("float wav holding inf", {"input_audio": "float wav with inf"}, FAILED, "input_audio"),
    (
        "continuation_start past the end",
        {"input_audio": "4 s clip", "continuation": True, "continuation_start": 9},
        FAILED,
        "continuation_start",
    ),
    (
        "continuation_end past the clip",
        {"input_audio": "4 s clip", "continuation": True, "continuation_end": 60},
        OK,
        5,
    ),
    ("duration 0", {"duration": 0}, FAILED, "duration"),
    ("duration negative", {"duration": -5}, FAILED, "duration"),
    ("duration past the maximum", {"duration": 301}, FAILED, "duration"),
    ("duration as a float", {"duration": 1.5}, INVALID, "duration"),
    ("an empty prompt", {"prompt": ""}, FAILED, "Must provide either prompt or input_audio"),
    ("a 20,000-character prompt", {"prompt": "jazz " * 4000}, FAILED, "prompt"),
    ("emoji and right-to-left text", {"prompt": "🎷🎶 موسيقى جاز hot jazz"}, OK, 1),
    ("control characters", {"prompt": "jazz\x00\x07\x1b[31m\r\n\t"}, OK, 1),
    ("top_k 0", {"top_k": 0}, OK, 1),
    ("top_k 1", {"top_k": 1}, OK, 1),
    ("top_k 2048", {"top_k": 2048}, OK, 1),
    ("top_k 2049", {"top_k": 2049}, FAILED, "top_k"),
    ("top_p 1.0", {"top_p": 1.0}, OK, 1),
    ("top_p 1.5", {"top_p": 1.5}, FAILED, "top_p"),
    ("top_p -0.5", {"top_p": -0.5}, FAILED, "top_p"),
    ("temperature 0", {"temperature": 0}, OK, 1),
    ("temperature 1e-6", {"temperature": 1e-6}, OK, 1),
    ("temperature negative", {"temperature": -1}, FAILED, "temperature"),
    ("guidance 0", {"classifier_free_guidance": 0}, OK, 1),
    ("seed out of range", {"seed": 2**40}, FAILED, "seed"),
    ("unknown output format", {"output_format": "flac"}, INVALID, "output_format"),
]


SLOW_CASES = {"10 minutes of audio (the limit)"}  # decoding and cutting 600 s of audio: 10 s here


@pytest.mark.parametrize(
    "case, overrides, outcome, detail",
    [pytest.param(*case, id=case[0], marks=[pytest.mark.slow] if case[0] in SLOW_CASES else []) for case in CASES],
)
def test_bad_and_edge_inputs(server, predictor, audio, case, overrides, outcome, detail):
    request_input = {"prompt": "jazz", "duration": 1, "seed": 7, **overrides}
    if "input_audio" in request_input:
        request_input["input_audio"] = audio[request_input["input_audio"]]
    started = time.monotonic()
    response = server.predict(input=request_input, timeout=REQUEST_LIMIT)
    assert response.status_code != 500 and time.monotonic() - started < REQUEST_LIMIT
    body = response.json()
    if outcome == INVALID:
        assert response.status_code == 422 and body["detail"][0]["loc"] == ["body", "input", detail]
        return
    assert response.status_code == 200
    if outcome == FAILED:
        assert body["status"] == "failed" and detail in body["error"], body
        assert "Traceback" not in body["error"]
        return
    assert body["status"] == "succeeded", body.get("error")
    samples, rate = soundfile.read(io.BytesIO(base64.b64decode(body["output"].split(",", 1)[1])))
    assert rate == SAMPLE_RATE and np.isfinite(samples).all()
    assert abs(len(samples) - detail * SAMPLE_RATE) <= samples_per_frame(predictor.model.musicgen)


# --- property-based fuzz of the API from its own schema ----------------------------------------


def coglet_survivable_id(prediction_id: str) -> str:
    """`prediction_id`, or a stand-in where coglet 0.23.1 would wedge on it: coglet makes
    `/tmp/coglet/predictions/<id>/` and never frees the slot when that fails (NUL byte, a name
    over 255 bytes), and a '/' lets the id place that folder elsewhere."""
    if "\x00" in prediction_id or "/" in prediction_id or len(prediction_id.encode()) > 200:
        return "fuzz-" + hashlib.sha256(prediction_id.encode("utf-8", "surrogatepass")).hexdigest()[:16]
    return prediction_id


@pytest.mark.slow
def test_fuzz_the_api_from_its_own_schema(server, capsys):
    """schemathesis generates requests from /openapi.json; no 5xx, every response conforms."""
    import schemathesis
    from hypothesis import HealthCheck, given, settings
    from schemathesis.checks import not_a_server_error
    from schemathesis.specs.openapi.checks import content_type_conformance, response_schema_conformance

    schema = schemathesis.openapi.from_url(f"{server.url}/openapi.json")
    tone_uri = data_uri(wav_bytes(tone(1.0, 16000, 1), 16000))
    cases: list[tuple[str, str, int]] = []

    def bound(case) -> None:
        """Keep valid cases quick and every URI local: a generated URL must never leave this machine.
        Prediction ids that wedge coglet itself are replaced (see the coglet tests below)."""
        if isinstance(case.body, dict) and isinstance(case.body.get("id"), str):
            case.body["id"] = coglet_survivable_id(case.body["id"])
        if case.path_parameters and isinstance(case.path_parameters.get("prediction_id"), str):
            case.path_parameters["prediction_id"] = coglet_survivable_id(case.path_parameters["prediction_id"])
        generated = case.body.get("input") if isinstance(case.body, dict) else None
        if isinstance(generated, dict):
            if isinstance(generated.get("duration"), int) and 1 <= generated["duration"] <= 300:
                generated["duration"] = min(generated["duration"], 2)
            if generated.get("input_audio") is not None:
                generated["input_audio"] = tone_uri

    for result in schema.get_all_operations():
        operation: Any = result.ok()  # type: ignore[union-attr]  # an Err raises here, failing the test

        @given(case=operation.as_strategy())
        @settings(max_examples=100, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        def run_case(case):
            bound(case)
            server.wait_for("READY", timeout=REQUEST_LIMIT)
            response = case.call_and_validate(
                base_url=server.url,
                timeout=REQUEST_LIMIT,
                checks=[not_a_server_error, response_schema_conformance, content_type_conformance],
            )
            cases.append((case.method, case.path, response.status_code))

        run_case()
    with capsys.disabled():
        by_status: dict[int, int] = {}
        for _, _, status in cases:
            by_status[status] = by_status.get(status, 0) + 1
        print(
            f"\nfuzz: {len(cases)} cases over {len({(m, p) for m, p, _ in cases})} operations; "
            f"responses by status {dict(sorted(by_status.items()))}"
        )
    assert len(cases) >= 150 and all(status < 500 for _, _, status in cases)


# --- coglet 0.23.1 bugs in handling client-chosen prediction ids (upstream; no newer coglet exists) ---
# Strict xfails: they state the right behaviour and will fail loudly once coglet is fixed, so that
# coglet_survivable_id can go. Behind Replicate the platform chooses ids; self-hosters should not
# let untrusted clients choose them (docs/serving.md#prediction-ids-a-coglet-problem-when-self-hosting).


@pytest.mark.slow
@pytest.mark.xfail(
    strict=True, reason="coglet 0.23.1 keeps the slot busy forever when it cannot create the prediction's folder"
)
@pytest.mark.parametrize("prediction_id", ["nul\x00byte", "x" * 300], ids=["nul-byte", "300-chars"])
def test_a_prediction_id_coglet_cannot_use_as_a_folder_name_leaves_the_server_ready(
    tiny_weights, schema_file, tmp_path, prediction_id
):
    # one slot: a slot kept busy is then a server that never says READY again
    server = CogServer(tiny_weights, tmp_path / "server.log", env={"COG_MAX_CONCURRENCY": "1"})
    try:
        server.wait_for("READY")
        response = requests.post(f"{server.url}/predictions", json={"id": prediction_id, "input": {}}, timeout=30)
        assert response.status_code < 500
        server.wait_for("READY", timeout=15)
    finally:
        server.stop()


@pytest.mark.slow
@pytest.mark.xfail(strict=True, reason="coglet 0.23.1 joins the id to /tmp/coglet/predictions unchecked")
def test_a_prediction_id_cannot_place_folders_outside_coglets_own(tiny_weights, schema_file, tmp_path):
    target = tmp_path / "escaped"
    server = CogServer(tiny_weights, tmp_path / "server.log")
    try:
        server.wait_for("READY")
        requests.post(f"{server.url}/predictions", json={"id": "../../.." + str(target), "input": {}}, timeout=30)
    finally:
        server.stop()
    assert not target.exists()


# --- soak ----------------------------------------------------------------------------------------


# Every kind of request, each mode and output path and each error path: the warm-up runs them all
# before the baseline, so that what a first use allocates for good is not taken for a leak.
SOAK_KINDS: list[tuple[dict[str, Any], str]] = [
    ({}, "succeeded"), ({"output_format": "mp3"}, "succeeded"), ({"input_audio": "4 s clip"}, "succeeded"),
    ({"input_audio": "4 s clip", "continuation": True}, "succeeded"), ({"multi_band_diffusion": True}, "succeeded"),
    ({"normalization_strategy": "peak"}, "succeeded"), ({"normalization_strategy": "rms"}, "succeeded"),
    ({"normalization_strategy": "clip"}, "succeeded"), ({"top_p": 0.9}, "succeeded"), ({"temperature": 0}, "succeeded"),
    ({"top_k": 0}, "succeeded"), ({"top_k": 2049}, "failed"), ({"input_audio": "random bytes named .wav"}, "failed"),
    ({"input_audio": "float wav with NaN"}, "failed"),
    ({"input_audio": "4 s clip", "continuation": True, "continuation_start": 9}, "failed"),
]  # fmt: skip
WARM_UP_ROUNDS = 2
MEASURED = 200
LEAK_SLOPE_MB = 0.2  # per request: 40 MB over the soak; a real leak of a request's audio is ~1 MB each


@pytest.mark.slow
def test_soak_memory_does_not_grow_per_request_and_files_do_not_accumulate(server, audio, capsys):
    """Mixed requests, DEFAULT_CONCURRENCY at a time; memory read after each round of them."""
    folder = server.log_path.parent

    def request(i: int) -> None:
        overrides, outcome = SOAK_KINDS[i % len(SOAK_KINDS)]
        overrides = {k: audio[v] if k == "input_audio" else v for k, v in overrides.items()}
        body = server.predict(input={"prompt": f"soak {i}", "duration": 1, "seed": i, **overrides},
                              timeout=REQUEST_LIMIT, when_ready=False).json()  # fmt: skip
        assert body["status"] == outcome, body

    def rounds(count: int) -> list[dict[str, float]]:
        memory = []
        with ThreadPoolExecutor(DEFAULT_CONCURRENCY) as pool:
            for start in range(0, count, DEFAULT_CONCURRENCY):
                list(pool.map(request, range(start, start + DEFAULT_CONCURRENCY)))
                memory.append(process_tree_memory_mb(server.process.pid))
        return memory

    warm_up = rounds(WARM_UP_ROUNDS * len(SOAK_KINDS))
    measured = rounds(MEASURED)
    anon = [m["RssAnon"] for m in measured]
    slope = statistics.linear_regression([DEFAULT_CONCURRENCY * i for i in range(len(anon))], anon).slope
    outputs = list((folder / "outputs").iterdir())
    leftovers = [p for p in (folder / "tmp").rglob("*") if p.is_file()]
    with capsys.disabled():
        print(f"\nsoak: {len(warm_up) * DEFAULT_CONCURRENCY} warm-up then {MEASURED} measured requests of "
              f"{len(SOAK_KINDS)} kinds, {DEFAULT_CONCURRENCY} at a time; "
              f"RssAnon {anon[0]:.0f} -> {anon[-1]:.0f} MB (min {min(anon):.0f}, max {max(anon):.0f}), "
              f"fitted growth {slope:+.3f} MB/request; "
              f"VmRSS {measured[0]['VmRSS']:.0f} -> {measured[-1]['VmRSS']:.0f} MB; "
              f"RssFile {warm_up[0]['RssFile']:.0f} -> {measured[-1]['RssFile']:.0f} MB; "
              f"output folder {len(outputs)} file(s); temp files left {len(leftovers)}")  # fmt: skip
    assert slope < LEAK_SLOPE_MB, f"RssAnon per round: {[round(a) for a in anon]}"
    assert len(outputs) <= 2 * DEFAULT_CONCURRENCY and leftovers == []


# --- faults --------------------------------------------------------------------------------------


@pytest.mark.slow
def test_twenty_cancellations_each_followed_by_a_good_prediction(server):
    receiver = Receiver()
    try:
        for i in range(20):
            server.start(f"cancel-{i}", receiver, prompt="x", duration=120)
            server.cancel_mid_way(f"cancel-{i}", receiver)  # stopped mid-way, or it fails
            assert server.predict(input={"prompt": "x", "duration": 1}).json()["status"] == "succeeded"
    finally:
        receiver.close()


@pytest.mark.parametrize("receiver_state", ["down", "slow"])
def test_a_webhook_receiver_down_or_slow_does_not_stall_predictions(server, receiver_state):
    if receiver_state == "down":
        probe = Receiver()
        url = probe.url
        probe.close()  # nothing listens there any more
    else:
        slow = Receiver(held=True)  # takes each webhook and answers none until the test ends
        url = slow.url
    try:
        assert (
            server.predict(
                headers={"Prefer": "respond-async"}, input={"prompt": "x", "duration": 1}, webhook=f"{url}/hook"
            ).status_code
            == 202
        )
        if receiver_state == "slow":
            slow.wait_for(lambda receiver: receiver.arrived)  # its first webhook is held from now on
        server.wait_for("READY", timeout=REQUEST_LIMIT)
        body = server.predict(input={"prompt": "x", "duration": 1}, timeout=REQUEST_LIMIT).json()
        assert body["status"] == "succeeded"  # within the limit, while the receiver still held its webhook
    finally:
        if receiver_state == "slow":
            slow.answering.set()
            slow.close()


class BadWeightsServer(LoopbackServer):
    """Serves COG_WEIGHTS badly: a 404, a 500, or a connection dropped mid-file."""

    def __init__(self, mode: str):
        class Handler(Quiet, http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                if mode in ("404", "500"):
                    self.send_response(int(mode))
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                self.send_response(200)
                self.send_header("Content-Length", "1000000")
                self.end_headers()
                self.wfile.write(b"PK" + b"\0" * 1000)
                self.connection.shutdown(2)

        super().__init__(Handler)
        self.file_url = f"{self.url}/trained_model.tar?token=secret"


def setup_failure_logs(weights_dir: Path, cog_weights: str, log_path: Path) -> str:
    server = CogServer(weights_dir, log_path, env={"COG_WEIGHTS": cog_weights})
    try:
        deadline = time.monotonic() + 120
        while server.health()["status"] not in ("SETUP_FAILED", "READY") and time.monotonic() < deadline:
            time.sleep(0.2)
        health = server.health()
        assert health["status"] == "SETUP_FAILED"
        return health["setup"]["logs"]
    finally:
        server.stop()


@pytest.mark.slow
@pytest.mark.parametrize(
    "mode, expected",
    [("404", "answered HTTP 404"), ("500", "answered HTTP 500"), ("drop", "failed: ChunkedEncodingError")],
)
def test_a_bad_cog_weights_url_fails_setup_clearly(tiny_weights, schema_file, tmp_path, mode, expected):
    bad = BadWeightsServer(mode)
    try:
        logs = setup_failure_logs(tiny_weights, bad.file_url, tmp_path / "server.log")
    finally:
        bad.close()
    error = next(line for line in logs.splitlines() if "could not download COG_WEIGHTS: " in line)
    assert expected in error and error.count(bad.file_url.split("?")[0]) == 1
    assert "token=secret" not in logs
    assert not finetune_cache_path(tiny_weights, bad.file_url).exists()  # nothing half-fetched is cached


@pytest.mark.slow
def test_a_corrupt_checkpoint_fails_setup_clearly(tiny_weights, schema_file, tmp_path):
    corrupt = tmp_path / "trained_model.tar"
    corrupt.write_bytes((tiny_weights / "trained_model.tar").read_bytes()[:100_000])
    logs = setup_failure_logs(tiny_weights, str(corrupt), tmp_path / "server.log")
    assert f"{corrupt} is not a readable PyTorch checkpoint" in logs


# --- security ------------------------------------------------------------------------------------


def test_external_tools_run_without_a_shell(run, tmp_path, monkeypatch):
    calls = []
    real_popen = subprocess.Popen

    def spy(args, *rest, **kwargs):
        calls.append((args, kwargs.get("shell", False)))
        return real_popen(args, *rest, **kwargs)

    monkeypatch.setattr(subprocess, "Popen", spy)
    run(output_format="mp3", input_audio=write_tone(tmp_path / "m.wav"))
    assert calls, "the mp3 encode should have run ffmpeg"
    assert all(isinstance(args, list) and shell is False for args, shell in calls)


def test_input_file_names_cannot_steer_where_anything_is_written(run, predictor, tmp_path, monkeypatch):
    workdir = tmp_path / "cwd"  # a shell runs `$(touch pwned)` and `touch pwned2` in its working folder
    workdir.mkdir()
    monkeypatch.chdir(workdir)
    nasty = tmp_path / "..%2F..%2Fetc; $(touch pwned) `touch pwned2` name.mp3"
    write_tone(nasty)
    before = set(tmp_path.rglob("*"))
    outs = set()
    for overrides in ({"continuation": True}, {"output_format": "mp3"}):  # the mp3 encode runs ffmpeg
        out = run(input_audio=nasty, **overrides)
        assert out.parent == predictor.outputs.path and out.name.startswith("musicgen-seed1-")
        outs.add(out)
    created = set(tmp_path.rglob("*")) - before
    assert created <= {*outs, out.parent}
    assert list(workdir.iterdir()) == []


def test_an_input_url_with_a_traversal_path_lands_only_in_temp_and_output(server, tmp_path):
    site = tmp_path / "site"
    site.mkdir()
    write_tone(site / "song.wav")

    class AnyPathServesTheSong(Quiet, http.server.SimpleHTTPRequestHandler):
        def translate_path(self, path):
            return str(site / "song.wav")

    with LoopbackServer(AnyPathServesTheSong) as song_site:
        url = f"{song_site.url}/..%2F..%2F..%2Ftmp%2Fescaped.wav"
        body = server.predict(input={"prompt": "x", "duration": 1, "input_audio": url}).json()
    assert body["status"] == "succeeded", body.get("error")
    assert not Path("/tmp/escaped.wav").exists()
    assert next(p.name for p in (server.log_path.parent / "outputs").iterdir()).startswith("musicgen-seed")
