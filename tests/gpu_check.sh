#!/usr/bin/env bash
# The GPU check (`make gpu-check`): on a machine with a CUDA GPU, a CUDA build of torch (2.11 or
# newer), nvcc, pytest and hypothesis, and no network, it
#   1. env        reports the GPU, torch, nvcc, cmake and compute-sanitizer (stops if no GPU);
#   2. build      builds fastcl._C with its CUDA kernels from this working tree, in place, with
#                 no download (setup.py build_ext --inplace), and checks that the ops run on CUDA;
#   3. pytest     runs tests/test_cuda_ops.py (every op through the torch glue against
#                 fastcl.ops.reference; FASTCL_REQUIRE_CUDA=1 turns a skip into a failure);
#   4. kernels    builds the CTest CUDA kernel test (csrc/tests/test_cuda_kernels.cu, no torch)
#                 with CMake (nvcc directly if CMake cannot configure) and runs it;
#   5. bench      `fastcl bench ops --quick --device cuda` (validates every impl, then times);
#   6. memcheck   compute-sanitizer --tool memcheck on the kernel test, then on
#                 tests/test_cuda_ops.py, in the time that is left.
# Every log goes under $OUT (default ./gpu-check-out): summary.txt, env.log, build.log,
# pytest.log, kernels.log, bench.log, bench.json, memcheck.log (8 files). The whole run keeps
# to GPU_CHECK_BUDGET_S seconds (default 450): each step's timeout is cut to the time left.
# Exit status: 0 when every step that ran passed, 1 otherwise (summary.txt says which).
#
#   bash tests/gpu_check.sh --dry-run    prints each step's command and runs nothing
#
# Variables: PYTHON (python3), OUT, FASTCL_CUDA_ARCH (9.0: H100 / H200), JOBS (nproc),
# GPU_CHECK_BUDGET_S (450), GPU_CHECK_STEPS (a comma-separated subset of the step names, to rerun
# some: e.g. GPU_CHECK_STEPS=bench after a build).
set -uo pipefail
cd "$(dirname "$0")/.."

DRY=0
case "${1:-}" in
  --dry-run) DRY=1 ;;
  "") ;;
  *) echo "usage: $0 [--dry-run]" >&2; exit 2 ;;
esac

PY="${PYTHON:-python3}"
OUT="${OUT:-$PWD/gpu-check-out}"
ARCH="${FASTCL_CUDA_ARCH:-9.0}"
SM="${ARCH//./}"
JOBS="${JOBS:-$(nproc 2>/dev/null || echo 4)}"
BUDGET="${GPU_CHECK_BUDGET_S:-450}"
BUILD="build-gpu-check"
STEPS=",${GPU_CHECK_STEPS:-env,build,pytest,kernels,bench,memcheck},"
START=$(date +%s)
FAILED=0

# torch finds the toolkit through CUDA_HOME, else from where `nvcc` is: a wrapper script on the
# PATH (as on some images) hides the toolkit's headers, so name the usual place when it exists.
if [[ -z "${CUDA_HOME:-}" && -f /usr/local/cuda/include/cuda_runtime.h ]]; then
  export CUDA_HOME=/usr/local/cuda
fi

mkdir -p "$OUT"
SUMMARY="$OUT/summary.txt"
: > "$SUMMARY"

say() { echo "$*" | tee -a "$SUMMARY"; }

# step NAME LOG MAX_SECONDS COMMAND: runs COMMAND (a bash string) with its output appended to
# $OUT/LOG, under a timeout of MAX_SECONDS or the time left, whichever is less.
step() {
  local name=$1 log=$OUT/$2 max=$3 cmd=$4
  if [[ $STEPS != *",$name,"* ]]; then
    return 0
  fi
  if [[ $DRY == 1 ]]; then
    printf '%-9s (<= %ss, log %s)\n    %s\n' "$name" "$max" "$2" "$cmd"
    return 0
  fi
  local left=$((BUDGET - ($(date +%s) - START)))
  if ((left < 10)); then
    say "$name: NOT RUN (the ${BUDGET}s budget is spent)"
    FAILED=1
    return 1
  fi
  local limit=$((max < left ? max : left))
  echo "### $name: $cmd" >> "$log"
  local t0=$(date +%s) rc=0
  timeout --kill-after=10 "$limit" bash -c "$cmd" >> "$log" 2>&1 || rc=$?
  local dt=$(($(date +%s) - t0))
  if ((rc == 0)); then
    say "$name: ok (${dt}s)"
  elif ((rc == 124 || rc == 137)); then
    say "$name: TIMED OUT after ${limit}s (log $2)"
    FAILED=1
  else
    say "$name: FAILED, exit $rc (${dt}s; log $2)"
    FAILED=1
  fi
  return $rc
}

TORCH_PREFIX="\$($PY -c 'import torch; print(torch.utils.cmake_prefix_path)')"
HALF_FLAGS="-D__CUDA_NO_HALF_OPERATORS__ -D__CUDA_NO_HALF_CONVERSIONS__ -D__CUDA_NO_BFLOAT16_CONVERSIONS__ -D__CUDA_NO_HALF2_OPERATORS__ --expt-relaxed-constexpr"
NVCC_TEST="nvcc -std=c++17 -O2 -arch=sm_$SM $HALF_FLAGS -Icsrc csrc/tests/test_cuda_kernels.cu csrc/cuda/list_ops.cu csrc/cuda/mlp_ops.cu csrc/cuda/memory_ops.cu -o $BUILD/fastcl_test_cuda"
CMAKE_TEST="TORCH_CUDA_ARCH_LIST=$ARCH cmake -S . -B $BUILD -DCMAKE_BUILD_TYPE=Release -DCMAKE_CUDA_ARCHITECTURES=$SM -DCMAKE_PREFIX_PATH=\"$TORCH_PREFIX\" -DPython3_EXECUTABLE=\"\$(command -v $PY)\"${CUDA_HOME:+ -DCUDA_TOOLKIT_ROOT_DIR=$CUDA_HOME -DCMAKE_CUDA_COMPILER=$CUDA_HOME/bin/nvcc} && cmake --build $BUILD --target fastcl_test_cuda -j $JOBS"
SANITIZE="compute-sanitizer --tool memcheck --error-exitcode 99"

if [[ $DRY == 1 ]]; then
  echo "gpu-check dry run: PYTHON=$PY OUT=$OUT FASTCL_CUDA_ARCH=$ARCH JOBS=$JOBS CUDA_HOME=${CUDA_HOME:-} budget ${BUDGET}s"
fi

ENV_PY="import sys, torch; print('python', sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.version.cuda); \
assert torch.version.cuda, 'torch is a CPU build: the GPU check needs a CUDA build of torch'; \
assert torch.cuda.is_available(), 'torch sees no CUDA device'; print(torch.cuda.get_device_name(0), torch.cuda.get_device_capability(0))"
step env env.log 60 "echo CUDA_HOME=\${CUDA_HOME:-unset}; nvidia-smi; nvcc --version; cmake --version | head -1; compute-sanitizer --version | head -2; $PY -c \"$ENV_PY\"" \
  || { say "stopping: no usable GPU (see env.log)"; exit 1; }

step build build.log 300 "rm -f fastcl/_C*.so && FASTCL_FORCE_CUDA=1 TORCH_CUDA_ARCH_LIST=$ARCH MAX_JOBS=$JOBS $PY setup.py build_ext --inplace && FASTCL_REQUIRE_EXT=1 PYTHONPATH=. $PY -m fastcl.cli info && FASTCL_REQUIRE_EXT=1 PYTHONPATH=. $PY -c 'from fastcl import ops; assert ops.backend() == \"cuda\", ops.backend()'" \
  || { say "stopping: the CUDA extension did not build or load (see build.log)"; exit 1; }

step pytest pytest.log 240 "FASTCL_REQUIRE_EXT=1 FASTCL_REQUIRE_CUDA=1 PYTHONPATH=. $PY -m pytest -q -rfEs -p no:cacheprovider tests/test_cuda_ops.py"

step kernels kernels.log 180 "mkdir -p $BUILD && { ($CMAKE_TEST) || { echo '### CMake could not build the test: nvcc directly'; $NVCC_TEST; }; } && $BUILD/fastcl_test_cuda"

step bench bench.log 150 "FASTCL_REQUIRE_EXT=1 PYTHONPATH=. $PY -m fastcl.cli bench ops --quick --device cuda --no-progress --json $OUT/bench.json"

step memcheck memcheck.log 60 "$SANITIZE $BUILD/fastcl_test_cuda"
step memcheck memcheck.log 240 "FASTCL_REQUIRE_EXT=1 FASTCL_REQUIRE_CUDA=1 PYTHONPATH=. $SANITIZE --target-processes all $PY -m pytest -x -q -p no:cacheprovider tests/test_cuda_ops.py"

if [[ $DRY == 1 ]]; then
  exit 0
fi
say "total $(($(date +%s) - START))s; logs in $OUT"
exit $FAILED
