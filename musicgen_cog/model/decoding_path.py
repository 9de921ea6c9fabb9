"""The ways the server can decode, fastest first: the ladder that setup() descends until one is proven.

Each rung needs less of the machine than the one above it: CUDA graphs, then our Triton
attention, then our batched step at all; the last is audiocraft's own loop, the reference the
others are proven against (`proof.py`). MUSICGEN_DECODER, MUSICGEN_ATTENTION and MUSICGEN_COMPILE
say on which rung the descent starts; MUSICGEN_PROOF=off serves that rung unproven.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from ..environment import setting

DECODER_ENV = "MUSICGEN_DECODER"
# auto: batched on a GPU, per slot on a CPU (audiocraft's exact numbers, and a CPU's products are
# cheapest for the rows in use only); audiocraft: its own loop, one request at a time
DECODER_CHOICES = ("auto", "batched", "per-slot", "audiocraft")
ATTENTION_ENV = "MUSICGEN_ATTENTION"
# rowwise: a row's result depends on the row alone (attention.py); sdpa: torch's, under a mask
ATTENTION_CHOICES = ("rowwise", "sdpa")
COMPILE_ENV = "MUSICGEN_COMPILE"
# torch.compile modes for the batched step; those that capture CUDA graphs of their own are left
# out (the step is captured here, per shape). Off by default: see compile_mode().
COMPILE_MODES = ("default", "max-autotune-no-cudagraphs")
PROOF_ENV = "MUSICGEN_PROOF"
PROOF_CHOICES = ("on", "off")


@dataclass(frozen=True)
class DecodingPath:
    """One rung: which steps decode (`steps.py`), and for the batched step its attention, whether
    it is replayed from CUDA graphs, and the torch.compile mode it runs under (None: eager)."""

    decoder: str  # "batched", "per-slot" or "audiocraft"
    attention: str = "rowwise"
    graphs: bool = False
    compiled: str | None = None

    @property
    def batched(self) -> bool:
        return self.decoder == "batched"

    @property
    def batch_invariant(self) -> bool:
        """Whether a request's numbers are promised to be the same in any company and slot."""
        return self.decoder == "per-slot" or (self.batched and self.attention == "rowwise")

    @property
    def name(self) -> str:
        """A short name, for metrics and logs: "batched-rowwise-graphs", "per-slot", ..."""
        if not self.batched:
            return self.decoder
        parts = [self.decoder, self.attention]
        if self.compiled:
            parts.append("compiled")
        if self.graphs:
            parts.append("graphs")
        return "-".join(parts)

    def __str__(self) -> str:
        if not self.batched:
            return {"per-slot": "per slot", "audiocraft": "audiocraft's own loop"}[self.decoder]
        attention = {"rowwise": "row-wise attention", "sdpa": "SDPA"}[self.attention]
        compiled = f", compiled ({self.compiled})" if self.compiled else ""
        return f"batched, {attention}{compiled}" + (", in CUDA graphs" if self.graphs else "")


PER_SLOT = DecodingPath("per-slot")
AUDIOCRAFT = DecodingPath("audiocraft")
# The ladder, top to bottom. Graph rungs are skipped where there is no CUDA device.
LADDER = (
    DecodingPath("batched", "rowwise", graphs=True),
    DecodingPath("batched", "rowwise"),
    DecodingPath("batched", "sdpa", graphs=True),
    DecodingPath("batched", "sdpa"),
    PER_SLOT,
    AUDIOCRAFT,
)
BATCHED = LADDER[1]  # the batched step as a CPU runs it


def descent(device: str) -> list[DecodingPath]:
    """The rungs to try on `device`, in order: from the one the settings start at, down to
    audiocraft's loop. A compile mode puts the compiled form of a batched starting rung first."""
    decoder, start = decoder_choice(), batched_start(device)  # every setting is checked on every machine
    usable = [path for path in LADDER if device == "cuda" or not path.graphs]
    if decoder == "audiocraft":
        start = AUDIOCRAFT
    elif decoder == "per-slot" or (decoder == "auto" and device != "cuda"):
        start = PER_SLOT
    elif start.compiled:
        return [start, *usable[usable.index(replace(start, compiled=None)) :]]
    return usable[usable.index(start) :]


def batched_start(device: str) -> DecodingPath:
    """The batched rung MUSICGEN_ATTENTION and MUSICGEN_COMPILE choose: in CUDA graphs on a GPU."""
    return DecodingPath("batched", attention_choice(), graphs=device == "cuda", compiled=compile_mode())


def decoder_choice() -> str:
    """MUSICGEN_DECODER: one of DECODER_CHOICES (default "auto")."""
    return setting(DECODER_ENV, DECODER_CHOICES)


def attention_choice() -> str:
    """MUSICGEN_ATTENTION: "rowwise" (default: a row's result depends on the row alone) or "sdpa"."""
    return setting(ATTENTION_ENV, ATTENTION_CHOICES)


def compile_mode() -> str | None:
    """MUSICGEN_COMPILE: a torch.compile mode for the GPU's step, or off (default, or "off").

    Off by default because the choice is not measured yet: the project's H100 profile put a
    compiled step at 3.11 ms against 4.36 eager in a graph, but 75 s to compile one static shape;
    compiled here with dynamic shapes, once for all, at warm-up, with Inductor's cache beside the
    weights (`environment.configure`) so that a second boot reuses it."""
    mode = setting(COMPILE_ENV, ("off", *COMPILE_MODES))
    return None if mode == "off" else mode


def proof_wanted() -> bool:
    """MUSICGEN_PROOF: "on" (default: setup proves the path before serving it) or "off"."""
    return setting(PROOF_ENV, PROOF_CHOICES) == "on"
