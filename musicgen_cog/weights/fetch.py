"""Fetching every real asset into a weights folder (`make weights`): pinned, verified, resumable.

huggingface_hub's `get_hf_file_metadata` gives each file's commit, content address and size;
`downloads.download` fetches it into a persistent `<blob>.incomplete`, so an interrupted run
continues where it stopped. A file enters the cache only once whole and verified: against the
hub's content address (sha256 for LFS files, the git blob sha1 otherwise) and against the lock,
then renamed into place.

The lock (`<folder>/assets.lock.json`) records the commit and sha256 each file was first fetched
at; later runs ask the hub for exactly that commit. htdemucs is pinned by the sha256 prefix
that torch-hub puts in its file name.
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
from pathlib import Path

from ..files import atomic_write, sha256_of
from . import assets
from .downloads import DownloadError, download

LOCK_NAME = "assets.lock.json"


def is_sha256(address: str) -> bool:
    """The hub names LFS blobs by their sha256, git-stored (small) ones by their git blob sha1."""
    return re.fullmatch(r"[0-9a-f]{64}", address) is not None


def content_problem(path: Path, address: str, locked_sha256: str | None) -> str | None:
    """What is wrong with a download, checked against the hub's content address and the lock (one hash pass)."""
    sha256 = sha256_of(path)
    if is_sha256(address):
        matches = sha256 == address
    else:
        data = path.read_bytes()
        matches = hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest() == address
    if not matches:
        return f"the hub's content address is {address}"
    if locked_sha256 is not None and sha256 != locked_sha256:
        return f"the lock expects sha256 {locked_sha256}"
    return None


def fetch_hub_asset(root: Path, asset: assets.HubAsset, lock: dict, endpoint: str | None) -> None:
    from huggingface_hub import get_hf_file_metadata, hf_hub_url

    pinned = lock.get(asset.repo_id, {})
    files = dict(pinned.get("files", {}))
    commit = pinned.get("revision")
    for filename in asset.filenames:
        cached = assets.hub_repo_dir(root, asset) / "snapshots" / str(commit) / filename
        if commit and cached.is_file() and filename in files:
            print(f"ok  {asset.repo_id}/{filename} @ {commit[:12]} (cached)")
            continue
        meta = get_hf_file_metadata(hf_hub_url(asset.repo_id, filename, revision=commit or "main", endpoint=endpoint))
        if meta.commit_hash is None or meta.etag is None:  # nothing to pin or verify against
            raise DownloadError(f"{asset.repo_id}/{filename}: the hub sent no commit (X-Repo-Commit) or content "
                                "address (ETag); use the Hugging Face hub or a mirror that sends both")  # fmt: skip
        if commit and meta.commit_hash != commit:
            raise DownloadError(f"{asset.repo_id}: the hub answered commit {meta.commit_hash} for pinned {commit}")
        commit, address = meta.commit_hash, meta.etag
        blob = assets.hub_repo_dir(root, asset) / "blobs" / address
        expected = files.get(filename)
        if not blob.is_file():
            check = functools.partial(content_problem, address=address, locked_sha256=expected)
            download(meta.location, blob, check, meta.size)
        # a verified LFS blob is named by its sha256: hash again only the small git-stored files
        files[filename] = expected or (address if is_sha256(address) else sha256_of(blob))
        assets.add_to_snapshot(root, asset, commit, filename, blob)
        print(f"ok  {asset.repo_id}/{filename} @ {commit[:12]}")
    lock[asset.repo_id] = {"revision": commit, "files": files}


def fetch_htdemucs(root: Path, url: str, sha256_prefix: str) -> None:
    target = assets.torch_hub_path(root, assets.HTDEMUCS)
    if target.is_file() and sha256_of(target).startswith(sha256_prefix):
        print(f"ok  {target.name} (cached)")
        return
    download(
        url,
        target,
        lambda path: (
            None if sha256_of(path).startswith(sha256_prefix) else f"expected a sha256 starting {sha256_prefix}"
        ),
    )
    print(f"ok  {target.name}")


def fetch_all(root: Path, endpoint: str | None, htdemucs_url: str, htdemucs_sha256: str) -> None:
    """Fetch every asset into `root`; the lock records what was fetched, even when a later file fails."""
    lock_path = root / LOCK_NAME
    lock = json.loads(lock_path.read_text()) if lock_path.is_file() else {}
    try:
        for asset in assets.HUB_ASSETS:
            fetch_hub_asset(root, asset, lock, endpoint)
        fetch_htdemucs(root, htdemucs_url, htdemucs_sha256)
    finally:
        with atomic_write(lock_path) as partial:
            partial.write_text(json.dumps(lock, indent=2, sort_keys=True) + "\n")
