"""`make weights`: fetch every real asset into a weights folder, pinned, verified and resumable.

huggingface_hub's `get_hf_file_metadata` gives each file's commit, content address and size;
`downloads.download` fetches it into a persistent `<blob>.incomplete`, so an interrupted run
continues where it stopped. A file enters the cache only once whole and verified: against the
hub's content address (sha256 for LFS files, the git blob sha1 otherwise) and against the lock,
then renamed into place.

The lock (`<folder>/assets.lock.json`) records the commit and sha256 each file was first fetched
at; later runs ask the hub for exactly that commit. htdemucs is pinned by the sha256 prefix
that torch-hub puts in its file name.

    python -m musicgen_cog.fetch_weights WEIGHTS_DIR [--endpoint URL] [--htdemucs-url URL --htdemucs-sha256 HEX]
"""
from __future__ import annotations

import argparse
import functools
import hashlib
import json
import re
import sys
from pathlib import Path

from . import assets, environment
from .downloads import DownloadError, download

LOCK_NAME = "assets.lock.json"


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


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
        meta = get_hf_file_metadata(hf_hub_url(asset.repo_id, filename, revision=commit or "main",
                                               endpoint=endpoint))
        if commit and meta.commit_hash != commit:
            raise DownloadError(f"{asset.repo_id}: the hub answered commit {meta.commit_hash} for pinned {commit}")
        commit = meta.commit_hash
        blob = assets.hub_repo_dir(root, asset) / "blobs" / meta.etag
        expected = files.get(filename)
        if not blob.is_file():
            download(meta.location, blob, functools.partial(content_problem, address=meta.etag, locked_sha256=expected),
                     meta.size)
        # a verified LFS blob is named by its sha256: hash again only the small git-stored files
        files[filename] = expected or (meta.etag if is_sha256(meta.etag) else sha256_of(blob))
        assets.add_to_snapshot(root, asset, commit, filename, blob)
        print(f"ok  {asset.repo_id}/{filename} @ {commit[:12]}")
    lock[asset.repo_id] = {"revision": commit, "files": files}


def fetch_htdemucs(root: Path, url: str, sha256_prefix: str) -> None:
    target = environment.torch_home(root) / "hub" / "checkpoints" / assets.HTDEMUCS.filename
    if target.is_file() and sha256_of(target).startswith(sha256_prefix):
        print(f"ok  {target.name} (cached)")
        return
    download(url, target, lambda path: None if sha256_of(path).startswith(sha256_prefix)
             else f"expected a sha256 starting {sha256_prefix}")
    print(f"ok  {target.name}")


def fetch_all(root: Path, endpoint: str | None, htdemucs_url: str, htdemucs_sha256: str) -> None:
    lock_path = root / LOCK_NAME
    lock = json.loads(lock_path.read_text()) if lock_path.is_file() else {}
    try:
        for asset in (assets.T5, assets.ENCODEC, assets.BASE_LM, assets.MBD):
            fetch_hub_asset(root, asset, lock, endpoint)
        fetch_htdemucs(root, htdemucs_url, htdemucs_sha256)
    finally:
        lock_path.write_text(json.dumps(lock, indent=2, sort_keys=True) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("weights_dir", type=Path)
    parser.add_argument("--endpoint", help="Hugging Face hub endpoint (default: $HF_ENDPOINT or the public hub)")
    parser.add_argument("--htdemucs-url", default=assets.HTDEMUCS.url)
    parser.add_argument("--htdemucs-sha256", default=assets.HTDEMUCS.sha256_prefix,
                        help="expected sha256 (or a prefix of it) of the htdemucs file")
    args = parser.parse_args(argv)
    root = environment.configure(args.weights_dir, offline=False)
    root.mkdir(parents=True, exist_ok=True)
    try:
        fetch_all(root, args.endpoint, args.htdemucs_url, args.htdemucs_sha256)
    except Exception as exc:  # a command-line tool: one clear line and a non-zero exit, for any failure
        print(f"error: fetching weights into {root} failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    print(f"all assets present and verified in {root}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
