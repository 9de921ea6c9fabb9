"""Where a fine-tune comes from: `COG_WEIGHTS` / `setup(weights=...)`, a local path or an http(s) URL.

A URL is fetched once into `<weights>/finetunes/<sha256 of the URL>/` by `downloads.download`
(resumable, size-checked, renamed only when whole), then reused on every later boot. The file itself is
untrusted and is only ever read through `checkpoints.load_checkpoint`.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from urllib.parse import urlparse

from . import assets
from .checkpoints import CheckpointError
from .downloads import DownloadError, download, redact

log = logging.getLogger(__name__)


def finetune_cache_path(root: Path, url: str) -> Path:
    return root / "finetunes" / hashlib.sha256(url.encode()).hexdigest()[:32] / assets.FINETUNE_FILENAME


def resolve_finetune(weights: str | None, root: Path) -> Path | None:
    """The local checkpoint for `weights` (None stays None: serve the folder's own checkpoint)."""
    if weights is None or str(weights).strip() in ("", "weights"):  # Cog passes "weights" when none is set
        return None
    weights = str(weights).strip()
    if urlparse(weights).scheme not in ("http", "https"):
        path = Path(weights).expanduser()
        if not path.exists():
            raise CheckpointError(
                f"COG_WEIGHTS names {path}, which does not exist; give a checkpoint file, an "
                "audiocraft model folder or an http(s) URL"
            )
        return path
    cached = finetune_cache_path(root, weights)
    if cached.is_file():
        log.info("using cached fine-tune %s", cached)
        return cached
    cached.parent.mkdir(parents=True, exist_ok=True)
    log.info("downloading fine-tune weights from %s", redact(weights))
    try:
        download(weights, cached)
    except DownloadError as exc:
        raise CheckpointError(f"could not download COG_WEIGHTS: {exc}") from exc  # exc names the URL, redacted
    log.info("fine-tune weights saved to %s", cached)
    return cached
