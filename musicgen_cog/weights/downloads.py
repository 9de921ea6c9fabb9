"""Downloading one file: resumable, size-checked, written through `<name>.incomplete`, renamed when whole.

Built on requests (urllib3 refuses a body shorter than its Content-Length), because
huggingface_hub's own downloader refuses every request while the server runs offline and no
longer keeps partial files between runs. Used by `make weights` and for `COG_WEIGHTS` URLs.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlparse

import requests
from tqdm import tqdm

CHUNK = 1 << 20


class DownloadError(RuntimeError):
    """A download failed or produced the wrong file; nothing partial was taken for whole."""


def redact(url: str) -> str:
    """The URL without its query string, which often carries a signed token."""
    return urlparse(url)._replace(query="", params="").geturl()


def download(
    url: str, destination: Path, check: Callable[[Path], str | None] | None = None, expected_size: int | None = None
) -> None:
    """Fetch `url` to `destination`, resuming a previous `.incomplete`; `check` returns a problem or None."""
    partial = destination.with_name(destination.name + ".incomplete")
    partial.parent.mkdir(parents=True, exist_ok=True)
    resume = partial.stat().st_size if partial.exists() else 0
    try:
        with requests.get(
            url, stream=True, timeout=(10, 60), headers={"Range": f"bytes={resume}-"} if resume else {}
        ) as response:
            if response.status_code >= 400:
                raise DownloadError(f"{redact(url)} answered HTTP {response.status_code}")
            if resume and response.status_code != 206:
                resume = 0  # the server ignored the Range: start over
            length = response.headers.get("Content-Length")
            total = resume + int(length) if length is not None else None
            with (
                open(partial, "ab" if resume else "wb") as out,
                tqdm(
                    total=total,
                    initial=resume,
                    unit="B",
                    unit_scale=True,
                    desc=destination.name,
                    disable=not sys.stderr.isatty(),
                ) as bar,
            ):
                for chunk in response.iter_content(CHUNK):
                    out.write(chunk)
                    bar.update(len(chunk))
    except requests.RequestException as exc:
        raise DownloadError(
            f"downloading {redact(url)} failed: {type(exc).__name__}: {str(exc).replace(url, redact(url))}"
        ) from exc
    size = partial.stat().st_size
    if (total is not None and size != total) or (expected_size is not None and size != expected_size):
        raise DownloadError(
            f"downloading {redact(url)} stopped at {size} of {expected_size or total} bytes; run again to resume"
        )
    problem = check(partial) if check else None
    if problem:
        partial.unlink()
        raise DownloadError(
            f"{destination.name}: downloaded content does not match its checksum ({problem}); "
            "the file was removed, run again"
        )
    partial.replace(destination)
