"""The request that reproduces a take, as `curl` and as Python (`requests`), the way Replicate shows client code.

It asks the Cog server itself (not the playground) with the take's inputs and the seed it used; a file
input is read from the file the user gave, under its own name, and sent inline as a data URI."""

from __future__ import annotations

import json
import shlex
from typing import Any

PYTHON = """import base64

import requests

inputs = {inputs}
{files}response = requests.post("{url}/predictions", json={{"input": inputs}}, timeout=3600)
response.raise_for_status()
prediction = response.json()
if prediction["status"] != "succeeded":
    raise SystemExit(prediction["error"])
output = prediction["output"]
if output.startswith("data:"):
    audio = base64.b64decode(output.split(",", 1)[1])
else:  # a server started with --upload-url answers with the file's URL
    audio = requests.get(output, timeout=600).content
with open("{out}", "wb") as file:
    file.write(audio)
print("wrote {out}")
"""
PYTHON_FILE = """with open({name!r}, "rb") as file:
    inputs[{field!r}] = "data:{mime};base64," + base64.b64encode(file.read()).decode()
"""
# coglet answers with JSON; the file is its `output`, a data URI
SAVE = (
    "python3 -c 'import base64, json, sys; p = json.load(sys.stdin); "
    'assert p["status"] == "succeeded", p["error"]; '
    'open(sys.argv[1], "wb").write(base64.b64decode(p["output"].split(",", 1)[1]))\' '
)


def _mime(data_uri: str) -> str:
    return data_uri[len("data:") :].split(";", 1)[0].split(",", 1)[0] or "application/octet-stream"


def request_code(url: str, inputs: dict[str, Any], file_names: dict[str, str], seed: int | None) -> dict[str, str]:
    """`{"curl": ..., "python": ...}` for `inputs` with `seed` fixed (when known), writing the take's file."""
    plain = {name: value for name, value in inputs.items() if name not in file_names}
    if seed is not None:
        plain["seed"] = seed
    out = f"musicgen-seed{seed}.{inputs.get('output_format', 'wav')}"
    files = {name: (file_names[name], _mime(str(inputs[name]))) for name in file_names if name in inputs}
    python = PYTHON.format(
        inputs=repr(plain),
        files="".join(PYTHON_FILE.format(name=n, field=f, mime=m) for f, (n, m) in files.items()),
        url=url,
        out=out,
    )
    return {"curl": _curl(url, plain, files, out), "python": python}


def _curl(url: str, plain: dict[str, Any], files: dict[str, tuple[str, str]], out: str) -> str:
    post = f"curl -s -X POST {shlex.quote(url + '/predictions')} -H 'Content-Type: application/json'"
    save = SAVE + shlex.quote(out)
    if not files:
        return f"{post} \\\n  -d {shlex.quote(json.dumps({'input': plain}))} \\\n  | {save}\n"
    # the request body is built on stdin: a file inline would overflow one command-line argument (128 KiB)
    text = json.dumps({"input": {**plain, **dict.fromkeys(files, "\x00")}})
    pieces = text.split(json.dumps("\0"))
    parts = [f"printf %s {shlex.quote(pieces[0] + chr(34))}"]
    for (name, mime), piece in zip(files.values(), pieces[1:], strict=True):
        parts += [f"printf %s {shlex.quote(f'data:{mime};base64,')}", f"base64 -w0 {shlex.quote(name)}"]
        parts.append(f"printf %s {shlex.quote(chr(34) + piece)}")
    return "{ " + "; ".join(parts) + "; } \\\n  | " + f"{post} -d @- \\\n  | {save}\n"
