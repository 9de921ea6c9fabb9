"""COG_WEIGHTS: a path is used in place; a URL is fetched once, atomically, into the cache."""

import http.server

import pytest

from musicgen_cog.model.loading import load_model
from musicgen_cog.weights.checkpoints import CheckpointError
from musicgen_cog.weights.finetune_source import finetune_cache_path, resolve_finetune
from tests.loopback import LoopbackServer, Quiet


class FileServer(LoopbackServer):
    """Serves one folder on loopback, counting the GET requests it answers."""

    def __init__(self, folder):
        self.requests = 0
        site = self

        class Handler(Quiet, http.server.SimpleHTTPRequestHandler):
            def __init__(self, *args, **kwargs):
                super().__init__(*args, directory=str(folder), **kwargs)

            def do_GET(self):
                site.requests += 1
                super().do_GET()

        super().__init__(Handler)

    def file_url(self, name: str) -> str:
        return f"{self.url}/{name}"


def test_none_and_the_cog_placeholder_mean_the_folders_own_checkpoint(tmp_path):
    assert resolve_finetune(None, tmp_path) is None
    assert resolve_finetune("", tmp_path) is None
    assert resolve_finetune("weights", tmp_path) is None


def test_a_local_path_is_used_in_place(tmp_path):
    file = tmp_path / "ft.tar"
    file.write_bytes(b"x")
    assert resolve_finetune(str(file), tmp_path / "root") == file


def test_a_missing_local_path_is_named(tmp_path):
    with pytest.raises(CheckpointError, match=r"COG_WEIGHTS names .*nope.tar, which does not exist"):
        resolve_finetune(str(tmp_path / "nope.tar"), tmp_path)


def test_a_url_is_downloaded_once_then_served_from_the_cache(tiny_weights, tmp_path):
    root = tmp_path / "root"
    with FileServer(tiny_weights) as server:
        url = server.file_url("trained_model.tar") + "?token=secret"
        first = resolve_finetune(url, root)
        second = resolve_finetune(url, root)
        assert server.requests == 1
    assert first == second == finetune_cache_path(root, url)
    assert first.read_bytes() == (tiny_weights / "trained_model.tar").read_bytes()
    assert [p.name for p in first.parent.iterdir()] == ["trained_model.tar"]  # no temporary left behind
    assert load_model(tiny_weights, first).supports_melody


def test_a_url_that_fails_is_a_clear_error_and_caches_nothing(tmp_path):
    root = tmp_path / "root"
    with FileServer(tmp_path) as server:
        url = server.file_url("missing.tar?sig=abc")
        with pytest.raises(CheckpointError) as caught:
            resolve_finetune(url, root)
    message = str(caught.value)
    assert message == f"could not download COG_WEIGHTS: {server.file_url('missing.tar')} answered HTTP 404"
    assert "sig=abc" not in message  # signed query strings stay out of logs
    assert not finetune_cache_path(root, url).exists()
