"""`cog predict` for people without Docker: the same predictor, schema checks and output file.

    python -m musicgen_cog.cli -i prompt="lofi beat" -i duration=8 [-i input_audio=@song.mp3] [-o out.wav]

Inputs are checked against predict.py's own `Input(...)` declarations by cog's inspector
(types, ge/le, choices), then by the predictor's checks, exactly as the server does.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path

from . import environment


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
    parser.add_argument("-i", "--input", action="append", default=[], metavar="NAME=VALUE",
                        help="an input of the hosted API; repeat for several")
    parser.add_argument("-o", "--output", type=Path, help="where to write the audio (default: output.<format>)")
    args = parser.parse_args(argv)

    environment.configure()
    sys.path.insert(0, str(environment.REPO_ROOT))
    from cog import _inspector  # cog's own reading of predict.py's Input declarations

    import predict
    from .checkpoints import CheckpointError
    from .inputs import InputError

    info = _inspector.create_predictor("predict", "Predictor")
    values = parse_inputs(args.input)
    unknown = sorted(set(values) - set(info.inputs))
    if unknown:
        raise SystemExit(f"error: unknown input(s) {', '.join(unknown)}; known: {', '.join(info.inputs)}")
    try:
        kwargs = _inspector.check_input(info.inputs, values)
    except ValueError as exc:
        name = str(exc).split(":")[0].split()[0]
        expected = f" ({name} expects {info.inputs[name].type.primitive.name.lower()})" if name in info.inputs else ""
        raise SystemExit(f"error: {exc}{expected}") from None
    predictor = predict.Predictor()
    try:
        predictor.setup(weights=os.environ.get("COG_WEIGHTS"))
        produced = Path(predictor.predict(**kwargs))
    except (InputError, CheckpointError, FileNotFoundError) as exc:
        raise SystemExit(f"error: {exc}") from None
    destination = args.output or Path(f"output{produced.suffix}")
    destination.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(produced, destination)
    print(destination)
    return 0


if __name__ == "__main__":
    sys.exit(main())
