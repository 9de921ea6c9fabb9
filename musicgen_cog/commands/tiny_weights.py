"""`make tiny-weights`: a complete weights folder of random weights in the real on-disk formats.

    python -m musicgen_cog.commands.tiny_weights WEIGHTS_DIR [--size tiny|small|full]

Random weights make noise, never music: they are for tests, smoke runs and benchmarks.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ..weights.random_weights import SIZES, write_weights_folder


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("weights_dir", type=Path)
    parser.add_argument("--size", choices=sorted(SIZES), default="tiny", help="language model size")
    args = parser.parse_args(argv)
    root = write_weights_folder(args.weights_dir, args.size)
    print(f"random {args.size} weights written to {root}")


if __name__ == "__main__":
    main()
