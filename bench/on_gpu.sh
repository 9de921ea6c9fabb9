#!/usr/bin/env bash
# Everything a lent GPU should measure, in one device call (the `device` tool's `run`, carrying
# .gpu/) of at most 8 minutes, the install included; a second call, if time is left, compiles.
# Prepare .gpu/ here first, where pip reaches a registry:
#   echo /.gpu/ >> .git/info/exclude && bash ../shared/gpu/prepare.sh .gpu
#   python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 -d .gpu/whl \
#     pytest pluggy iniconfig packaging          # pytest is not among prepare.sh's wheels
# Then, on the device:  bash bench/on_gpu.sh          (all: tests and benches, ~8 min)
#                       bash bench/on_gpu.sh compile  (the compiled step, ~7 min)
# Each part runs under a limit cut to what the call has left, in order of importance; a part
# that no longer fits says SKIPPED. Everything goes to stdout and to $OUT/on_gpu-<part>.log when
# $OUT is set: paste it into docs/benchmarks.md with the card's name.
set -uo pipefail
part="${1:-all}"
budget="${BUDGET:-470}"  # seconds for this script: a device call allows 600, the machine's start takes some
[ -n "${OUT:-}" ] && exec > >(tee "$OUT/on_gpu-$part.log") 2>&1
started=$SECONDS
status=0
source .gpu/enter.sh || exit 1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
run() {  # run LIMIT COMMAND...: at most LIMIT seconds, or what the budget has left
  local limit=$1 left=$((budget - (SECONDS - started)))
  shift
  ((left < limit)) && limit=$left
  if ((limit < 20)); then echo "SKIPPED (no time left): $*"; return; fi
  echo "== $* (limit ${limit} s, at $((SECONDS - started)) s)"
  timeout "$limit" "$@" || { echo "FAILED ($?): $*"; status=1; }
}
case "$part" in
  all)
    if python3 -c "import pytest" 2>/dev/null; then  # the GPU tests, and the attention kernels on the device
      run 120 python3 -m pytest -q -p no:cacheprovider tests/test_gpu.py tests/model/test_attention.py
    else
      echo "pytest is not installed here (see the top of this script): GPU tests skipped"
    fi
    run 100 python3 -m bench.proof full                 # setup's proof on this card (writes the full-size weights once)
    run 120 python3 -m bench.steps 8 30                 # B = 1, 4, 8, 16 against the floor; attention alone
    run 50 python3 -m bench.interference 8 4            # the step beside MBD, melody conditioning, heavy kernels
    run 100 python3 -m bench.first_request 8            # boot, first request vs warm, memory by parts at 8 slots
    run 50 python3 -m bench.concurrency 8 ;;            # throughput at N = 1, 4, 8, 16
  compile)
    run 300 env MUSICGEN_COMPILE=default python3 -m bench.steps 8
    run 150 env MUSICGEN_ATTENTION=sdpa python3 -m bench.steps 8 ;;
  *) echo "usage: bash bench/on_gpu.sh [all|compile]"; exit 2 ;;
esac
echo "done in $((SECONDS - started)) s"
exit $status
