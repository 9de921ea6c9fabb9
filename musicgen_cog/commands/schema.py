"""`make schema`: write `.cog/openapi_schema.json` from predict.py, as `cog build` does.

python -m musicgen_cog.commands.schema [OUT]   (default .cog/openapi_schema.json)
"""

from __future__ import annotations

import sys
from pathlib import Path

from .. import environment


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    environment.configure()  # predict.py is imported to read its inputs: no hub, no warnings
    from ..api.cog_schema import SCHEMA_PATH, write_schema

    print(f"wrote {write_schema(Path(args[0]) if args else SCHEMA_PATH)}")


if __name__ == "__main__":
    main()
