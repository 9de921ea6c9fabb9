"""Random-weight assets in exactly the real on-disk formats, for tests, smoke runs and benches.

No machine here reaches a model hub, so this writes a complete weights folder (T5 under its
hub-cache name, EnCodec 32 kHz, htdemucs, MBD, the base melody LM and a trainer-format fine-tune)
that goes through the same loading code as the real weights. Random weights make noise, never music.
`make tiny-weights` (musicgen_cog/commands/tiny_weights.py) writes one.
"""

from __future__ import annotations

import hashlib
import io
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import environment
from ..files import atomic_write, sha256_of
from . import assets

CORPUS = (
    "a calm piano melody with soft strings",
    "energetic rock with drums and electric guitar",
    "jazz trio with upright bass and brushes",
    "80s synth pop, bright and upbeat",
    "lofi hip hop beat with vinyl crackle",
    "orchestral film score, epic brass and choir",
)


@dataclass(frozen=True)
class LMSize:
    """Transformer size of the language model; `full` is MusicGen-melody's own (1.5 B)."""

    dim: int
    num_heads: int
    num_layers: int


SIZES = {
    "tiny": LMSize(dim=32, num_heads=2, num_layers=2),
    "small": LMSize(dim=1024, num_heads=16, num_layers=24),
    "full": LMSize(dim=1536, num_heads=24, num_layers=48),
}


def lm_config(size: LMSize, stereo: bool = False, melody: bool = True) -> dict:
    """A MusicGen training config (`xp.cfg`): melody (chroma, prepended) or text-only (cross-attention)."""
    n_q = 8 if stereo else 4
    chroma = {
        "self_wav": {
            "model": "chroma_stem",
            "chroma_stem": {
                "sample_rate": 32000,
                "n_chroma": 12,
                "radix2_exp": 14,
                "argmax": True,
                "match_len_on_eval": False,
                "eval_wavs": None,
                "n_eval_wavs": 100,
                "cache_path": None,
            },
        }
    }
    delays = [d for d in range(4) for _ in range(2)] if stereo else list(range(4))
    return {
        "device": "cpu",
        "dtype": "float32",
        "sample_rate": 32000,
        "channels": 2 if stereo else 1,
        "compression_model_checkpoint": "//pretrained/facebook/encodec_32khz",
        "interleave_stereo_codebooks": {"use": stereo, "per_timestep": False},
        "dataset": {"segment_duration": 30},
        "lm_model": "transformer_lm",
        "transformer_lm": {
            "dim": size.dim,
            "num_heads": size.num_heads,
            "num_layers": size.num_layers,
            "hidden_scale": 4,
            "n_q": n_q,
            "card": 2048,
            "dropout": 0.0,
            "emb_lr": None,
            "activation": "gelu",
            "norm_first": True,
            "bias_ff": False,
            "bias_attn": False,
            "bias_proj": False,
            "past_context": None,
            "causal": True,
            "custom": False,
            "memory_efficient": True,
            "attention_as_float32": False,
            "layer_scale": None,
            "positional_embedding": "sin",
            "xpos": False,
            "checkpointing": "none",
            "weight_init": "gaussian",
            "depthwise_init": "current",
            "zero_bias_init": True,
            "norm": "layer_norm",
            "cross_attention": False,
            "qk_layer_norm": False,
            "qk_layer_norm_cross": False,
            "attention_dropout": None,
            "kv_repeat": 1,
            "two_step_cfg": False,
        },
        "codebooks_pattern": {"modeling": "delay", "delay": {"delays": delays, "flatten_first": 0, "empty_initial": 0}},
        "classifier_free_guidance": {"training_dropout": 0.2, "inference_coef": 3.0},
        "attribute_dropout": {"text": {}, "wav": {}},
        "fuser": {
            "cross_attention_pos_emb": False,
            "cross_attention_pos_emb_scale": 1,
            "sum": [],
            "prepend": ["self_wav", "description"] if melody else [],
            "cross": [] if melody else ["description"],
            "input_interpolate": [],
        },
        "conditioners": {
            "args": {"merge_text_conditions_p": 0.25, "drop_desc_p": 0.5},
            **(chroma if melody else {}),
            "description": {
                "model": "t5",
                "t5": {"name": "t5-base", "finetune": False, "word_dropout": 0.2, "normalize_text": False},
            },
        },
    }


def generator_version() -> str:
    """A short hash of this file: folders of random weights are cached under it and rebuilt when it changes."""
    return hashlib.sha256(Path(__file__).read_bytes()).hexdigest()[:12]


def write_weights_folder(root: Path, size: str = "tiny", finetune: bool = True) -> Path:
    """Write every base asset (and, with `finetune`, a fine-tune file) under `root`."""
    import torch  # heavy imports stay inside: environment.configure() must run first

    root = environment.configure(root)
    torch.manual_seed(0)
    _write_t5(root)
    _write_encodec(root)
    _write_htdemucs(root)
    _write_mbd(root)
    lm_size = SIZES[size]
    _write_base_lm(root, lm_size)
    if finetune:
        write_finetune(root / assets.FINETUNE_FILENAME, lm_size)
    return root


def cached_tiny_folder() -> Path:
    """Where the tests and the benches keep their tiny random weights: rebuilt when this file changes."""
    return environment.REPO_ROOT / ".cache" / f"tiny-weights-{generator_version()}"


def ensure_weights_folder(root: Path, size: str = "tiny") -> Path:
    """`root` as a complete random weights folder: written once, then reused as it is.

    The fine-tune is written last and atomically, so its presence means the folder is whole;
    without it, whatever an interrupted run left is removed and the folder written anew.
    """
    if not (root / assets.FINETUNE_FILENAME).is_file():
        shutil.rmtree(root, ignore_errors=True)
        write_weights_folder(root, size)
    return root


def write_finetune(path: Path, size: LMSize = SIZES["tiny"], stereo: bool = False, melody: bool = True) -> Path:
    """A fine-tune as the hosted trainer saves it: `torch.save({'xp.cfg': DictConfig, 'model': lm_state})`."""
    import torch
    from omegaconf import OmegaConf

    cfg = OmegaConf.create(lm_config(size, stereo, melody))
    with atomic_write(path) as partial:
        torch.save({"xp.cfg": cfg, "model": _random_lm_state(cfg)}, partial)
    return path


def _random_lm_state(cfg) -> dict:
    from audiocraft.models import builders

    return builders.get_lm_model(cfg).state_dict()


def _write_base_lm(root: Path, size: LMSize) -> None:
    import torch
    from omegaconf import OmegaConf

    cfg = OmegaConf.create(lm_config(size))
    with tempfile.TemporaryDirectory() as tmp:
        torch.save(
            {
                "xp.cfg": OmegaConf.to_yaml(cfg),
                "best_state": _random_lm_state(cfg),
                "exported": True,
                "version": "1.3.0",
            },
            Path(tmp) / "state_dict.bin",
        )
        torch.save(
            {"pretrained": assets.ENCODEC.repo_id, "exported": True, "version": "1.3.0"},
            Path(tmp) / "compression_state_dict.bin",
        )
        _put_in_hub_cache(root, assets.BASE_LM, Path(tmp))


def _write_t5(root: Path) -> None:
    import sentencepiece
    from transformers import T5Config, T5EncoderModel, T5Tokenizer

    with tempfile.TemporaryDirectory() as tmp:
        model_file = io.BytesIO()
        sentencepiece.SentencePieceTrainer.train(
            sentence_iterator=iter(CORPUS * 10),
            model_writer=model_file,
            vocab_size=64,
            model_type="unigram",
            pad_id=0,
            eos_id=1,
            unk_id=2,
            bos_id=-1,
            hard_vocab_limit=False,
            minloglevel=2,
        )
        (Path(tmp) / "spiece.model").write_bytes(model_file.getvalue())
        processor = sentencepiece.SentencePieceProcessor(model_proto=model_file.getvalue())
        vocab = [(processor.id_to_piece(i), processor.get_score(i)) for i in range(processor.get_piece_size())]
        tokenizer = T5Tokenizer(vocab=vocab, extra_ids=0)
        tokenizer.save_pretrained(tmp)
        # d_model must be 768: audiocraft hard-codes t5-base's width.
        config = T5Config(vocab_size=len(vocab), d_model=768, d_kv=8, d_ff=16, num_layers=1, num_heads=2)
        T5EncoderModel(config).save_pretrained(tmp)
        _put_in_hub_cache(root, assets.T5, Path(tmp))


def _write_encodec(root: Path) -> None:
    from transformers import EncodecConfig, EncodecModel

    # The real codec's rate, frame rate (640x upsampling: 50 Hz), 4 codebooks of 2048; tiny widths.
    config = EncodecConfig(
        sampling_rate=32000,
        audio_channels=1,
        target_bandwidths=[2.2],
        upsampling_ratios=[8, 5, 4, 4],
        codebook_size=2048,
        hidden_size=16,
        num_filters=4,
        num_residual_layers=1,
        num_lstm_layers=1,
        normalize=False,
        use_causal_conv=False,
        chunk_length_s=None,
        overlap=None,
    )
    model = EncodecModel(config)
    quantizer: Any = model.quantizer  # torch types submodules as `Tensor | Module`
    for layer in quantizer.layers:  # untrained codebooks are all zeros: every token would decode alike
        layer.codebook.embed.normal_()
        layer.codebook.embed_avg.copy_(layer.codebook.embed)
    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(tmp)
        _put_in_hub_cache(root, assets.ENCODEC, Path(tmp))


def _write_htdemucs(root: Path) -> None:
    import torch
    from demucs.htdemucs import HTDemucs
    from demucs.states import serialize_model
    from omegaconf import OmegaConf

    model = HTDemucs(
        sources=["drums", "bass", "other", "vocals"],
        audio_channels=2,
        channels=4,
        growth=2,
        depth=4,
        t_layers=1,
        t_heads=1,
        t_hidden_scale=1.0,
        bottom_channels=0,
        dconv_comp=2,
        segment=2,  # seconds per chunk: short inputs are padded less (the real one's 7.8 s), longer ones split
    )
    package = serialize_model(model, training_args=OmegaConf.create({}))
    with atomic_write(assets.torch_hub_path(root, assets.HTDEMUCS)) as partial:
        torch.save(package, partial)


def _write_mbd(root: Path) -> None:
    import torch
    from audiocraft.models import builders
    from omegaconf import OmegaConf

    package: dict = {"sample_rate": 32000, "n_bands": 4}
    for band in range(4):
        cfg = OmegaConf.create(
            {
                "channels": 1,
                "schedule": {
                    "repartition": "power",
                    "beta_exp": 7.5,
                    "beta_t0": 1e-5,
                    "beta_t1": 2.9e-2,
                    "num_steps": 1000,
                    "variance": "beta_tilde",
                    "clip": 5.0,
                    "rescale": 1.0,
                    "n_bands": None,
                    "noise_scale": 1.0,
                },
                "diffusion_unet": {
                    "hidden": 4,
                    "depth": 2,
                    "growth": 2.0,
                    "max_channels": 16,
                    "emb_all_layers": False,
                    "cross_attention": False,
                    "bilstm": False,
                    "transformer": False,
                    "codec_dim": 16,
                },
                "processor": {
                    "use": True,
                    "name": "multi_band_processor",
                    "n_bands": 8,
                    "num_samples": 10000,
                    "power_std": 1.0,
                },
            }
        )
        unet = builders.get_diffusion_model(cfg)
        processor = builders.get_processor(cfg.processor, sample_rate=32000)
        processor.project_sample(torch.randn(4, 1, 32000))  # fit its statistics: unfitted ones are NaN
        package[band] = {"cfg": cfg, "model_state": unet.state_dict(), "processor_state": processor.state_dict()}
    with tempfile.TemporaryDirectory() as tmp:
        torch.save(package, Path(tmp) / assets.MBD.filenames[0])
        _put_in_hub_cache(root, assets.MBD, Path(tmp))


def _put_in_hub_cache(root: Path, asset: assets.HubAsset, source: Path) -> None:
    """Lay `source`'s files out as huggingface_hub caches them: blobs, a snapshot of links, refs/main."""
    repo_dir = assets.hub_repo_dir(root, asset)
    if repo_dir.exists():
        shutil.rmtree(repo_dir)
    (repo_dir / "blobs").mkdir(parents=True)
    revision = hashlib.sha1(f"random-weights:{asset.repo_id}".encode()).hexdigest()
    for file in sorted(source.iterdir()):
        blob = repo_dir / "blobs" / sha256_of(file)
        shutil.copyfile(file, blob)
        assets.add_to_snapshot(root, asset, revision, file.name, blob)
