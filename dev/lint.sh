#!/usr/bin/env bash
# Checks formatting (black, isort; line length 100 from pyproject.toml) without changing files.
#
#   bash dev/lint.sh          # check
#   bash dev/lint.sh --fix    # reformat in place
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
PY=.venv/bin/python
[ -x "$PY" ] || { echo "run 'bash tools/setup_env.sh' first" >&2; exit 1; }
"$PY" -m pip install -q "black==26.10.1" "isort==9.0.2" 2>&1 | grep -v "^WARNING: Location" || true
PATHS=(paploss tests tools benchmarks experiments projects)
if [ "${1:-}" = "--fix" ]; then
  "$PY" -m isort -q "${PATHS[@]}"
  "$PY" -m black -q "${PATHS[@]}"
else
  "$PY" -m isort --check-only --diff -q "${PATHS[@]}"
  "$PY" -m black --check "${PATHS[@]}"
  echo "[lint] formatting ok"
fi
