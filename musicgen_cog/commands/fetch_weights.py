"""`make weights`: fetch every real asset into a weights folder, pinned by its lock, verified, resumable.

python -m musicgen_cog.commands.fetch_weights WEIGHTS_DIR [--endpoint URL]
    [--htdemucs-url URL --htdemucs-sha256 HEX]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .. import environment
from ..weights import assets
from ..weights.fetch import fetch_all


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("weights_dir", type=Path)
    parser.add_argument("--endpoint", help="Hugging Face hub endpoint (default: $HF_ENDPOINT or the public hub)")
    parser.add_argument("--htdemucs-url", default=assets.HTDEMUCS.url)
    parser.add_argument(
        "--htdemucs-sha256",
        default=assets.HTDEMUCS.sha256_prefix,
        help="expected sha256 (or a prefix of it) of the htdemucs file",
    )
    args = parser.parse_args(argv)
    root = environment.configure(args.weights_dir, offline=False)
    root.mkdir(parents=True, exist_ok=True)
    try:
        fetch_all(root, args.endpoint, args.htdemucs_url, args.htdemucs_sha256)
    except Exception as exc:  # a command-line tool: one clear line and a non-zero exit, for any failure
        print(f"error: fetching weights into {root} failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    print(f"all assets present and verified in {root}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
