"""The page in a real browser (headless Chromium) against the real Cog server with tiny weights.

Each test does what a person would: fill the form, press a button, wait for what the page shows,
and checks it against the file and the server (the server's own log for a cancellation)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tests.cog_server import CogServer
from tests.helpers import SAMPLE_RATE, read_audio, write_tone
from tests.playground.driving import click_for_take, downloaded, generate, open_ready, wait_for_end
from tests.playground.running import RunningPlayground, closed_port

pytestmark = pytest.mark.slow  # a browser and generations: seconds each


def clip(path: Path, content: bytes) -> np.ndarray:
    path.write_bytes(content)
    samples, rate = read_audio(path)
    assert rate == SAMPLE_RATE
    return samples


def test_the_form_follows_the_served_schema(page, playground, server):
    open_ready(page, playground.url)
    served = playground.api("/api/schema")["components"]["schemas"]["Input"]["properties"]
    in_order = sorted(served, key=lambda name: served[name]["x-order"])
    assert page.eval_on_selector_all("#fields .field", "fields => fields.map(f => f.id.slice(6))") == in_order
    for name, prop in served.items():
        assert page.inner_text(f"#field-{name} .description") == prop["description"].replace("`", "")
    assert page.input_value("#input-duration") == "8" and page.input_value("#input-seed") == ""
    assert page.get_attribute("#input-continuation_start", "min") == "0"
    assert page.eval_on_selector_all("#input-normalization_strategy option", "o => o.map(e => e.value)") == [
        "loudness",
        "clip",
        "peak",
        "rms",
    ]


def test_a_prompt_gives_a_clip_of_the_requested_duration(page, playground, tmp_path):
    open_ready(page, playground.url)
    take = generate(page, prompt="brushed jazz trio", duration=2, output_format="mp3")
    assert wait_for_end(page, take) == "succeeded"
    assert page.eval_on_selector("#player", "p => p.duration") == pytest.approx(2, abs=0.1)  # mp3 frames pad
    name, content = downloaded(page, playground.url)
    seed = page.inner_text("#seed")
    assert re.fullmatch(rf"musicgen-seed{seed}-\w+\.mp3", name)
    assert len(clip(tmp_path / name, content)) == pytest.approx(2 * SAMPLE_RATE, abs=1152)
    assert page.eval_on_selector(
        "#waveform", "c => c.getContext('2d').getImageData(0, 0, c.width, c.height).data.some(v => v > 0)"
    )


def test_the_progress_bar_moves_before_the_clip_arrives(page, playground):
    open_ready(page, playground.url)
    take = generate(page, prompt="a long take", duration=120)  # 6,000 steps: progress lines (every 2 s) on fast CPUs
    seen = []  # (progress bar value, the text beside it), while the player has no clip yet
    deadline = time.monotonic() + 180
    while page.get_attribute("#take-status", "data-status") != "succeeded" and time.monotonic() < deadline:
        if page.is_hidden("#result"):
            seen.append(page.eval_on_selector("#progress", "p => [p.value, p.nextElementSibling.textContent]"))
        time.sleep(0.1)
    assert wait_for_end(page, take) == "succeeded"
    moving = [(value, text) for value, text in seen if 0 < value < 1]
    assert moving, f"the bar never moved before the clip came: {seen[-5:]}"
    steps = re.fullmatch(r"(\d+)/(\d+) decoding steps", moving[0][1])
    assert steps, moving[0]
    done, total = int(steps.group(1)), int(steps.group(2))
    assert 0 < done < total and moving[0][0] == pytest.approx(done / total)


def test_a_melody_upload_gives_a_clip(page, playground, tmp_path):
    open_ready(page, playground.url)
    page.set_input_files("#input-input_audio", str(write_tone(tmp_path / "melody.wav", seconds=3)))
    page.wait_for_function("document.getElementById('chosen-input_audio').textContent === 'melody.wav'")
    take = generate(page, prompt="the same tune", duration=1)
    assert wait_for_end(page, take) == "succeeded"
    assert "separating melody stems" in page.inner_text("#logs")
    assert len(clip(tmp_path / "out.wav", downloaded(page, playground.url)[1])) == SAMPLE_RATE
    assert "with open('melody.wav', \"rb\")" in page.inner_text("#code-python")
    assert playground.playground.takes[take].input["input_audio"] == "data:audio/wav;base64,"  # bytes not kept


def test_a_recording_made_in_the_browser_gives_a_clip(page, playground, tmp_path):
    open_ready(page, playground.url)
    page.click("#record-input_audio")
    page.wait_for_function("document.getElementById('record-input_audio').textContent === 'Stop recording'")
    time.sleep(1.5)
    page.click("#record-input_audio")
    page.wait_for_function("document.getElementById('chosen-input_audio').textContent.startsWith('recording.')")
    take = generate(page, prompt="hummed", duration=1)
    assert wait_for_end(page, take) == "succeeded", page.inner_text("#take-error")
    assert len(clip(tmp_path / "out.wav", downloaded(page, playground.url)[1])) == SAMPLE_RATE


def test_cancel_ends_the_prediction_on_the_server(page, playground, server):
    open_ready(page, playground.url)
    take = generate(page, prompt="too long", duration=300)
    page.wait_for_function("document.getElementById('progress').value > 0", timeout=120_000)
    page.click("#cancel")
    assert wait_for_end(page, take, timeout_s=30) == "canceled"
    log = server.log_path.read_text()
    assert re.search(rf'"Prediction cancelled","prediction_id":"{take}"', log), "the server never cancelled it"
    assert page.is_hidden("#cancel") and page.is_hidden("#result")


@pytest.mark.parametrize(
    "name, value, message",
    [
        ("top_k", 4000, "top_k must be between 0 and the codebook size 2048, got 4000"),  # the predictor's check
        ("continuation_start", -5, "continuation_start: -5 is less than the minimum of 0"),  # the schema's (422)
        ("duration", 400, "duration must be between 1 and 300 seconds, got 400"),  # a limit the schema does not say
    ],
)
def test_an_invalid_value_shows_the_apis_message_beside_its_input(page, playground, name, value, message):
    open_ready(page, playground.url)
    take = generate(page, **{"prompt": "x", "duration": 1, name: value})
    assert wait_for_end(page, take) == "failed"
    assert page.inner_text(f"#error-{name}") == message
    assert page.eval_on_selector_all(".field .error:not([hidden])", "shown => shown.length") == 1
    assert message in page.inner_text("#take-error") and f"(see {name} on the left)" in page.inner_text("#take-error")


def test_an_error_naming_no_input_is_shown_above_the_form(page, playground):
    open_ready(page, playground.url)
    take = generate(page, prompt="", duration=1)
    assert wait_for_end(page, take) == "failed"
    assert page.inner_text("#take-error").endswith("InputError: Must provide either prompt or input_audio")
    assert page.eval_on_selector_all(".field .error:not([hidden])", "shown => shown.length") == 0


def test_a_file_that_is_not_audio_gets_the_apis_message_beside_input_audio(page, playground, tmp_path):
    open_ready(page, playground.url)
    (tmp_path / "notes.txt").write_text("not a melody")
    page.set_input_files("#input-input_audio", str(tmp_path / "notes.txt"))
    assert "does not look like audio" in page.inner_text("#error-input_audio")  # said at once, before any request
    take = generate(page, prompt="x", duration=1)
    assert wait_for_end(page, take) == "failed"
    assert page.inner_text("#error-input_audio").startswith("input_audio could not be decoded (")
    assert "expected an audio file ffmpeg can decode" in page.inner_text("#error-input_audio")


def test_same_again_gives_the_same_samples_and_vary_a_new_seed(page, playground, tmp_path):
    open_ready(page, playground.url)
    first = generate(page, prompt="a loop", duration=1)  # no seed: the server draws one and logs it
    assert wait_for_end(page, first) == "succeeded"
    seed, first_clip = page.inner_text("#seed"), clip(tmp_path / "1.wav", downloaded(page, playground.url)[1])
    again = click_for_take(page, "#same-again")
    assert wait_for_end(page, again) == "succeeded"
    assert page.inner_text("#seed") == seed and page.input_value("#input-seed") == seed
    assert np.array_equal(clip(tmp_path / "2.wav", downloaded(page, playground.url)[1]), first_clip)
    varied = click_for_take(page, "#vary")
    assert wait_for_end(page, varied) == "succeeded"
    assert page.inner_text("#seed") != seed
    assert not np.array_equal(clip(tmp_path / "3.wav", downloaded(page, playground.url)[1]), first_clip)
    history = page.eval_on_selector_all("#takes li", "items => items.map(i => [i.dataset.take, i.dataset.status])")
    assert history == [[varied, "succeeded"], [again, "succeeded"], [first, "succeeded"]]
    page.click(f'#takes li[data-take="{first}"] .reuse')  # the first take's inputs, back in the form
    assert page.input_value("#input-prompt") == "a loop" and page.input_value("#input-duration") == "1"


@pytest.mark.parametrize("language", ["python", "curl"])
def test_the_code_shown_for_a_take_returns_the_same_file(page, playground, tmp_path, language):
    open_ready(page, playground.url)
    take = generate(page, prompt='it\'s a "quoted" prompt', duration=1, temperature=0.7)
    assert wait_for_end(page, take) == "succeeded"
    code = str(page.text_content(f"#code-{language}"))
    command = [sys.executable, "-c", code] if language == "python" else ["bash", "-c", code]
    if language == "curl":
        assert shutil.which("curl"), "curl is needed to run the curl code"
    done = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    written = tmp_path / f"musicgen-seed{page.inner_text('#seed')}.wav"
    assert written.read_bytes() == downloaded(page, playground.url)[1]


# --- when the server is not there, or not well: a message on the page, never a blank ------------------


def test_a_server_that_is_not_up_is_said_so(page):
    url = f"http://127.0.0.1:{closed_port()}"
    with RunningPlayground(url) as playground:
        page.goto(playground.url)
        page.wait_for_function("document.getElementById('server-status').dataset.status === 'UNREACHABLE'")
        banner = page.inner_text("#server-status")
        assert banner.startswith(f"the Cog server at {url} could not be reached: nothing answers there")
        assert "make serve" in banner and page.is_disabled("#generate")
        assert page.inner_text("#server-url") == url


def test_a_server_whose_setup_failed_is_said_so_with_its_log(page, tiny_weights, schema_file, tmp_path):
    missing = tmp_path / "no-such-finetune.tar"
    broken = CogServer(tiny_weights, tmp_path / "server.log", env={"COG_WEIGHTS": str(missing)})
    try:
        with pytest.raises(RuntimeError, match="setup failed"):
            broken.wait_for("READY")
        with RunningPlayground(broken.url) as playground:
            page.goto(playground.url)
            page.wait_for_function("document.getElementById('server-status').dataset.status === 'SETUP_FAILED'")
            banner = page.inner_text("#server-status")
    finally:
        broken.stop()
    assert banner.startswith(f"The Cog server at {broken.url} failed its setup: the model did not load")
    assert str(missing) in banner  # the end of its setup log names the cause
    assert page.is_disabled("#generate")


def test_a_dropped_connection_to_the_playground_is_said_so(page, server):
    playground = RunningPlayground(server.url)
    open_ready(page, playground.url)
    generate(page, prompt="x", duration=5)
    playground.close()
    page.wait_for_selector("#connection", state="visible", timeout=10_000)
    assert page.inner_text("#connection").startswith(f"The playground at {playground.url} does not answer")
    assert page.inner_text("#connection").endswith("Retrying…")
    assert len(page.query_selector_all("#fields .field")) == 14  # the page stays as it was
