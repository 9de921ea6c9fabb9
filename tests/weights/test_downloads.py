"""One download: whole or nothing under the final name, resumed from `.incomplete`, checked, redacted."""

import http.server

import pytest

from musicgen_cog.weights.downloads import DownloadError, download, redact
from tests.loopback import LoopbackServer, Quiet

DATA = bytes(range(256)) * 4096 * 3  # 3 MiB: three of the downloader's 1 MiB chunks


class FileSite(LoopbackServer):
    """Serves DATA at any path: honours Range unless told not to, can stop after `cut` bytes."""

    def __init__(self, ranges: bool = True, cut: int | None = None, status: int = 200):
        self.ranges, self.cut, self.status = ranges, cut, status
        self.requests: list[str | None] = []
        site = self

        class Handler(Quiet, http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                site.requests.append(self.headers.get("Range"))
                if site.status != 200:
                    self.send_response(site.status)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                start = int(self.headers["Range"][6:].split("-")[0]) if site.ranges and self.headers["Range"] else 0
                self.send_response(206 if start else 200)
                self.send_header("Content-Length", str(len(DATA) - start))
                self.end_headers()
                stop = len(DATA) if site.cut is None else max(start, site.cut)
                self.wfile.write(DATA[start:stop])

        super().__init__(Handler)
        self.file_url = f"{self.url}/model.th?X-Amz-Signature=secret"


@pytest.fixture
def site_factory():
    sites = []

    def make(**kwargs):
        sites.append(FileSite(**kwargs))
        return sites[-1]

    yield make
    for site in sites:
        site.close()


def test_a_whole_download_lands_under_its_name_only(site_factory, tmp_path):
    site = site_factory()
    download(site.file_url, tmp_path / "model.th")
    assert (tmp_path / "model.th").read_bytes() == DATA
    assert [p.name for p in tmp_path.iterdir()] == ["model.th"]


def test_a_cut_download_keeps_its_bytes_and_the_next_run_resumes_them(site_factory, tmp_path):
    cut = site_factory(cut=1 << 20)
    with pytest.raises(
        DownloadError, match=r"downloading http://127\.0\.0\.1:\d+/model\.th failed: ChunkedEncodingError"
    ):
        download(cut.file_url, tmp_path / "model.th")
    assert not (tmp_path / "model.th").exists()
    assert (tmp_path / "model.th.incomplete").stat().st_size == 1 << 20
    whole = site_factory()
    download(whole.file_url, tmp_path / "model.th")
    assert whole.requests == [f"bytes={1 << 20}-"]
    assert (tmp_path / "model.th").read_bytes() == DATA


def test_a_server_that_ignores_range_is_downloaded_again_from_the_start(site_factory, tmp_path):
    (tmp_path / "model.th.incomplete").write_bytes(b"stale bytes from elsewhere")
    site = site_factory(ranges=False)
    download(site.file_url, tmp_path / "model.th")
    assert site.requests == ["bytes=26-"]
    assert (tmp_path / "model.th").read_bytes() == DATA


def test_content_that_fails_its_check_is_removed(site_factory, tmp_path):
    site = site_factory()
    with pytest.raises(DownloadError, match=r"model\.th: downloaded content does not match its checksum \(wrong\)"):
        download(site.file_url, tmp_path / "model.th", check=lambda path: "wrong")
    assert list(tmp_path.iterdir()) == []


def test_an_unexpected_size_is_an_error(site_factory, tmp_path):
    site = site_factory()
    with pytest.raises(DownloadError, match=f"stopped at {len(DATA)} of 5 bytes"):
        download(site.file_url, tmp_path / "model.th", expected_size=5)


def test_http_errors_name_the_url_without_its_signed_query(site_factory, tmp_path):
    site = site_factory(status=403)
    with pytest.raises(DownloadError) as caught:
        download(site.file_url, tmp_path / "model.th")
    assert str(caught.value) == f"{site.file_url.split('?')[0]} answered HTTP 403"


def test_redact_drops_query_strings_and_keeps_the_rest():
    assert redact("https://host.example/a/b.tar?token=1&sig=2") == "https://host.example/a/b.tar"
    assert redact("https://host.example/a/b.tar") == "https://host.example/a/b.tar"
