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


@pytest.mark.parametrize("changed", [None, "predict.py", "musicgen_cog/api/cog_schema.py", ".venv/.installed"])
def test_make_serve_rewrites_the_document_only_when_what_it_is_read_from_changed(schema_file, changed):
    """Importing predict.py for it takes seconds at every start; a stale one would check requests
    against inputs predict.py no longer has. `make -n -W` asks what make would run were `changed` new."""
    what_if = ["-W", changed] if changed else []
    planned = subprocess.run(["make", "-n", "--no-print-directory", *what_if, "serve", "PORT=0"], cwd=ROOT,
                             capture_output=True, text=True, timeout=60, check=True).stdout  # fmt: skip
    assert ("-m musicgen_cog.commands.schema" in planned) == (changed is not None), planned
    assert "exec tini" in planned
