#!/usr/bin/env bash
# Everything issue 11 asks a GPU to show, on a bare CUDA machine (the `device` tool's `run`,
# carrying .gpu/). Prepare .gpu/ here first, where pip reaches a registry:
#   bash ../shared/gpu/prepare.sh .gpu
#   python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 -d .gpu/whl \
#     pytest pluggy iniconfig packaging          # pytest is not among prepare.sh's wheels
# Then `bash bench/on_gpu.sh` (two device calls' worth: run `quick` first, then `compile`):
#   quick    the GPU tests, bench.steps at 8 and 30 s, bench.decode_speed 8   (~6 min on an H100)
#   compile  bench.steps 8 and bench.first_request with MUSICGEN_COMPILE=default (compiles twice)
#   boot     bench.first_request without compile (writes 6 GB of full-size weights once)
# Output goes to stdout and to $OUT/on_gpu-<part>.log when $OUT is set. Copy each figure, with the
# card's name, into docs/benchmarks.md.
set -uo pipefail
part="${1:-quick}"
[ -n "${OUT:-}" ] && exec > >(tee "$OUT/on_gpu-$part.log") 2>&1
source .gpu/enter.sh || exit 1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
status=0
run() { timeout "$1" "${@:2}" || { echo "FAILED ($?): ${*:2}"; status=1; }; }
case "$part" in
  quick)
    if python3 -c "import pytest" 2>/dev/null; then
      run 240 python3 -m pytest -q -p no:cacheprovider -m gpu tests/test_gpu.py
    else
      echo "pytest is not installed here (see the top of this script): GPU tests skipped"
    fi
    run 200 python3 -m bench.steps 8 30
    run 120 python3 -m bench.decode_speed 8 ;;
  compile)
    run 360 env MUSICGEN_COMPILE=default python3 -m bench.steps 8
    run 220 env MUSICGEN_COMPILE=default python3 -m bench.first_request ;;
  boot)
    run 500 python3 -m bench.first_request ;;
  *) echo "usage: bash bench/on_gpu.sh [quick|compile|boot]"; exit 2 ;;
esac
exit $status
