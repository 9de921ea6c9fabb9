"""Building MusicGen from a checkpoint and the base assets of a weights folder.

Two checkpoint formats are read, both only through `weights.checkpoints.load_checkpoint`:
- a fine-tune from the hosted trainer: one file `{'xp.cfg', 'model'}` holding the LM only;
- an audiocraft model folder: `state_dict.bin` (`{'xp.cfg', 'best_state'}`) and
  `compression_state_dict.bin`, as `facebook/musicgen-melody` ships.
The LM is always built from the checkpoint's own `xp.cfg`, never from a hard-coded base.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from audiocraft.models import MusicGen, builders
from audiocraft.models.encodec import CompressionModel, HFEncodecCompressionModel
from audiocraft.models.multibanddiffusion import DiffusionProcess, MultiBandDiffusion
from audiocraft.modules.diffusion_schedule import NoiseSchedule
from omegaconf import DictConfig, OmegaConf
from transformers import EncodecModel
from transformers.initialization import no_init_weights

from ..weights import assets
from ..weights.checkpoints import CheckpointError, load_checkpoint
from .decoding_loop import DecodingLoop
from .decoding_path import AUDIOCRAFT, DecodingPath, descent
from .device import choose_device
from .fast_decode import kv_bytes_per_slot, unsupported_reason
from .faults import DeviceHealth, device_answers, release_cached_memory
from .memory import SlotPlan, free_memory, plan_slots, prefill_bytes, working_memory
from .steps import cache_positions, steps_for
from .streams import NoStreams, streams_for

log = logging.getLogger(__name__)

# Keys the trainer leaves in xp.cfg that only make sense while training (the hosted loader drops them too).
TRAINING_ONLY_KEYS = (
    "conditioners.self_wav.chroma_stem.cache_path",
    "conditioners.self_wav.chroma_chord.cache_path",
    "conditioners.args.merge_text_conditions_p",
    "conditioners.args.drop_desc_p",
)
PRETRAINED_PREFIX = "//pretrained/"
# Seconds a decoding loop may go without finishing a step or an admission while windows wait on
# it, before health says it is stuck: a step takes milliseconds on a GPU; on a CPU the longest
# single piece of work, the prefill of a long prefix on a 1.5 B model, takes a minute or two.
STALLED_AFTER = {"cuda": 60.0, "cpu": 600.0}


@dataclass
class LoadedModel:
    """The MusicGen model, the decoding loop its requests share, and the MBD decoder that shares
    its codec, loaded on first use. Safe to use from several request threads at once."""

    musicgen: MusicGen
    source: Path
    weights_root: Path
    loop: DecodingLoop | None = None  # None: audiocraft's own decoding loop, one request at a time
    path: DecodingPath = AUDIOCRAFT  # how the loop decodes (decoding_path.py)
    plan: SlotPlan | None = None  # how many slots the loop got, and why
    streams: NoStreams = field(default_factory=NoStreams)  # each thread's CUDA stream (streams.py)
    health: DeviceHealth = field(default_factory=DeviceHealth)
    exclusive: threading.Lock = field(default_factory=threading.Lock)  # held by audiocraft's loop
    # the codec's decode runs one request at a time: the working memory kept for it is one decode's
    codec_lock: threading.Lock = field(default_factory=threading.Lock)
    _mbd: MultiBandDiffusion | None = None
    _mbd_loading: threading.Lock = field(default_factory=threading.Lock)

    def autocast(self) -> contextlib.AbstractContextManager:
        """A fresh autocast context as audiocraft uses (fp16 on a GPU, off on a CPU): the model's own
        `autocast` object keeps its state on itself, so threads cannot share it."""
        shared = self.musicgen.autocast.autocast
        if shared is None:
            return contextlib.nullcontext()
        return torch.autocast(shared.device, dtype=shared.fast_dtype)

    @property
    def codebook_size(self) -> int:
        return int(self.musicgen.lm.card)

    @property
    def supports_melody(self) -> bool:
        """Whether the checkpoint has a chroma conditioner (a melody model)."""
        return "self_wav" in self.musicgen.lm.condition_provider.conditioners

    @property
    def supports_mbd(self) -> bool:
        """MBD decodes the 4 codebooks of mono EnCodec only."""
        return int(self.musicgen.lm.num_codebooks) == 4

    @property
    def device(self) -> str:
        """ "cuda" or "cpu"."""
        return torch.device(self.musicgen.device).type

    def cache_dtype(self) -> torch.dtype:
        """The KV cache's dtype: the autocast's (fp16 on a GPU), else the LM's own."""
        shared = self.musicgen.autocast.autocast
        return shared.fast_dtype if shared is not None else next(self.musicgen.lm.parameters()).dtype

    def healthy(self) -> bool:
        """The device works, answers, and the decoding loop runs, is not stuck (STALLED_AFTER) and
        has had no capture fail (the allocator may be left mid-capture: setup would have stepped
        down a path instead): what the predictor's `healthcheck()` tells Cog."""
        failed_capture = self.loop.steps.capture_failure if self.loop is not None else None
        if failed_capture is not None:
            self.health.suspect(f"{failed_capture} after setup; decoding on without graphs")
        if not self.health.ok or self.health.suspicion is not None:
            return False
        if self.loop is not None and (not self.loop.alive or self.loop.stalled_for() > STALLED_AFTER[self.device]):
            return False
        with self.streams.health():  # its own stream: never behind a request's work
            return device_answers(self.device)

    def mbd(self) -> MultiBandDiffusion:
        """The MBD decoder, loaded on first use so that a cold boot does not pay for it."""
        with self._mbd_loading:
            if self._mbd is None:
                log.info("loading MultiBand Diffusion decoder")
                self._mbd = load_mbd(self.weights_root, self.musicgen.compression_model, self.musicgen.device)
            return self._mbd


def resolve_lm_source(root: Path, finetune: Path | None) -> Path:
    """The checkpoint to serve: the given fine-tune, else one baked into the folder, else the base LM."""
    if finetune is not None:
        return Path(finetune)
    baked = root / assets.FINETUNE_FILENAME
    return baked if baked.is_file() else assets.locate(root, assets.BASE_LM)


def load_model(root: Path, finetune: Path | None = None, device: str | None = None, slots: int = 1) -> LoadedModel:
    """Build MusicGen from `finetune` (file or audiocraft folder) or the folder's own checkpoints,
    with a decoding loop for up to `slots` requests at once (fewer if fewer fit in memory), on
    `device` (default: MUSICGEN_DEVICE's choice)."""
    device = device or choose_device()
    torch.backends.cudnn.deterministic = True  # a seed repeats on a GPU too
    source = resolve_lm_source(root, finetune)
    if source.is_dir():
        package = load_checkpoint(source / "state_dict.bin")
        state_key, compression_source = "best_state", "folder"
    else:
        package = load_checkpoint(source)
        state_key, compression_source = "model", "config"
    missing = {"xp.cfg", state_key} - set(package)
    if missing:
        raise CheckpointError(f"{source} is not a MusicGen checkpoint: it lacks {', '.join(sorted(missing))}")
    cfg = _inference_config(package["xp.cfg"], device)
    _require_conditioner_assets(root, cfg)
    log.info("building the language model from %s", source)
    with no_init_weights():  # every weight is overwritten by the checkpoint just below: skip random init
        lm = builders.get_lm_model(cfg)
    try:
        lm.load_state_dict(package[state_key])
    except RuntimeError as exc:
        raise CheckpointError(f"{source}: weights do not match the model its xp.cfg describes ({exc})") from exc
    lm.eval()
    lm.cfg = cfg  # type: ignore[assignment]  # as audiocraft's own loaders attach it
    if compression_source == "folder":
        codec = _load_folder_compression(root, source / "compression_state_dict.bin", device)
    else:
        codec = _load_pretrained_compression(root, cfg.get("compression_model_checkpoint"), device)
    model = LoadedModel(MusicGen(source.name, codec, lm), source, root, streams=streams_for(device))
    start_decoding_loop(model, slots)
    return model


def start_decoding_loop(model: LoadedModel, slots: int, path: DecodingPath | None = None) -> None:
    """Give `model` a decoding loop (closing any it had) that decodes as `path` (default: the
    rung MUSICGEN_DECODER, MUSICGEN_ATTENTION and MUSICGEN_COMPILE start at), with the fewer of
    `slots` and the slots that fit in the memory free now; none for audiocraft's own loop, or an LM
    our steps do not reproduce. NotEnoughMemory when not one slot fits."""
    if model.loop is not None:
        model.loop.close()
        model.loop = None
        release_cached_memory(model.device)  # the old cache's blocks count as free for the plan
    path = path or descent(model.device)[0]
    unsupported = unsupported_reason(model.musicgen.lm)
    if unsupported is not None or path == AUDIOCRAFT:
        model.path = AUDIOCRAFT
        because = f" ({unsupported}: our steps do not reproduce it)" if unsupported else ""
        log.info("decoding with audiocraft's own loop, one request at a time%s", because)
        return
    model.path = path
    model.plan = plan_memory(model, slots)
    log.info("%s", model.plan.describe())
    steps = steps_for(model.musicgen, model.plan.slots, path, model.streams)
    model.loop = DecodingLoop(steps, model.autocast, model.streams, model.health)


def plan_memory(model: LoadedModel, limit: int) -> SlotPlan:
    """The slots of `limit` that fit beside the working memory of the other stages (memory.py)."""
    musicgen, device = model.musicgen, model.device
    per_slot = kv_bytes_per_slot(musicgen.lm, cache_positions(musicgen), model.cache_dtype())
    prefill = prefill_bytes(per_slot)
    working = working_memory(musicgen.max_duration, model.supports_melody, model.supports_mbd, device, limit, prefill)
    return plan_slots(limit, per_slot, working, free_memory(device), device)


def _inference_config(raw: Any, device: str) -> DictConfig:
    cfg = OmegaConf.create(raw)  # a DictConfig in trainer files, a YAML string in exported folders
    if not isinstance(cfg, DictConfig):
        raise CheckpointError("xp.cfg is not a mapping")
    cfg.device = device
    cfg.dtype = "float32" if device == "cpu" else "float16"
    for key in TRAINING_ONLY_KEYS:
        parent_key, _, leaf = key.rpartition(".")
        parent = OmegaConf.select(cfg, parent_key)
        if isinstance(parent, DictConfig) and leaf in parent:
            OmegaConf.set_struct(parent, False)
            del parent[leaf]
    return cfg


def _require_conditioner_assets(root: Path, cfg: DictConfig) -> None:
    models = {str(c.get("model")) for c in (cfg.get("conditioners") or {}).values() if isinstance(c, DictConfig)}
    if "t5" in models:
        assets.locate(root, assets.T5)
    if "chroma_stem" in models:
        assets.locate(root, assets.HTDEMUCS)


def _load_pretrained_compression(root: Path, name: object, device: str) -> CompressionModel:
    expected = PRETRAINED_PREFIX + assets.ENCODEC.repo_id
    if str(name).removeprefix(PRETRAINED_PREFIX) != assets.ENCODEC.repo_id:
        raise CheckpointError(f"this checkpoint's codec is {name!r}; only {expected!r} is supported")
    snapshot = assets.locate(root, assets.ENCODEC)
    return HFEncodecCompressionModel(EncodecModel.from_pretrained(snapshot)).to(device).eval()


def _load_folder_compression(root: Path, path: Path, device: str) -> CompressionModel:
    package = load_checkpoint(path)
    if "pretrained" in package:
        return _load_pretrained_compression(root, package["pretrained"], device)
    cfg = OmegaConf.create(package["xp.cfg"])
    cfg.device = device
    model = builders.get_compression_model(cfg)
    model.load_state_dict(package["best_state"])
    return model.to(device).eval()


def load_mbd(root: Path, codec: CompressionModel, device: torch.device | str) -> MultiBandDiffusion:
    """MBD's per-band U-Nets from the folder, decoding through `codec` (the model's own EnCodec)."""
    path = assets.locate(root, assets.MBD) / assets.MBD.filenames[0]
    package = load_checkpoint(path)
    processes = []
    for band in range(package["n_bands"]):
        cfg = package[band]["cfg"]
        unet = builders.get_diffusion_model(cfg)
        unet.load_state_dict(package[band]["model_state"])
        processor = builders.get_processor(cfg=cfg.processor, sample_rate=package["sample_rate"])
        processor.load_state_dict(package[band]["processor_state"])
        schedule = NoiseSchedule(**cfg.schedule, sample_processor=processor.to(device), device=device)
        processes.append(DiffusionProcess(model=unet.to(device).eval(), noise_schedule=schedule))
    return MultiBandDiffusion(DPs=processes, codec_model=codec)
