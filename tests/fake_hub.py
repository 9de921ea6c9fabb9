"""A loopback stand-in for the Hugging Face hub's file API, serving a weights folder's files.

It answers what `hf_hub_download` asks: HEAD/GET `/{repo_id}/resolve/{revision}/{filename}` with
`X-Repo-Commit`, `ETag` (sha256 for large files, git blob sha1 for small ones, as the hub does) and
Range support, plus plain files under `/files/`. It can drop downloads midway or corrupt them.
"""

from __future__ import annotations

import hashlib
import http.server
from pathlib import Path

from musicgen_cog.weights import assets
from tests.loopback import LoopbackServer, Quiet

LFS_THRESHOLD = 10_000  # the hub stores big files in LFS (sha256 ETag), small ones in git (sha1 ETag)


def commit_for(repo_id: str, generation: int = 0) -> str:
    return hashlib.sha1(f"fake-hub:{repo_id}:{generation}".encode()).hexdigest()


class FakeHub(LoopbackServer):
    def __init__(self, source_root: Path):
        self.files: dict[tuple[str, str], bytes] = {}
        for asset in assets.HUB_ASSETS:
            snapshot = assets.locate(source_root, asset)
            for name in asset.filenames:
                self.files[(asset.repo_id, name)] = (snapshot / name).read_bytes()
        self.plain = {assets.HTDEMUCS.filename: assets.locate(source_root, assets.HTDEMUCS).read_bytes()}
        self.generation = 0
        self.drop_at: dict[str, int] = {}  # filename -> absolute byte offset where every download stops
        self.corrupt: set[str] = set()
        self.log: list[tuple[str, str, str | None]] = []  # (method, path, Range header)
        hub = self

        class Handler(Quiet, http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_HEAD(self):
                hub._answer(self, body=False)

            def do_GET(self):
                hub._answer(self, body=True)

        super().__init__(Handler)

    def htdemucs_url(self) -> str:
        return f"{self.url}/files/{assets.HTDEMUCS.filename}"

    def _lookup(self, path: str) -> tuple[str, bytes, dict] | None:
        parts = path.lstrip("/").split("/")
        if parts[0] == "files" and len(parts) == 2 and parts[1] in self.plain:
            return parts[1], self.plain[parts[1]], {}
        if "resolve" not in parts:
            return None
        at = parts.index("resolve")
        repo_id, revision, filename = "/".join(parts[:at]), parts[at + 1], "/".join(parts[at + 2 :])
        if (repo_id, filename) not in self.files or revision not in (
            "main",
            commit_for(repo_id, self.generation),
            *[commit_for(repo_id, g) for g in range(3)],
        ):
            return None
        data = self.files[(repo_id, filename)]
        etag = (
            hashlib.sha256(data).hexdigest()
            if len(data) >= LFS_THRESHOLD
            else hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()
        )
        commit = revision if revision != "main" else commit_for(repo_id, self.generation)
        return filename, data, {"X-Repo-Commit": commit, "ETag": f'"{etag}"'}

    def _answer(self, handler, body: bool) -> None:
        self.log.append((handler.command, handler.path, handler.headers.get("Range")))
        found = self._lookup(handler.path)
        if found is None:
            handler.send_response(404)
            handler.send_header("Content-Length", "0")
            handler.end_headers()
            return
        filename, data, headers = found
        if body and filename in self.corrupt:
            data = bytes(b ^ 0xFF for b in data[:64]) + data[64:]
        start = 0
        if body and handler.headers.get("Range", "").startswith("bytes="):
            start = int(handler.headers["Range"][6:].split("-")[0])
        handler.send_response(206 if start else 200)
        for key, value in headers.items():
            handler.send_header(key, value)
        handler.send_header("Content-Length", str(len(data) - start))
        handler.send_header("Accept-Ranges", "bytes")
        handler.end_headers()
        if not body:
            return
        stop = self.drop_at.get(filename, len(data))
        handler.wfile.write(data[start : max(start, stop)])
        if stop < len(data):
            handler.wfile.flush()
            handler.close_connection = True
            handler.connection.shutdown(2)
