"""Atomic writes and file hashes."""

import hashlib

import pytest

from musicgen_cog.files import atomic_write, sha256_of


def test_a_whole_write_replaces_the_file_and_leaves_nothing_beside_it(tmp_path):
    target = tmp_path / "sub" / "out.json"
    with atomic_write(target) as partial:
        partial.write_text("new")
        assert not target.exists()  # readers never see a half-written file
    assert target.read_text() == "new" and [p.name for p in target.parent.iterdir()] == ["out.json"]


def test_a_failed_write_keeps_the_previous_file_and_leaves_nothing_beside_it(tmp_path):
    target = tmp_path / "out.json"
    target.write_text("old")

    def fail_midway() -> None:
        with atomic_write(target) as partial:
            partial.write_text("half")
            raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        fail_midway()
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["out.json"]


def test_two_writers_of_one_file_do_not_share_a_temporary_name(tmp_path):
    target = tmp_path / "out.json"
    with atomic_write(target) as first, atomic_write(target) as second:
        assert first != second
        first.write_text("1")
        second.write_text("2")
    assert target.read_text() == "1"  # the outer block finished last


def test_sha256_of_matches_hashlib_across_chunks(tmp_path):
    data = bytes(range(256)) * 10_000  # 2.4 MiB: several of the 1 MiB reads
    (tmp_path / "blob").write_bytes(data)
    assert sha256_of(tmp_path / "blob") == hashlib.sha256(data).hexdigest()
