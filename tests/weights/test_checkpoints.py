"""Checkpoints are read without running pickled code; bad files get clear errors."""

import os
import pickle

import pytest
import torch
from omegaconf import OmegaConf

from musicgen_cog.weights.checkpoints import CheckpointError, load_checkpoint


class RunsCode:
    """Unpickling this calls os.system: what a crafted checkpoint would do."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_a_trainer_style_checkpoint_with_a_config_loads(tmp_path):
    path = tmp_path / "ok.th"
    torch.save(
        {"xp.cfg": OmegaConf.create({"a": {"b": [1, 2.5, "x", None, True]}}), "model": {"w": torch.ones(2)}}, path
    )
    loaded = load_checkpoint(path)
    assert loaded["xp.cfg"].a.b[1] == 2.5 and torch.equal(loaded["model"]["w"], torch.ones(2))


def test_a_checkpoint_crafted_to_run_code_is_refused_and_runs_nothing(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.tar"
    torch.save({"xp.cfg": {}, "model": RunsCode(marker)}, path)
    with pytest.raises(CheckpointError, match=r"refused to load .* could run arbitrary code \(.*GLOBAL posix\.system"):
        load_checkpoint(path)
    assert not marker.exists()


def test_a_plain_pickle_is_not_a_checkpoint(tmp_path):
    path = tmp_path / "plain.pkl"
    path.write_bytes(pickle.dumps({"model": 1}))
    with pytest.raises(CheckpointError):
        load_checkpoint(path)


@pytest.mark.parametrize("content", [b"", b"garbage" * 100])
def test_corrupt_files_are_refused_as_unreadable_not_as_code(tmp_path, content):
    path = tmp_path / "bad.th"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match=r"^\S+bad\.th is not a readable PyTorch checkpoint \(.+\)$"):
        load_checkpoint(path)


def test_a_truncated_checkpoint_is_refused(tmp_path):
    path = tmp_path / "cut.th"
    torch.save({"model": {"w": torch.zeros(10000)}}, path)
    path.write_bytes(path.read_bytes()[:5000])
    with pytest.raises(CheckpointError, match="not a readable PyTorch checkpoint"):
        load_checkpoint(path)


def test_a_non_dict_checkpoint_is_refused(tmp_path):
    path = tmp_path / "t.th"
    torch.save(torch.zeros(3), path)
    with pytest.raises(CheckpointError, match="expected a dict"):
        load_checkpoint(path)


def test_a_missing_file_is_named_with_the_os_reason(tmp_path):
    with pytest.raises(CheckpointError, match=r"nope\.th is not a readable PyTorch checkpoint .*No such file"):
        load_checkpoint(tmp_path / "nope.th")
