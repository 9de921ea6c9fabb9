"""The base assets a MusicGen checkpoint needs, and where each lives in a weights folder.

The folder mirrors the caches the libraries read offline: a Hugging Face hub cache under
`huggingface/hub` and a torch-hub cache under `torch/hub/checkpoints`. `weights/README.md`
documents the same layout; `make weights` fills it and `make tiny-weights` fakes it.
"""

from __future__ import annotations

import json
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path

from .. import environment

FINETUNE_FILENAME = "trained_model.tar"  # a fine-tune baked into the folder, used when COG_WEIGHTS is unset


@dataclass(frozen=True)
class HubAsset:
    """Files of one Hugging Face repository, read from the hub cache."""

    label: str
    repo_id: str
    filenames: tuple[str, ...]


@dataclass(frozen=True)
class TorchHubAsset:
    """One file of the torch-hub checkpoint cache (how demucs finds htdemucs offline).

    torch-hub names such files `<name>-<first 8 hex of their sha256>.<ext>`: the name pins the content.
    """

    label: str
    filename: str
    url: str

    @property
    def sha256_prefix(self) -> str:
        return self.filename.rsplit("-", 1)[1].split(".")[0]


T5 = HubAsset("T5 text encoder", "t5-base", ("config.json", "model.safetensors", "spiece.model", "tokenizer.json"))
ENCODEC = HubAsset("EnCodec 32 kHz codec", "facebook/encodec_32khz", ("config.json", "model.safetensors"))
BASE_LM = HubAsset(
    "MusicGen-melody base model", "facebook/musicgen-melody", ("state_dict.bin", "compression_state_dict.bin")
)
MBD = HubAsset("MultiBand Diffusion decoder", "facebook/multiband-diffusion", ("mbd_musicgen_32khz.th",))
HTDEMUCS = TorchHubAsset(
    "htdemucs stem separator",
    "955717e8-8726e21a.th",
    "https://dl.fbaipublicfiles.com/demucs/hybrid_transformer/955717e8-8726e21a.th",
)
HUB_ASSETS = (T5, ENCODEC, BASE_LM, MBD)
ALL_ASSETS = (*HUB_ASSETS, HTDEMUCS)


class AssetError(FileNotFoundError):
    """A required asset is missing from the weights folder or corrupt; the message says how to get it."""


def hub_repo_dir(root: Path, asset: HubAsset) -> Path:
    """`asset`'s folder in the hub cache: `blobs/`, `snapshots/<commit>/` and `refs/main`."""
    return environment.hf_cache_dir(root) / ("models--" + asset.repo_id.replace("/", "--"))


def torch_hub_path(root: Path, asset: TorchHubAsset) -> Path:
    """Where torch-hub (and so demucs, offline) looks for `asset` under `root`."""
    return environment.torch_home(root) / "hub" / "checkpoints" / asset.filename


def add_to_snapshot(root: Path, asset: HubAsset, commit: str, filename: str, blob: Path) -> Path:
    """Link a file already in `blobs/` into snapshot `commit` and point `refs/main` at it."""
    repo_dir = hub_repo_dir(root, asset)
    link = repo_dir / "snapshots" / commit / filename
    link.parent.mkdir(parents=True, exist_ok=True)
    link.unlink(missing_ok=True)
    os.symlink(os.path.relpath(blob, link.parent), link)
    (repo_dir / "refs").mkdir(exist_ok=True)
    (repo_dir / "refs" / "main").write_text(commit)
    return link


def hub_snapshot(root: Path, asset: HubAsset) -> Path | None:
    """The cached snapshot folder that `refs/main` of `asset` points to, if any."""
    repo_dir = hub_repo_dir(root, asset)
    ref = repo_dir / "refs" / "main"
    if not ref.is_file():
        return None
    snapshot = repo_dir / "snapshots" / ref.read_text().strip()
    return snapshot if snapshot.is_dir() else None


def locate(root: Path, asset: HubAsset | TorchHubAsset) -> Path:
    """The folder (hub asset) or file (torch-hub asset) of `asset`, checked readable, or AssetError."""
    if isinstance(asset, TorchHubAsset):
        path = torch_hub_path(root, asset)
        if not path.is_file():
            raise AssetError(_message(root, f"missing {asset.label}", f"{path.name} not found", path.parent))
        _require_readable(root, asset.label, path)
        return path
    snapshot = hub_snapshot(root, asset)
    folder = hub_repo_dir(root, asset)
    label = f"{asset.label} ({asset.repo_id})"
    missing = [name for name in asset.filenames if snapshot is None or not (snapshot / name).is_file()]
    if snapshot is None or missing:
        raise AssetError(_message(root, f"missing {label}", f"{', '.join(missing)} not found", folder))
    for name in asset.filenames:
        _require_readable(root, label, snapshot / name)
    return snapshot


def _require_readable(root: Path, label: str, path: Path) -> None:
    """A cheap structural check (headers, zip directory, JSON) that catches truncated or garbage files."""
    try:
        if path.suffix == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(path), framework="pt"):
                pass
        elif path.suffix == ".json":
            json.loads(path.read_text())
        elif path.suffix == ".model":
            import sentencepiece

            sentencepiece.SentencePieceProcessor(model_file=str(path))
        elif path.suffix in (".bin", ".th", ".tar"):
            zipfile.ZipFile(path).close()  # torch.save's format; its directory sits at the very end
    except Exception as exc:  # each reader has its own error types; any of them means unusable
        raise AssetError(
            _message(root, f"corrupt {label}", f"{path.name} cannot be read ({type(exc).__name__}: {exc})", path.parent)
        ) from exc


def _message(root: Path, what: str, problem: str, searched: Path) -> str:
    return (
        f"{what}: {problem} under {searched}. "
        f"Fetch the real weights with `make weights WEIGHTS_DIR={root}` "
        f"(or random test weights with `make tiny-weights WEIGHTS_DIR={root}`)."
    )
