"""The layering docs/contributing.md describes: imports go one way, and checking a request needs no ML library.

commands -> api -> model -> audio, weights -> errors, environment, files
(a folder may also skip layers downwards: api uses audio and weights directly)
"""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT

PACKAGE = ROOT / "musicgen_cog"
# what each folder may import from the package, besides itself and the shared top-level modules
ALLOWED = {
    "api": {"model", "audio", "weights"},
    "model": {"audio", "weights"},
    "audio": set(),
    "weights": set(),
    "serving": set(),
    "commands": {"api", "model", "audio", "weights", "serving"},
}
SHARED = {"errors", "environment", "files"}
ML_LIBRARIES = {"torch", "torchaudio", "transformers", "audiocraft", "numpy", "av", "demucs", "xformers"}


def package_imports(path: Path) -> set[str]:
    """The first part below `musicgen_cog` of everything `path` imports from the package."""
    tree = ast.parse(path.read_text())
    parts = path.relative_to(ROOT).with_suffix("").parts  # ("musicgen_cog", folder, module)
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against the module's own package
                base = list(parts[: len(parts) - node.level])
                target = [*base, *(node.module or "").split(".")] if node.module else base
                names = [target] if node.module else [[*base, alias.name] for alias in node.names]
            elif node.module == "musicgen_cog":  # `from musicgen_cog import api`
                names = [["musicgen_cog", alias.name] for alias in node.names]
            else:
                names = [(node.module or "").split(".")]
            found |= {name[1] for name in names if name[0] == "musicgen_cog" and len(name) > 1}
        elif isinstance(node, ast.Import):
            found |= {a.name.split(".")[1] for a in node.names if a.name.startswith("musicgen_cog.")}
    return found


@pytest.mark.parametrize("folder", sorted(ALLOWED))
def test_each_folder_imports_only_the_layers_below_it(folder):
    for module in sorted((PACKAGE / folder).glob("*.py")):
        reached = package_imports(module) - {folder} - SHARED
        assert reached <= ALLOWED[folder], f"{module.relative_to(ROOT)} imports {sorted(reached - ALLOWED[folder])}"


def test_the_shared_modules_import_nothing_of_the_package():
    for name in SHARED:
        assert package_imports(PACKAGE / f"{name}.py") <= {name}, name


def test_input_checks_and_input_error_import_no_ml_library():
    code = "import sys; import musicgen_cog.api.inputs, musicgen_cog.errors; print(sorted(sys.modules))"
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    loaded = {name.split(".")[0] for name in ast.literal_eval(done.stdout)}
    assert loaded & ML_LIBRARIES == set()


# --- the playground: a client of the HTTP API, beside the server and never part of it ---------------

PLAYGROUND = ROOT / "playground"


def top_level_imports(path: Path) -> set[str]:
    """The top-level names of everything `path` imports absolutely (`a` for `import a.b`, `from a.b import c`)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and not node.level and node.module:
            found.add(node.module.split(".")[0])
        elif isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
    return found


def test_the_playground_imports_nothing_of_the_server():
    modules = sorted(PLAYGROUND.rglob("*.py"))
    assert modules
    for module in modules:
        assert top_level_imports(module) & {"musicgen_cog", "predict"} == set(), module.relative_to(ROOT)


def test_nothing_the_server_runs_imports_the_playground():
    for module in [ROOT / "predict.py", *sorted(PACKAGE.rglob("*.py"))]:
        assert "playground" not in top_level_imports(module), module.relative_to(ROOT)


def test_the_playground_loads_no_ml_library():
    code = "import sys; import playground.__main__; print(sorted(sys.modules))"
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    loaded = {name.split(".")[0] for name in ast.literal_eval(done.stdout)}
    assert loaded & (ML_LIBRARIES | {"musicgen_cog", "predict"}) == set()


def requirement_names(path: Path) -> set[str]:
    lines = [line.split("#")[0].strip() for line in path.read_text().splitlines()]
    return {line.split("==")[0].lower().replace("_", "-") for line in lines if line}


def test_the_cog_image_installs_none_of_the_playgrounds_own_packages():
    cog_yaml = (ROOT / "cog.yaml").read_text()
    assert "python_requirements: requirements.txt\n" in cog_yaml and "requirements-playground" not in cog_yaml
    own = requirement_names(ROOT / "requirements-playground.txt") - requirement_names(ROOT / "requirements.txt")
    assert {"starlette", "uvicorn"} <= own  # its web framework and server are not in the image's lock
