"""The manual stays true to the code: README.md and docs/ link only to what exists, and every name
they give (make target, setting, module) is the code's, as every setting the code reads is theirs.

The pages are read with markdown-it-py (in requirements.txt's lock, through rich), so that links in
tables and code in fences are told apart from prose; anchors follow GitHub's heading slugs.
"""

from __future__ import annotations

import ast
import re
from collections import Counter
from functools import cache
from itertools import pairwise
from pathlib import Path

import pytest
from markdown_it import MarkdownIt
from markdown_it.token import Token

from tests.conftest import ROOT

PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "weights" / "README.md"]
# where the server's own code is: the settings it reads, the references to the manual it makes
CODE = [
    ROOT / "musicgen_cog",
    ROOT / "predict.py",
    ROOT / "playground",
    ROOT / "bench",
    ROOT / "Makefile",
    ROOT / "cog.yaml",
    ROOT / "deploy",
]
CODE_SUFFIXES = {".py", ".sh", ".yaml", ".yml", ".js", ".html", ""}  # "" is the Makefile
SETTING = re.compile(r"\b(?:MUSICGEN|COG)_[A-Z0-9_]*[A-Z0-9]\b")
# `make [VAR=value ...] target`, at the start of a command in a code span or a fenced block
MAKE_COMMAND = re.compile(r"(?:^|[\s;&|(])make\s+(?:[A-Z_]+=\S+\s+)*([a-z][\w-]*)")
# a file named by its path, whole: not the tail of a longer word or a placeholder like test_<module>.py
SOURCE_PATH = re.compile(r"(?<![\w./<>-])((?:[\w-]+/)*[\w-]+\.(?:py|sh))\b")
# where a bare or partial path may be rooted: `model/steps.py` is musicgen_cog's, `helpers.py` the tests'
PATH_ROOTS = [ROOT, ROOT / "musicgen_cog", ROOT / "tests"]
PYTHON_MODULE = re.compile(r"\bpython3?(?:\.\d+)? -m ([\w.]+)")
OUR_PACKAGES = {"musicgen_cog", "bench", "playground", "tests"}
# a reference from code or a comment to a page of the manual, with the anchor if it names one
PAGE_REFERENCE = re.compile(r"\b((?:docs/[\w-]+|weights/README|README)\.md)(?:#([\w-]+))?")
URL_SCHEME = re.compile(r"^[a-z][a-z0-9+.-]*:", re.IGNORECASE)
README_MAX_LINES = 150


def github_slug(heading: str) -> str:
    """The anchor GitHub gives a heading: lower case, punctuation dropped, each space a hyphen
    (as github-slugger does; repeats of one heading get -1, -2 ... added by `anchors`)."""
    return re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-")


@cache
def tokens(page: Path) -> list[Token]:
    """The page parsed as CommonMark with tables (GitHub's rendering of these pages)."""
    return MarkdownIt("commonmark").enable("table").parse(page.read_text())


def inline_children(page: Path) -> list[Token]:
    """Every token inside the page's paragraphs, headings and table cells: text, code spans, links."""
    return [child for token in tokens(page) if token.type == "inline" for child in token.children or []]


@cache
def anchors(page: Path) -> frozenset[str]:
    """The #anchors GitHub makes for the page's headings."""
    seen: Counter[str] = Counter()
    found = set()
    stream = tokens(page)
    for heading, inline in pairwise(stream):
        if heading.type != "heading_open":
            continue
        text = "".join(c.content for c in inline.children or [] if c.type in ("text", "code_inline"))
        slug = github_slug(text)
        found.add(f"{slug}-{seen[slug]}" if seen[slug] else slug)
        seen[slug] += 1
    return frozenset(found)


def links(page: Path) -> list[str]:
    """Every link and image target on the page."""
    targets = []
    for token in inline_children(page):
        target = token.attrGet("href") if token.type == "link_open" else token.attrGet("src")
        if token.type in ("link_open", "image") and isinstance(target, str):
            targets.append(target)
    return targets


def code_texts(page: Path) -> list[str]:
    """What the page sets as code: its code spans and its fenced or indented blocks."""
    blocks = [t.content for t in tokens(page) if t.type in ("fence", "code_block")]
    return blocks + [t.content for t in inline_children(page) if t.type == "code_inline"]


def broken_reference(path: str, anchor: str | None, base: Path) -> str | None:
    """Why `path#anchor`, relative to folder `base`, does not resolve; None when it does."""
    target = (base / path).resolve()
    if not target.is_relative_to(ROOT):
        return "points outside the repository"
    if not target.exists():
        return "no such file"
    if anchor and target.suffix == ".md" and anchor not in anchors(target):
        return f"no heading with anchor #{anchor} in {target.relative_to(ROOT)}"
    return None


def code_files() -> list[Path]:
    """The server's own files (package, predictor, playground, benches, Makefile, cog.yaml, deploy/)."""
    files = []
    for place in CODE:
        candidates = [place] if place.is_file() else sorted(p for p in place.rglob("*") if p.is_file())
        files += [p for p in candidates if p.suffix in CODE_SUFFIXES and "__pycache__" not in p.parts]
    return files


@cache
def settings_read_by_the_code() -> dict[str, list[str]]:
    """Every MUSICGEN_* and COG_* name the code uses as a setting, with the files that do. In Python
    a name counts only as a whole string (`os.environ.get("X")`, `X_ENV = "X"`), never inside a
    docstring or comment; elsewhere (Makefile, YAML, shell) anywhere outside a comment."""
    found: dict[str, list[str]] = {}
    for path in code_files():
        if path.suffix == ".py":
            strings = [n.value for n in ast.walk(ast.parse(path.read_text())) if isinstance(n, ast.Constant)]
            names = {s for s in strings if isinstance(s, str) and SETTING.fullmatch(s)}
        else:
            text = re.sub(r"(?m)(^|\s)#.*$", "", path.read_text())
            names = set(SETTING.findall(text))
        for name in names:
            found.setdefault(name, []).append(str(path.relative_to(ROOT)))
    return found


def settings_in_the_docs() -> dict[str, set[str]]:
    """Every MUSICGEN_* and COG_* name the pages give, with the pages that give it."""
    found: dict[str, set[str]] = {}
    for page in PAGES:
        for name in SETTING.findall(page.read_text()):
            found.setdefault(name, set()).add(str(page.relative_to(ROOT)))
    return found


def makefile_targets() -> set[str]:
    """The Makefile's rule names (not its variable assignments)."""
    return set(re.findall(r"(?m)^([A-Za-z0-9_.-]+):(?!=)", (ROOT / "Makefile").read_text()))


def page_id(page: Path) -> str:
    return str(page.relative_to(ROOT))


@pytest.mark.parametrize(
    "heading, anchor",
    [  # as GitHub makes them: lower case, punctuation dropped, each space a hyphen, none merged
        ("Shutdown: drain, then stop", "shutdown-drain-then-stop"),
        ("What coglet 0.23.1 cannot do, and why", "what-coglet-0231-cannot-do-and-why"),
        ("The batched step (python -m bench.steps 0.3, CPU)", "the-batched-step-python--m-benchsteps-03-cpu"),
        ("stage_memory's table", "stage_memorys-table"),
        ("Replicate & Kubernetes", "replicate--kubernetes"),
    ],
)
def test_a_heading_gets_githubs_anchor(heading, anchor):
    assert github_slug(heading) == anchor


def test_a_repeated_heading_gets_a_numbered_anchor(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("# Faults\n\n## Faults\n\n### Faults\n")
    assert anchors(page) == {"faults", "faults-1", "faults-2"}


@pytest.mark.parametrize("page", PAGES, ids=page_id)
def test_every_relative_link_and_anchor_resolves(page):
    broken = []
    for target in links(page):
        if URL_SCHEME.match(target):
            continue  # the web is not checked: no network in the tests
        path, _, anchor = target.partition("#")
        why = broken_reference(path, anchor, page.parent) if path else None
        if not path and anchor not in anchors(page):
            why = "no heading with that anchor on this page"
        if why:
            broken.append(f"{target}: {why}")
    assert not broken, f"{page_id(page)} links to what does not exist:\n" + "\n".join(broken)


def test_every_reference_from_the_code_to_the_manual_resolves():
    broken = []
    for path in [*code_files(), *sorted((ROOT / "tests").rglob("*.py"))]:
        for page, anchor in PAGE_REFERENCE.findall(path.read_text()):
            why = broken_reference(page, anchor or None, ROOT)
            if why:
                broken.append(f"{path.relative_to(ROOT)}: {page}{'#' + anchor if anchor else ''}: {why}")
    assert not broken, "\n".join(broken)


def test_every_page_of_the_manual_is_on_the_readme_map():
    readme = ROOT / "README.md"
    linked = {(ROOT / target.partition("#")[0]).resolve() for target in links(readme)}
    unlisted = [page_id(page) for page in PAGES if page != readme and page not in linked]
    assert not unlisted, f"README.md's map lacks {unlisted}"


def test_the_readme_stays_a_front_door():
    lines = len((ROOT / "README.md").read_text().splitlines())
    assert lines <= README_MAX_LINES, f"README.md has {lines} lines; the manual's detail belongs in docs/"


def test_the_readme_gives_the_two_commands_of_a_fresh_machine():
    named = {target for text in code_texts(ROOT / "README.md") for target in MAKE_COMMAND.findall(text)}
    assert {"demo", "test"} <= named, f"README.md's commands are {sorted(named)}"


@pytest.mark.parametrize("page", PAGES, ids=page_id)
def test_every_make_target_named_exists(page):
    named = {target for text in code_texts(page) for target in MAKE_COMMAND.findall(text)}
    unknown = named - makefile_targets()
    assert not unknown, f"{page_id(page)} names targets the Makefile lacks: {sorted(unknown)}"


@pytest.mark.parametrize("page", PAGES, ids=page_id)
def test_every_source_path_named_exists(page):
    text = page.read_text()
    missing = [
        name
        for name in sorted(set(SOURCE_PATH.findall(text)))
        if not any((root / name).is_file() for root in PATH_ROOTS)
    ]
    for module in sorted(set(PYTHON_MODULE.findall(text))):
        parts = module.split(".")
        as_file = ROOT.joinpath(*parts)
        if parts[0] in OUR_PACKAGES and not (as_file.with_suffix(".py").is_file() or as_file.is_dir()):
            missing.append(f"python -m {module}")
    assert not missing, f"{page_id(page)} names files that do not exist: {missing}"


def test_every_setting_the_docs_name_is_used_by_the_code():
    read = settings_read_by_the_code()
    unknown = {name: sorted(pages) for name, pages in settings_in_the_docs().items() if name not in read}
    assert not unknown, f"settings the docs name that no code reads (renamed or gone?): {unknown}"


def test_every_musicgen_setting_the_code_reads_is_documented():
    documented = settings_in_the_docs()
    undocumented = {
        name: files
        for name, files in settings_read_by_the_code().items()
        if name.startswith("MUSICGEN_") and name not in documented
    }
    assert not undocumented, f"settings the code reads that no page of the manual names: {undocumented}"
