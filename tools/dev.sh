#!/usr/bin/env bash
# Set up a virtualenv in .venv (once) and run the demo or the tests.
#   bash tools/dev.sh demo   # convert a built-in sample dataset, load it, iterate as training would
#   bash tools/dev.sh test   # the test suite
#   bash tools/dev.sh lint   # ruff (lint and format check) and mypy, as CI runs them
# Any torch >= 2.2 already importable by $PYTHON is used, and the NumPy 1.x a torch 2.2 needs is
# kept (2.2 is pyproject.toml's torch floor: keep the two together; the venv sees system site-packages
# only if you create it yourself with --system-site-packages); otherwise torch==2.13.0 is
# installed (set TORCH_SPEC to choose another, e.g. TORCH_SPEC="torch==2.9.1").
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}
if [ ! -x "$VENV/bin/python" ]; then
  "$PYTHON" -m venv "$VENV"
fi
stamp="$VENV/.tensorstore_ds-installed"
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ] || [ tensorstore_ds/conversion/decode/_resample.c -nt "$stamp" ]; then
  if ! "$VENV/bin/python" -c "import torch, sys; sys.exit(tuple(map(int, torch.__version__.split('+')[0].split('.')[:2])) < (2, 2))" 2>/dev/null; then
    "$VENV/bin/pip" install --quiet "${TORCH_SPEC:-torch==2.13.0}"
  fi
  "$VENV/bin/pip" install --quiet -e ".[test]"
  touch "$stamp"
fi
cmd=${1:-}
shift || true
case "$cmd" in
  demo) exec "$VENV/bin/python" -m tensorstore_ds demo "$@" ;;
  test) exec "$VENV/bin/python" -m pytest -q "$@" ;;
  lint) "$VENV/bin/ruff" check . && "$VENV/bin/ruff" format --check . && exec "$VENV/bin/mypy" ;;
  *) echo "usage: bash tools/dev.sh demo|test|lint [args]" >&2; exit 2 ;;
esac
