"""The GPU's all-slots step, run on a CPU: it never reads the device from the host, and capture
leaves the state of the requests in flight as it found it.

Graphs are 'captured' as ReplayedStep (tests/model/conftest.py); models are pinned to the CPU.
"""

from __future__ import annotations

import ast
import contextlib
import inspect
import textwrap
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from bench.memory_table import POSITIONS
from musicgen_cog.model import decoding_path, fast_decode, faults, sampling, steps
from musicgen_cog.model.decoding_path import BATCHED, batched_start
from musicgen_cog.model.fast_decode import KV_BUCKET
from musicgen_cog.model.loading import load_model, start_decoding_loop
from musicgen_cog.model.steps import BatchedSteps, SlotState
from musicgen_cog.model.warm_up import warm_up
from musicgen_cog.model.window import Window
from tests.helpers import decoding_steps
from tests.model.conftest import GRAPHS, RecordingStreams, ReplayedStep, record_submissions
from tests.model.test_decoding_loop import after_idle, request, together, tokens, wait_until


class HostTraffic(TorchDispatchMode):
    """Records the operators that move a value between Python and a tensor: `.item()`, `bool()`,
    `int()` of a tensor, `torch.equal` (reads), and `tensor[i] = number` (`lift_fresh`: a copy from
    host memory). On a GPU each one waits for the device to finish what it was given."""

    WATCHED = ("aten._local_scalar_dense", "aten.equal", "aten.is_nonzero", "aten.lift_fresh")

    def __init__(self):
        super().__init__()
        self.seen: list[str] = []
        self.paused = False

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if not self.paused and str(func).startswith(self.WATCHED):
            self.seen.append(str(func))
        return func(*args, **(kwargs or {}))


def test_no_step_or_admission_moves_a_number_between_host_and_device(graphed, monkeypatch):
    """What `torch.cuda.set_sync_debug_mode("error")` checks on a GPU (tests/test_gpu.py), seen on a
    CPU at the operator level, for admissions (but audiocraft's own forward over the prefix),
    replayed and eager steps, and every sampling rule."""
    warm_up(graphed)
    batched, traffic, windows_seen = graphed.loop.steps, HostTraffic(), []
    step, admit, prefill = batched.step, batched.admit, batched.decoder.prefill

    def watched_step(windows):
        windows_seen.append(len(windows))
        with traffic:  # dispatch modes are per thread: entered on the loop's own
            return step(windows)

    def watched_admit(window):
        with traffic:
            return admit(window)

    def audiocrafts_forward(*args):
        traffic.paused = True
        try:
            return prefill(*args)
        finally:
            traffic.paused = False

    monkeypatch.setattr(batched, "step", watched_step)
    monkeypatch.setattr(batched, "admit", watched_admit)
    monkeypatch.setattr(batched.decoder, "prefill", audiocrafts_forward)
    together(graphed, [(3, request(2, top_p=0.8)), (4, request(2, temperature=0.0))])
    batched.graphs_enabled = False
    tokens(graphed, 5, request(1, top_k=0))
    assert sum(windows_seen) > 150 and 2 in windows_seen and traffic.seen == []


def test_logits_that_are_not_finite_fail_the_request_with_the_reason_and_the_next_one_succeeds(graphed, monkeypatch):
    """On a device sampling cannot raise (it would need a host read): the step marks the slot, and
    the request raises when it reads its tokens."""
    decoder = graphed.loop.decoder
    forward = decoder._forward
    monkeypatch.setattr(decoder, "_forward", lambda *args: forward(*args) * float("nan"))
    failed = together(graphed, [(1, request(1, top_p=0.9)), (2, request(1))])
    assert all(isinstance(f, RuntimeError) and "NaN or infinite logits" in str(f) for f in failed)
    monkeypatch.setattr(decoder, "_forward", forward)
    assert tokens(graphed, 3, request(1)).shape[-1] == 50


def test_logits_not_finite_in_one_slot_fail_its_request_alone_and_the_other_in_the_same_steps_succeeds(
    graphed, monkeypatch
):
    """Each slot is judged by its own logits: the two requests are admitted in the same round (so
    they share every step), and only the one whose rows turn NaN fails."""
    loop, decoder = graphed.loop, graphed.loop.decoder
    admit, forward = loop._admit, decoder._forward

    def both_at_once():
        if len(loop._waiting) + len(loop._active) < 2:
            time.sleep(0.01)  # the loop comes round again: the other request is on its way
            return
        admit()

    def poisoned(*args):
        logits = forward(*args).clone()
        for window in loop._active:
            if window.sampling.top_p == 0.9:
                logits[2 * window.slot : 2 * window.slot + 2] = float("nan")
        return logits

    monkeypatch.setattr(loop, "_admit", both_at_once)
    monkeypatch.setattr(decoder, "_forward", poisoned)
    failed, decoded = together(graphed, [(1, request(1, top_p=0.9)), (2, request(1))])
    assert isinstance(failed, RuntimeError) and "NaN or infinite logits" in str(failed)
    assert isinstance(decoded, torch.Tensor) and decoded.shape[-1] == 50


def test_the_step_code_calls_nothing_that_copies_to_the_host():
    """`.cpu()`, `.tolist()`, `.numpy()` of a CPU tensor dispatch no operator: checked in the source.
    The one wait the host makes is on a CUDA event LOOKAHEAD steps old (`_keep_up`)."""
    forbidden = {"item", "cpu", "tolist", "numpy", "synchronize"}
    code: list[Any] = [
        steps.BatchedSteps,
        steps.SlotState,
        sampling.RowSampling,
        sampling.sample_rows,
        sampling.guided_rows,
    ]
    for source in [*code, fast_decode.SlotDecoder._forward]:
        tree = ast.parse(textwrap.dedent(inspect.getsource(source)))
        allowed = {
            id(node)
            for function in ast.walk(tree)
            if isinstance(function, ast.FunctionDef) and function.name == "_keep_up"
            for node in ast.walk(function)
        }
        reads = [
            f"{source.__qualname__}: .{node.attr} (line {node.lineno})"
            for node in ast.walk(tree)
            if isinstance(node, ast.Attribute) and node.attr in forbidden and id(node) not in allowed
        ]
        assert reads == []


@pytest.mark.parametrize("attention", ["rowwise", "sdpa"])
def test_a_span_met_without_a_graph_runs_eagerly_and_is_captured_once_nothing_decodes(
    tiny_weights, graphed, replayed, attention
):
    """No capture while a window decodes (a capture synchronises the device): a request meeting
    a span with no graph yet runs it eagerly with the same tokens; the graph is captured when the
    loop is idle (its warm-up runs' advance of the state put back), and the next request replays
    it to the same tokens. Row-wise attention: one graph for every step; SDPA: one per bucket."""
    eager = load_model(tiny_weights, device="cpu", slots=2)
    start_decoding_loop(eager, 2, BATCHED)
    assert eager.loop is not None and graphed.loop is not None
    eager.loop.decoder.attention = graphed.loop.decoder.attention = attention
    spec = request(12, top_p=0.9)  # 600 steps: three buckets
    expected = tokens(eager, 9, spec)
    assert torch.equal(tokens(graphed, 9, spec), expected)
    after_idle(graphed)
    cache = graphed.loop.decoder.cache_length()
    spans = [cache] if attention == "rowwise" else [KV_BUCKET, 2 * KV_BUCKET, 3 * KV_BUCKET]
    assert sorted(graphed.loop.steps.graphs) == spans and len(replayed) == len(spans)
    assert all(active == 0 for *_, active in replayed)
    assert torch.equal(tokens(graphed, 9, spec), expected)
    assert len(replayed) == len(spans)


def test_the_graph_stand_in_fails_a_replay_after_what_a_real_graph_froze_has_changed(graphed):
    """The test of the test: a real graph keeps reading the addresses and numbers it was captured
    with, so ReplayedStep refuses a replay once the cache, the state or a number has moved."""
    warm_up(graphed)
    batched = graphed.loop.steps
    decoder = batched.decoder
    tokens(graphed, 1, request(1))  # replays pass
    keys, values = decoder.caches[0]
    decoder.caches[0] = (keys.clone(), values)  # the same numbers elsewhere in memory
    failed = together(graphed, [(2, request(1))])[0]
    assert isinstance(failed, AssertionError) and "cache changed since it was captured" in str(failed)
    decoder.caches[0] = (keys, values)
    graph = next(iter(batched.graphs.values()))
    decoder.attention = "sdpa"  # a setting the captured step read
    with pytest.raises(AssertionError, match=r"decoder\.attention changed since it was captured"):
        graph.replay()


def test_a_window_longer_than_the_slot_state_fails_alone_with_the_reason(graphed):
    batched = graphed.loop.steps
    batched.sequence_length = 30  # as if a window outgrew what was allocated
    failed = together(graphed, [(1, request(1))])[0]
    assert isinstance(failed, ValueError) and "longer than the 30 allocated" in str(failed)


def test_every_step_runs_every_slots_rows_and_free_slots_stay_at_position_zero(tiny_weights, monkeypatch):
    """Fixed shapes: a step's matrix products, norms and sampling never change with the company;
    a free slot's rows stay at position 0, so they read one position of the cache."""
    model = load_model(tiny_weights, device="cpu", slots=3)
    start_decoding_loop(model, 3, BATCHED)
    assert model.loop is not None and isinstance(model.loop.steps, BatchedSteps)
    batched, decoder, seen = model.loop.steps, model.loop.decoder, []
    forward = decoder._forward

    def recorded(sequence, caches, positions, span, busy):
        seen.append((sequence.shape[0], positions.tolist(), busy))
        return forward(sequence, caches, positions, span, busy)

    monkeypatch.setattr(decoder, "_forward", recorded)
    tokens(model, 1, request(1))
    assert len(seen) == decoding_steps(model.musicgen, 1) - 1  # every step but the first (the prefill's)
    # every row, busy or free; on a CPU only the busy slot's rows are multiplied (slot 0)
    assert all(rows == 6 and positions[2:] == [0, 0, 0, 0] and busy == (0,) for rows, positions, busy in seen)
    assert [positions[0] for _, positions, _ in seen] == list(range(seen[0][1][0], seen[0][1][0] + len(seen)))
    assert batched.state is not None and batched.state.positions.tolist() == [0] * 6  # it left: rows back at 0


def test_a_slot_its_request_left_stays_at_position_zero_while_another_decodes(tiny_weights, monkeypatch):
    """`vacate` stops a freed slot's rows: while the request beside it decodes on, they read position
    0 every step, instead of walking on through the cache (and past its end) with nobody in it."""
    model = load_model(tiny_weights, device="cpu", slots=2)
    start_decoding_loop(model, 2, BATCHED)
    loop = model.loop
    assert loop is not None
    step, forward = loop.steps.step, loop.decoder._forward
    seen: list[tuple[list[int], Any]] = []
    queued, changed = record_submissions(loop, monkeypatch)

    def held_step(windows):
        if len(seen) == 20:  # the long request's 21st step waits for the short one: it joins, then leaves
            with changed:
                assert changed.wait_for(lambda: len(queued) == 2, timeout=60), "the short request never came"
        return step(windows)

    def recorded(sequence, caches, positions, span, busy):
        seen.append((positions.tolist(), busy))
        return forward(sequence, caches, positions, span, busy)

    monkeypatch.setattr(loop.steps, "step", held_step)
    monkeypatch.setattr(loop.decoder, "_forward", recorded)
    with ThreadPoolExecutor(1) as pool:
        long = pool.submit(tokens, model, 1, request(4))
        wait_until(lambda: len(seen) == 20)
        assert tokens(model, 2, request(1)).shape[-1] == 50
        assert long.result().shape[-1] == 200
    shared = [i for i, (_, busy) in enumerate(seen) if busy == (0, 1)]
    after = seen[shared[-1] + 1 :]  # the steps the long request took alone again, slot 1 freed
    assert len(shared) >= 50 and len(after) > 100
    assert all(busy == (0,) and positions[2:] == [0, 0] for positions, busy in after)


@pytest.mark.parametrize("slot", [0, 1, 2])
def test_the_slot_state_is_made_on_the_device_given_and_narrowed_to_views_of_one_slot(slot):
    """Every tensor of an empty state (3 slots, 4 codebooks, sequences of 10) is zeros on the device
    given, whatever torch's default device; `narrow(slot)` gives views of that slot's two rows and
    its values, its sampling rule included: writing through them writes that slot and nothing else."""
    with torch.device("meta"):  # as a GPU's state is made while torch's default device is the CPU
        state = SlotState.empty(3, 4, 10, torch.device("cpu"))
    tensors = state.tensors()
    assert [(tuple(t.shape), t.dtype, t.device.type) for t in tensors] == [
        ((6, 4, 1), torch.long, "cpu"),  # tokens
        ((6,), torch.long, "cpu"),  # positions
        ((3,), torch.long, "cpu"),  # offsets
        ((3, 4, 10), torch.long, "cpu"),  # sequences
        ((3, 4, 10), torch.bool, "cpu"),  # masks
        ((3, 10, 4), torch.float32, "cpu"),  # uniforms
        ((3,), torch.bool, "cpu"),  # faults
        ((6,), torch.long, "cpu"),  # advancing
        ((3,), torch.float32, "cpu"),  # temperature
        ((3,), torch.long, "cpu"),  # top_k
        ((3,), torch.float32, "cpu"),  # top_p
        ((3,), torch.float32, "cpu"),  # cfg_coef
    ]
    assert not any(t.any() for t in tensors)
    for view in state.narrow(slot).tensors():
        view.fill_(1)
    written = [t.reshape(t.shape[0], -1).bool().any(dim=1).tolist() for t in tensors]
    rows, slots = [row // 2 == slot for row in range(6)], [other == slot for other in range(3)]
    assert written == [rows if t.shape[0] == 6 else slots for t in tensors]


def test_the_batched_step_makes_everything_it_needs_on_the_models_device(tiny_weights):
    """On a GPU torch's default device stays the CPU while the model is on CUDA: a tensor made
    without the model's device would be on the wrong one. Here the loop's thread defaults to `meta`."""
    reference = load_model(tiny_weights, device="cpu", slots=2)
    start_decoding_loop(reference, 2, BATCHED)
    model = load_model(tiny_weights, device="cpu", slots=2)
    start_decoding_loop(model, 2, BATCHED)
    assert model.loop is not None
    model.loop.call(lambda: torch.set_default_device("meta")).result(timeout=60)  # the loop's thread only
    assert torch.equal(tokens(model, 3, request(1, top_p=0.9)), tokens(reference, 3, request(1, top_p=0.9)))


def test_requests_exactly_as_long_as_the_slot_state_and_the_cache_decode_their_own_tokens(tiny_weights, monkeypatch):
    """Sequences and cache allocated for exactly one window (the cache: one bucket, all of it what
    the window needs): its last token fills the last place of its sequence. Two such requests in
    turn, beside a free slot whose offset goes on advancing (held at the sequence's end), give the
    tokens they give with room to spare; the second asks for top_k the codebook's size, the most the
    inputs allow."""
    roomy = load_model(tiny_weights, device="cpu", slots=2)
    start_decoding_loop(roomy, 2, BATCHED)
    assert roomy.loop is not None
    lm, lengths, positions = roomy.musicgen.lm, [], []
    forward, admit = roomy.loop.decoder._forward, roomy.loop.steps.admit

    def recorded(sequence, caches, rows, span, busy):
        positions.append(int(rows[0]))
        return forward(sequence, caches, rows, span, busy)

    def measured(window):
        lengths.append(window.length)
        return admit(window)

    monkeypatch.setattr(roomy.loop.decoder, "_forward", recorded)
    monkeypatch.setattr(roomy.loop.steps, "admit", measured)
    tokens(roomy, 1, {**request(1), "prompt": "exactly"})
    # 1 s, and as many frames more as fill the bucket: a window needs a position past its last step's
    frames = int(roomy.musicgen.frame_rate) + KV_BUCKET - 2 - max(positions)
    seconds = (frames + 0.5) / roomy.musicgen.frame_rate
    specs = [(1, request(seconds)), (2, request(seconds, top_k=lm.card))]
    specs = [(seed, {**spec, "prompt": "exactly"}) for seed, spec in specs]
    positions.clear()
    expected = [tokens(roomy, *spec) for spec in specs]
    assert max(positions) == KV_BUCKET - 2
    monkeypatch.setattr(steps, "window_steps", lambda musicgen: lengths[-1])
    monkeypatch.setattr(steps, "cache_positions", lambda musicgen: KV_BUCKET)
    exact = load_model(tiny_weights, device="cpu", slots=2)
    start_decoding_loop(exact, 2, BATCHED)
    assert exact.loop is not None
    assert all(torch.equal(tokens(exact, *spec), reference) for spec, reference in zip(specs, expected, strict=True))
    assert isinstance(exact.loop.steps, BatchedSteps) and exact.loop.steps.sequence_length == lengths[-1]
    assert exact.loop.decoder.cache_length() == KV_BUCKET


def test_a_top_k_past_the_codebook_fails_alone_with_the_reason(graphed):
    card = graphed.musicgen.lm.card
    failed, succeeded = together(graphed, [(1, request(1, top_k=card + 1)), (2, request(1))])
    assert isinstance(failed, ValueError)
    assert str(failed) == f"top_k {card + 1} is out of range: 0 to the codebook size {card}"
    assert succeeded.shape[-1] == 50


def test_the_host_runs_at_most_lookahead_steps_ahead_of_the_device(tiny_weights):
    """Every step throttles the host to LOOKAHEAD steps ahead of the device (a CUDA event's wait)."""
    model = load_model(tiny_weights, device="cpu", slots=2)
    model.streams = streams = RecordingStreams()
    start_decoding_loop(model, 2, BATCHED)
    tokens(model, 1, request(1))
    throttles = [detail for _, what, detail in streams.calls if what == "throttle"]
    assert throttles == [steps.LOOKAHEAD] * (decoding_steps(model.musicgen, 1) - 1)


class CaptureStream(RecordingStreams):
    def capture(self):
        return "the loop's stream"


def test_capture_all_captures_every_span_once_the_cache_exists_in_one_pool_on_the_loops_stream(
    tiny_weights, replayed, monkeypatch
):
    """What warm-up runs when no window decodes: nothing before a request has allocated the cache;
    then a graph for every span a step can take (SDPA: every bucket of the cache), all in one memory
    pool (graphs never run at once), captured on the loop's stream; with graphs off, none again."""
    model = load_model(tiny_weights, device="cpu", slots=2)
    model.streams = CaptureStream()
    start_decoding_loop(model, 2, GRAPHS)
    loop = model.loop
    assert loop is not None and isinstance(loop.steps, BatchedSteps)
    monkeypatch.setattr(ReplayedStep, "loop", loop)
    batched, decoder = loop.steps, loop.decoder
    decoder.attention = "sdpa"
    assert batched.capture_all() == 0 and replayed == []  # called here: the loop's thread is idle
    tokens(model, 1, request(1))
    after_idle(model)
    cache = decoder.cache_length()
    spans = [min(cache, KV_BUCKET * n) for n in range(1, -(-cache // KV_BUCKET) + 1)]
    assert batched.capture_all() == len(spans) and sorted(batched.graphs) == spans and len(replayed) == len(spans)
    graphs = list(batched.graphs.values())
    assert graphs[0].pool is not None and all(graph.pool is graphs[0].pool for graph in graphs)
    assert all(isinstance(graph, ReplayedStep) and graph.stream == "the loop's stream" for graph in graphs)
    batched.graphs_enabled, batched.graphs = False, {}  # as after a capture that failed
    assert batched.capture_all() == 0 and len(replayed) == len(spans)


def test_the_compile_setting_compiles_the_step_once_for_every_span_in_the_mode_chosen(tiny_weights, monkeypatch):
    """MUSICGEN_COMPILE=max-autotune-no-cudagraphs: the decoding step goes to torch.compile in that
    mode with dynamic shapes (one compile serves every span), and every step runs what it gave
    (here: the step itself, eagerly, so that no compiler is needed): a greedy request gets the
    per-slot path's tokens."""
    exact = load_model(tiny_weights, device="cpu", slots=2)
    expected = tokens(exact, 1, request(2, temperature=0.0))
    compiled, runs = [], []

    def stand_in(step, **options):
        compiled.append((step, options))

        def run(*args):
            runs.append(args)
            return step(*args)

        return run

    monkeypatch.setattr(torch, "compile", stand_in)
    monkeypatch.setenv(decoding_path.COMPILE_ENV, "max-autotune-no-cudagraphs")
    model = load_model(tiny_weights, device="cpu", slots=2)
    start_decoding_loop(model, 2, batched_start("cpu"))
    assert model.loop is not None and isinstance(model.loop.steps, BatchedSteps)
    assert torch.equal(tokens(model, 1, request(2, temperature=0.0)), expected)
    assert compiled == [(model.loop.steps._decode_step, {"dynamic": True, "mode": "max-autotune-no-cudagraphs"})]
    assert len(runs) == decoding_steps(model.musicgen, 2) - 1


def test_per_slot_steps_draw_from_the_requests_own_generator(tiny_weights):
    """Whatever torch's global generator has drawn meanwhile, a seed repeats its tokens."""
    model = load_model(tiny_weights, device="cpu", slots=2)
    torch.manual_seed(1)
    first = tokens(model, 5, request(1, top_p=0.9))
    torch.manual_seed(2)
    assert torch.equal(tokens(model, 5, request(1, top_p=0.9)), first)


SHORT_WHILE_SAMPLING = "the CPU ran out of memory while sampling; try a shorter duration, or fewer requests at once"


@pytest.mark.parametrize(
    "error, kind, expected",
    [
        (RuntimeError("a draw that failed"), RuntimeError, "a draw that failed"),
        (torch.OutOfMemoryError(), faults.OutOfMemory, SHORT_WHILE_SAMPLING),
    ],
    ids=["its-own", "out-of-memory"],
)
def test_a_per_slot_window_whose_sampling_fails_mid_way_fails_alone_with_its_error(
    tiny_weights, monkeypatch, logs, error, kind, expected
):
    """Sampling runs slot by slot: a window whose draw fails leaves with that error (out of memory
    said as such), logged with its traceback; the other decodes on."""
    model = load_model(tiny_weights, device="cpu", slots=2)
    alone = tokens(model, 2, request(1))
    sample, drawn = steps.sample, []

    def failing(logits, sampling, generator):
        if sampling.top_p == 0.5:
            drawn.append(1)
            if len(drawn) == 10:
                raise error
        return sample(logits, sampling, generator)

    monkeypatch.setattr(steps, "sample", failing)
    failed, succeeded = together(model, [(1, request(1, top_p=0.5)), (2, request(1))])
    assert isinstance(failed, kind) and str(failed) == expected
    assert torch.equal(succeeded, alone)
    errors = [r for r in logs.records if r.levelname == "ERROR"]
    assert [r.getMessage() for r in errors] == ["a request failed while sampling"]
    assert errors[0].exc_info and errors[0].exc_info[1] is error


def test_a_per_slot_window_whose_sampling_meets_a_sticky_error_stops_the_loop_and_fails_health(
    tiny_weights, monkeypatch
):
    """Not the window's own failure: the device's (its text says nothing, and the device, stood in,
    no longer runs a kernel when asked), so every request fails and health with it."""
    model = load_model(tiny_weights, device="cpu", slots=2)
    sample = steps.sample

    def lost(logits, sampling, generator):
        if sampling.top_p == 0.5:
            raise torch.AcceleratorError("CUDA error: an error no list names (injected)")
        return sample(logits, sampling, generator)

    monkeypatch.setattr(steps, "sample", lost)
    monkeypatch.setattr(faults, "device_answers", lambda device: device != "cpu")
    with pytest.raises(faults.DeviceFailed, match="an error no list names"):
        tokens(model, 1, request(1, top_p=0.5))
    assert not model.health.ok and model.loop is not None
    loop = model.loop
    wait_until(lambda: not loop.alive)


def test_the_compile_setting_is_checked_on_every_machine(tiny_weights, monkeypatch):
    monkeypatch.setenv(decoding_path.COMPILE_ENV, "reduce-overhead")  # captures graphs of its own: not offered
    with pytest.raises(
        ValueError, match="MUSICGEN_COMPILE must be one of 'off', 'default', 'max-autotune-no-cudagraphs'"
    ):
        load_model(tiny_weights, device="cpu")


@pytest.mark.slow  # Inductor compiles C++ for a CPU: about a minute
def test_the_compiled_step_gives_the_eager_steps_tokens(tiny_weights, monkeypatch, tmp_path):
    """MUSICGEN_COMPILE=default: the step through torch.compile (dynamic shapes: one compile for one
    slot, one for every other count, each for every cache bucket), greedy tokens exactly the
    per-slot path's alone, and in company too (row counts change last bits only)."""
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))
    exact = load_model(tiny_weights, device="cpu", slots=2)
    specs = [(1, request(2, temperature=0.0)), (2, request(6, temperature=0.0))]  # 6 s: past one bucket
    expected = [tokens(exact, *spec) for spec in specs]
    monkeypatch.setenv(decoding_path.COMPILE_ENV, "default")
    compiled = load_model(tiny_weights, device="cpu", slots=2)
    start_decoding_loop(compiled, 2, batched_start("cpu"))
    assert compiled.loop is not None and isinstance(compiled.loop.steps, BatchedSteps)
    assert compiled.loop.steps._compiled is not None
    assert all(torch.equal(tokens(compiled, *spec), reference) for spec, reference in zip(specs, expected, strict=True))
    at_once = together(compiled, specs)
    assert all(torch.equal(mine, reference) for mine, reference in zip(at_once, expected, strict=True))
    assert compiled.loop.steps._compiled is not None  # nothing fell back to eager


def test_a_step_that_cannot_be_compiled_runs_eagerly_with_one_warning(tiny_weights, monkeypatch, logs):
    """No C compiler, a read-only cache folder, an Inductor bug: the server decodes on, eagerly."""
    from torch._dynamo.exc import TorchDynamoException

    exact = load_model(tiny_weights, device="cpu", slots=2)
    expected = tokens(exact, 1, request(2, temperature=0.0))
    monkeypatch.setenv(decoding_path.COMPILE_ENV, "default")
    model = load_model(tiny_weights, device="cpu", slots=2)
    start_decoding_loop(model, 2, batched_start("cpu"))
    assert model.loop is not None and isinstance(model.loop.steps, BatchedSteps)
    attempts = []

    def uncompilable(*args):
        attempts.append(args)
        raise TorchDynamoException("CppCompileError: no working C compiler")

    model.loop.steps._compiled = uncompilable
    assert torch.equal(tokens(model, 1, request(2, temperature=0.0)), expected)
    assert len(attempts) == 1 and model.loop.steps._compiled is None
    warnings = [r.getMessage() for r in logs.records if "torch.compile" in r.getMessage()]
    assert warnings == [
        "torch.compile of the decoding step failed (CppCompileError: no working C compiler); "
        "running it eagerly from now on"
    ]


@pytest.mark.parametrize("path", [decoding_path.PER_SLOT, BATCHED], ids=["per-slot", "batched"])
def test_the_guided_logits_read_by_the_proof_are_those_each_slots_last_token_was_drawn_from(
    tiny_weights, monkeypatch, path
):
    """At temperature 0 every token is the argmax of the guided logits its slot exposes after the
    step (two requests in slots 0 and 1); before any step there are none."""
    model = load_model(tiny_weights, device="cpu", slots=2)
    start_decoding_loop(model, 2, path)
    assert model.loop is not None
    served = model.loop.steps
    if isinstance(served, BatchedSteps):
        with pytest.raises(AssertionError, match=r"^no step has run$"):
            served.guided_logits(0)
    drawn: list[tuple[Any, int, torch.Tensor]] = []
    step = served.step

    def recording(windows):
        failed = step(windows)  # the token is written at the window's offset, which then advances
        drawn.extend((w, w.offset - 1, served.guided_logits(w.slot).argmax(-1)) for w in windows)
        return failed

    monkeypatch.setattr(served, "step", recording)
    together(model, [(1, request(1, temperature=0.0)), (2, request(1, temperature=0.0))])
    assert {w.slot for w, _, _ in drawn} == {0, 1}
    for window, offset, argmax in drawn:
        valid = window.mask[:, offset]  # codebooks the delay pattern fills at this offset
        if isinstance(served, BatchedSteps):  # written in the slot's state on the device
            assert served.state is not None
            written = served.state.sequences[window.slot, :, offset]
        else:
            written = window.sequence[0, :, offset]
        assert torch.equal(written[valid], argmax[valid])


def test_a_graph_warms_up_twice_then_captures_a_third_run_on_the_stream_given_into_the_pool_given(monkeypatch):
    """What the CUDA runtime is asked, with torch.cuda's stream, graph and capture stood in (no GPU
    here): the warm-up runs and the capture on the loop's stream, into the pool every capture
    shares, in thread-local mode (requests' threads run their own CUDA work meanwhile); a replay
    gives what the captured run returned."""
    asked: list[Any] = []

    class Graph:
        def replay(self):
            asked.append("replay")

    @contextlib.contextmanager
    def on_stream(stream):
        asked.append(("on stream", stream))
        yield
        asked.append("off stream")

    @contextlib.contextmanager
    def capturing(graph, pool, stream, capture_error_mode):
        asked.append(("capture", type(graph), pool, stream, capture_error_mode))
        yield
        asked.append("captured")

    monkeypatch.setattr(torch.cuda, "stream", on_stream)
    monkeypatch.setattr(torch.cuda, "CUDAGraph", Graph)
    monkeypatch.setattr(torch.cuda, "graph", capturing)
    runs = iter(range(3))

    def step() -> torch.Tensor:
        run = next(runs)
        asked.append(f"run {run}")
        return torch.tensor([run])

    pool, stream = object(), object()
    graph = steps.CudaGraphStep(step, "cpu", pool=pool, stream=stream)
    capture = ("capture", Graph, pool, stream, "thread_local")
    assert asked == [("on stream", stream), "run 0", "run 1", capture, "run 2", "captured", "off stream"]
    assert graph.replay().item() == 2 and asked[-1] == "replay"


def test_the_slot_state_holds_the_longest_windows_pattern_and_the_cache_its_prefix_too(tiny_weights):
    """A window of the model's longest duration, laid out in audiocraft's delay pattern, fits the
    slot state's sequences; the cache holds the longest prefix (512 text tokens and a window's chroma:
    the tiny model is a melody model, of the real one's duration and codebooks) and that window."""
    model = load_model(tiny_weights, device="cpu", slots=1)
    musicgen, lm = model.musicgen, model.musicgen.lm
    frames = int(musicgen.max_duration * musicgen.frame_rate)
    empty = torch.zeros(1, lm.num_codebooks, 0, dtype=torch.long)
    longest = Window.laid_out(lm, empty, frames, {}, sampling.Sampling(250, 0.0, 1.0, 3.0), generator=None)
    assert steps.window_steps(musicgen) == longest.sequence.shape[-1] + 1  # and a step past its last
    assert steps.cache_positions(musicgen) == POSITIONS  # the figure docs/memory-and-faults.md's table uses
