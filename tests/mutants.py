"""`make mutants`: mutmut over the modules where a silent bug costs most, each against its own tests.

Each module runs in a folder of its own, mutants/<module>/ (its mutmut config, links to the tree,
and mutmut's copy of it), from scratch every time, so a new test shows up as a killed mutant. One
line per module; fails if a module catches under 90 %, or a survivor is not explained in
docs/mutants.md.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / "mutants"
EXPLAINED = ROOT / "docs" / "mutants.md"
THRESHOLD = 0.90
CAPTURES = "tests/model/test_faults.py::test_a_capture_that_"
# module: its source, and its own tests (tests/<folder>/test_<module>.py), with the tests of its
# paths that live beside the behaviour they serve: a capture's failures and autocast with the faults
# and the step's numbers, the loop's faults (out of memory, sticky errors, health) with the faults
MODULES = {
    "attention": ("musicgen_cog/model/attention.py", ["tests/model/test_attention.py"]),
    "steps": (
        "musicgen_cog/model/steps.py",
        [
            "tests/model/test_steps.py",
            CAPTURES + "runs_out_of_memory_is_tried_again_later_and_graphs_stay_on",
            CAPTURES + "fails_oddly_turns_graphs_off_and_the_loop_goes_on",
            CAPTURES + "fails_after_others_succeeded_leaves_their_graphs_unreplayed",
            CAPTURES + "meets_a_sticky_error_stops_the_loop_and_fails_health",
            CAPTURES + "runs_out_of_memory_saving_the_slots_state_is_tried_again_later",
            "tests/model/test_faults.py::test_a_capture_waits_while_mbd_draws_from_the_default_generators",
            "tests/model/test_fast_decode.py::test_graph_steps_are_captured_under_the_callers_autocast_without_its_cache",
        ],
    ),
    "decoding_loop": (
        "musicgen_cog/model/decoding_loop.py",
        [
            "tests/model/test_decoding_loop.py",
            "tests/model/test_faults.py",
            "tests/model/test_steps.py::test_a_per_slot_window_whose_sampling_fails_mid_way_fails_alone_with_its_error",
        ],
    ),
    "window": ("musicgen_cog/model/window.py", ["tests/model/test_window.py"]),
    "sampling": ("musicgen_cog/model/sampling.py", ["tests/model/test_sampling.py"]),
    "memory": ("musicgen_cog/model/memory.py", ["tests/model/test_memory.py"]),
    "drain": ("musicgen_cog/serving/drain.py", ["tests/serving/test_drain.py"]),
    "inputs": ("musicgen_cog/api/inputs.py", ["tests/api/test_inputs.py"]),
    "normalization": ("musicgen_cog/audio/normalization.py", ["tests/audio/test_normalization.py"]),
}
# what the tests read besides the package and tests/ (mutmut copies those two and pyproject.toml)
ALSO_COPY = ["predict.py", "bench", "docs"]


@dataclass
class Outcome:
    module: str
    counts: dict[str, int]
    seconds: float
    survivors: list[str]  # "name: status" of each mutant no test failed on (a timeout caught it, slowly)

    @property
    def caught(self) -> int:
        return self.counts["killed"] + self.counts["timeout"]

    @property
    def share(self) -> float:
        return self.caught / self.counts["total"] if self.counts["total"] else 1.0

    def line(self) -> str:
        c = self.counts
        others = c["total"] - self.caught - c["survived"]  # no tests, suspicious, segfault
        return (
            f"{self.module:<14} made {c['total']:4d}  killed {c['killed']:4d}  survived {c['survived']:3d}  "
            f"timed out {c['timeout']:3d}  other {others:2d}  caught {100 * self.share:5.1f} %  "
            f"in {self.seconds:6.0f} s"
        )


def configure(module: str) -> Path:
    """mutants/<module>/ afresh: links to the tree, and pyproject.toml with mutmut's settings for it."""
    source, tests = MODULES[module]
    folder = WORK / module
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    for name in ["musicgen_cog", "tests", *ALSO_COPY]:
        (folder / name).symlink_to(ROOT / name)
    settings = {
        "source_paths": ["musicgen_cog"],
        "only_mutate": [source],
        "also_copy": ALSO_COPY,
        "pytest_add_cli_args_test_selection": tests,
        # the fast tests; a test that hangs ends at once (tests/hang_guard.py)
        "pytest_add_cli_args": ["-m", "not slow", "-p", "no:cacheprovider", "-p", "tests.hang_guard"],
    }
    mutmut = "\n[tool.mutmut]\n" + "".join(f"{key} = {json.dumps(value)}\n" for key, value in settings.items())
    (folder / "pyproject.toml").write_text((ROOT / "pyproject.toml").read_text() + mutmut)
    # the tests' tiny random weights, built once in the tree's own cache rather than per module
    (ROOT / ".cache").mkdir(exist_ok=True)
    (folder / "mutants").mkdir()
    (folder / "mutants" / ".cache").symlink_to(ROOT / ".cache")
    return folder


def mutmut(folder: Path, *args: str, log: Path | None = None) -> str:
    command = [str(Path(sys.executable).with_name("mutmut")), *args]
    # mutmut forks each mutant from the process that ran the tests once (imports, models and kernels
    # warm); a child forked after OpenMP's threads started would hang, so torch runs on one thread
    environment = {**os.environ, "OMP_NUM_THREADS": "1"}
    if log is None:
        return subprocess.run(command, cwd=folder, env=environment, capture_output=True, text=True, check=True).stdout
    with log.open("w") as out:
        subprocess.run(command, cwd=folder, env=environment, stdout=out, stderr=subprocess.STDOUT, check=True)
    return ""


def run(module: str) -> Outcome:
    """All of `module`'s mutants against its own tests, one child per core (each runs torch on one thread)."""
    folder = configure(module)
    start = time.monotonic()
    mutmut(folder, "run", "--max-children", str(os.cpu_count() or 1), log=folder / "mutmut.log")
    seconds = time.monotonic() - start
    mutmut(folder, "export-cicd-stats")
    counts = json.loads((folder / "mutants" / "mutmut-cicd-stats.json").read_text())
    survivors = [line.strip() for line in mutmut(folder, "results").splitlines() if ": " in line]
    return Outcome(module, counts, seconds, survivors)


NOT_EQUIVALENT = "Left, not equivalent"


def explained(module: str, page: str | None = None) -> str:
    """The section of docs/mutants.md (or of `page`) on `module`'s survivors: from its heading (the
    source's path under musicgen_cog/, in backticks) to the next heading."""
    heading = "### `" + MODULES[module][0].removeprefix("musicgen_cog/") + "`"
    text = page if page is not None else EXPLAINED.read_text() if EXPLAINED.is_file() else ""
    section = text.partition(heading)[2].split("\n#", 1)[0] if heading in text else ""
    return section.split(NOT_EQUIVALENT, 1)[0]  # what is listed as left is not explained away


def unexplained(module: str, survivors: list[str], page: str | None = None) -> list[str]:
    """The survivors (not timeouts: those were caught, slowly) that docs/mutants.md (or `page`) does
    not name, each as `make mutants` prints it less the module's path, in backticks, in the module's
    section."""
    section = explained(module, page)
    return [
        s for s in survivors if not s.endswith(": timeout") and f"`{s.split(':')[0].rpartition('.')[2]}`" not in section
    ]


def main(names: list[str]) -> int:
    unknown = sorted(set(names) - set(MODULES))
    if unknown:
        print(f"unknown modules {unknown}; known: {' '.join(MODULES)}")
        return 2
    failed, start = False, time.monotonic()
    for name in names or list(MODULES):
        outcome = run(name)
        print(outcome.line(), flush=True)
        missing = unexplained(name, outcome.survivors)
        for survivor in outcome.survivors:
            print(f"    {survivor}{'  (not in docs/mutants.md)' if survivor in missing else ''}")
        failed |= outcome.share < THRESHOLD or bool(missing)
    print(f"all in {time.monotonic() - start:.0f} s")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
