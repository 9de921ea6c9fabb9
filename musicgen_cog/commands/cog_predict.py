"""`make predict`: `cog predict` for people without Docker: the same predictor, checks and output file.

    python -m musicgen_cog.commands.cog_predict -i prompt="lofi beat" -i duration=8 \
        [-i input_audio=@song.mp3] [-o out.wav]

Inputs are checked against predict.py's own `Input(...)` declarations by cog's inspector
(types, ge/le, choices), then by the predictor's checks, exactly as the server does.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import os
import shutil
import sys
from pathlib import Path

from .. import environment


def parse_inputs(pairs: list[str]) -> dict[str, str | Path]:
    """`name=value` pairs; `name=@file` names a file, as with `cog predict`."""
    values: dict[str, str | Path] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise SystemExit(f"error: input {pair!r} is not of the form name=value")
        values[name] = Path(value[1:]) if value.startswith("@") else value
    return values


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "-i", "--input", action="append", default=[], metavar="NAME=VALUE",
        help="an input of the hosted API; repeat for several",
    )  # fmt: skip
    parser.add_argument("-o", "--output", type=Path, help="where to write the audio (default: output.<format>)")
    args = parser.parse_args(argv)

    environment.configure()
    # one prediction: one slot of the KV cache; set before predict.py is first imported (by the inspector)
    from ..api.concurrency import CONCURRENCY_ENV

    os.environ[CONCURRENCY_ENV] = "1"
    from ..api.cog_schema import InputCheckError, check_inputs, read_predictor, type_name
    from ..errors import InputError
    from ..model.device import NoGpu
    from ..model.memory import NotEnoughMemory
    from ..weights.checkpoints import CheckpointError

    # the predictor the server runs: COG_PREDICT_TYPE_STUB, as coglet reads it (the tests put stubs there)
    path, _, name = os.environ.get("COG_PREDICT_TYPE_STUB", "predict.py:Predictor").partition(":")
    module = path.removesuffix(".py").replace("/", ".")
    info = read_predictor(module, name)
    values = parse_inputs(args.input)
    unknown = sorted(set(values) - set(info.inputs))
    if unknown:
        raise SystemExit(f"error: unknown input(s) {', '.join(unknown)}; known: {', '.join(info.inputs)}")
    try:
        kwargs = check_inputs(info, values)
    except InputCheckError as exc:
        raise SystemExit(f"error: {exc} ({exc.input_name} expects {type_name(info, exc.input_name)})") from None
    predictor = getattr(importlib.import_module(module), name)()
    try:
        predictor.setup(weights=os.environ.get("COG_WEIGHTS"))
        produced = Path(asyncio.run(predictor.predict(**kwargs)))
    except (InputError, CheckpointError, FileNotFoundError, NoGpu, NotEnoughMemory) as exc:
        raise SystemExit(f"error: {exc}") from None
    destination = args.output or Path(f"output{produced.suffix}")
    destination.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(produced, destination)
    print(destination)
    return 0


if __name__ == "__main__":
    sys.exit(main())
