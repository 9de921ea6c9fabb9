"""Cog predictor replicating the hosted `fofr/musicgen-triohatala` API: schema and glue only.

Loading lives in musicgen_cog/model/loading.py, the request flow in musicgen_cog/api/pipeline.py;
concurrent predictions share one decoding loop (musicgen_cog/model/decoding_loop.py).
"""

import os
import tempfile
import threading
from functools import partial
from typing import Optional

from musicgen_cog import environment

environment.configure()  # before audiocraft/transformers import: offline, local weights only

from coglet import server as coglet_server  # noqa: E402

from musicgen_cog.api.concurrency import RequestThreads, concurrency_limit  # noqa: E402
from musicgen_cog.serving.drain import InFlight, drain_seconds  # noqa: E402
from musicgen_cog.serving.load_gauge import gauge_from_environment  # noqa: E402
from musicgen_cog.serving.shutdown import stop_when_asked  # noqa: E402

MAX_CONCURRENCY = concurrency_limit()
IN_FLIGHT = InFlight(on_change=gauge_from_environment(slots=MAX_CONCURRENCY))
# in coglet's worker, before the slow imports: drain or cut when asked, then stop (docs/signals.md)
if coglet_server.active:
    stop_when_asked(IN_FLIGHT, drain_seconds())

from cog import BasePredictor, Input, Path, concurrent  # noqa: E402

from musicgen_cog.api.inputs import PredictionInputs  # noqa: E402
from musicgen_cog.api.logs import configure_logging  # noqa: E402
from musicgen_cog.api.memory import fix_mmap_threshold, release_freed_memory  # noqa: E402
from musicgen_cog.api.pipeline import run_prediction  # noqa: E402
from musicgen_cog.audio.writing import OutputFolder  # noqa: E402
from musicgen_cog.model.loading import load_model  # noqa: E402
from musicgen_cog.model.proof import settle_decoding_path  # noqa: E402
from musicgen_cog.serving.signals import keep_stop_signals_from_child_processes  # noqa: E402
from musicgen_cog.weights.finetune_source import resolve_finetune  # noqa: E402


class Predictor(BasePredictor):
    def setup(self, weights: Optional[str] = None) -> None:
        """Load the fine-tune named by `weights` (COG_WEIGHTS: a path or URL), else the folder's own."""
        configure_logging()
        fix_mmap_threshold()  # a long-running server's heap stays flat (musicgen_cog/api/memory.py)
        root = environment.weights_dir()
        model = load_model(root, resolve_finetune(weights, root), slots=MAX_CONCURRENCY)
        # warm-up, then the decoding path proven on this device against audiocraft's arithmetic, a
        # path that fails stepping down to the next (musicgen_cog/model/proof.py)
        self.proof = settle_decoding_path(model)
        self.model = model  # health asks it from now on: a path that failed during setup is not a fault
        output_dir = os.environ.get("MUSICGEN_OUTPUT_DIR") or Path(tempfile.gettempdir()) / "musicgen"
        self.outputs = OutputFolder(output_dir, keep=2 * MAX_CONCURRENCY)
        self.threads = RequestThreads(MAX_CONCURRENCY, initializer=keep_stop_signals_from_child_processes)

    def healthcheck(self) -> bool:
        """Cog's health: False (UNHEALTHY) once the device has failed or the decoding loop is stuck."""
        model = getattr(self, "model", None)  # before setup has loaded it: Cog reports its own state
        return model is None or model.healthy()

    @concurrent(max=8)  # a literal for `cog build`'s parser: DEFAULT_CONCURRENCY (tests/test_predict.py checks)
    async def predict(
        self,
        prompt: Optional[str] = Input(description="A description of the music you want to generate.", default=None),
        input_audio: Optional[Path] = Input(
            description="An audio file that will influence the generated music. If `continuation` is `True`, the "
            "generated music will be a continuation of the audio file. Otherwise, the generated music "
            "will mimic the audio file's melody.",
            default=None,
        ),
        duration: int = Input(description="Duration of the generated audio in seconds.", default=8),
        continuation: bool = Input(
            description="If `True`, generated music will continue `melody`. Otherwise, generated music will mimic "
            "`audio_input`'s melody.",
            default=False,
        ),
        continuation_start: int = Input(
            description="Start time of the audio file to use for continuation.", default=0, ge=0
        ),
        continuation_end: Optional[int] = Input(
            description="End time of the audio file to use for continuation. If -1 or None, will default to the end "
            "of the audio clip.",
            default=None,
            ge=-1,
        ),
        multi_band_diffusion: bool = Input(
            description="If `True`, the EnCodec tokens will be decoded with MultiBand Diffusion.", default=False
        ),
        normalization_strategy: str = Input(
            description="Strategy for normalizing audio.",
            default="loudness",
            choices=["loudness", "clip", "peak", "rms"],
        ),
        top_k: int = Input(description="Reduces sampling to the k most likely tokens.", default=250),
        top_p: float = Input(
            description="Reduces sampling to tokens with cumulative probability of p. When set to `0` (default), "
            "top_k sampling is used.",
            default=0.0,
        ),
        temperature: float = Input(
            description="Controls the 'conservativeness' of the sampling process. Higher temperature means more "
            "diversity.",
            default=1.0,
        ),
        classifier_free_guidance: int = Input(
            description="Increases the influence of inputs on the output. Higher values produce lower-varience "
            "outputs that adhere more closely to inputs.",
            default=3,
        ),
        output_format: str = Input(
            description="Output format for generated audio.", default="wav", choices=["wav", "mp3"]
        ),
        seed: Optional[int] = Input(
            description="Seed for random number generator. If None or -1, a random seed will be used.", default=None
        ),
    ) -> Path:
        inputs = PredictionInputs(
            prompt=prompt,
            input_audio=input_audio,
            duration=duration,
            continuation=continuation,
            continuation_start=continuation_start,
            continuation_end=continuation_end,
            multi_band_diffusion=multi_band_diffusion,
            normalization_strategy=normalization_strategy,
            top_k=top_k,
            top_p=top_p,
            temperature=temperature,
            classifier_free_guidance=classifier_free_guidance,
            output_format=output_format,
            seed=seed,
        )
        with IN_FLIGHT.admit() as admission:  # refused with ShuttingDown once a drain has begun
            work = self.threads.run(partial(self._run, inputs), admission.cancelled)
            return Path(await admission.outlast(work))

    def _run(self, inputs: PredictionInputs, cancelled: threading.Event) -> Path:
        try:
            return run_prediction(self.model, inputs, self.outputs, cancelled)
        finally:
            release_freed_memory()
