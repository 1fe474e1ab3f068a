#!/usr/bin/env bash
# etagent's two set-up commands on a fresh machine:
#   ./dev.sh demo   install everything (first run only), then run the main job on the embedded defaults
#   ./dev.sh test   install everything (first run only), then run the linter and the test suite
# Anything after the command is passed on (./dev.sh test -k rollout, ./dev.sh demo --run-dir runs/x).
set -euo pipefail
cd "$(dirname "$0")"
cmd="${1:-}"; shift || true
[ "$cmd" = test ] && export ETAGENT_WITH_BROWSER=1
bash scripts/bootstrap.sh
case "$cmd" in
  demo) exec .venv/bin/etagent demo "$@" ;;
  test)
    .venv/bin/ruff check src tests benchmarks examples scripts
    .venv/bin/ruff format --check src tests benchmarks examples scripts
    exec .venv/bin/python -m pytest "$@" ;;
  *) echo "usage: ./dev.sh demo|test [args...]" >&2; exit 2 ;;
esac
