#!/usr/bin/env bash
# Everything issue 11 asks a GPU to show, in one call on a bare CUDA machine (the `device` tool's
# `run`, carrying .gpu/ made here by `bash ../shared/gpu/prepare.sh .gpu`): about 8 minutes on an
# H100. Copy each figure, with the card's name, into docs/benchmarks.md.
#   bash bench/on_gpu.sh [quick]     (quick: the GPU tests and the 8 s step breakdown only)
set -uo pipefail
source .gpu/enter.sh || exit 1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
if python3 -c "import pytest" 2>/dev/null; then
  python3 -m pytest -q -p no:cacheprovider -m gpu tests/test_gpu.py
else
  echo "pytest is not installed here: GPU tests skipped"
fi
if [ "${1:-}" = quick ]; then
  python3 -m bench.steps 8
  exit 0
fi
python3 -m bench.steps 8 30
MUSICGEN_COMPILE=default python3 -m bench.steps 8
python3 -m bench.first_request
python3 -m bench.decode_speed 8
