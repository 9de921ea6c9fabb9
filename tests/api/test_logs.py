"""Our log lines: one plain line each on stderr, set up once however often setup runs."""

import logging
import subprocess
import sys

from tests.conftest import ROOT


def test_records_are_plain_lines_on_stderr_and_set_up_once():
    code = (
        "import logging; from musicgen_cog.api.logs import configure_logging;"
        "configure_logging(); configure_logging();"
        "logging.getLogger('musicgen_cog.api.pipeline').info('Using seed %d', 5);"
        "logging.getLogger('musicgen_cog.model').debug('not shown at INFO')"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert (done.returncode, done.stdout, done.stderr) == (0, "", "Using seed 5\n")


def test_the_package_logger_does_not_propagate_to_the_servers_root_logger(logs):
    assert logging.getLogger("musicgen_cog").propagate is False
