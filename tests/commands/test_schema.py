"""`make schema`: writes the document coglet validates requests against."""

import json
import subprocess
import sys

import pytest

from musicgen_cog.api.cog_schema import build_schema
from tests.conftest import ROOT


@pytest.mark.slow
def test_the_command_writes_cogs_document_to_the_path_given(tiny_weights, tmp_path):
    out = tmp_path / "schema.json"
    done = subprocess.run([sys.executable, "-m", "musicgen_cog.commands.schema", str(out)], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert (done.returncode, done.stdout, done.stderr) == (0, f"wrote {out}\n", "")
    assert json.loads(out.read_text()) == build_schema()
