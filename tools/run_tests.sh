#!/usr/bin/env bash
# Sets up the environment (incl. Slurm for the cluster tests) and runs the test suite.
#
#   bash tools/run_tests.sh                 # the default suite (everything but @slow)
#   bash tools/run_tests.sh -m slow         # only the long end-to-end runs
#   bash tools/run_tests.sh -m "not slurm"  # without the local Slurm cluster (no root needed)
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
bash tools/setup_env.sh --with-slurm
if [ "$#" -eq 0 ]; then
  set -- -m "not slow"
fi
exec .venv/bin/python -m pytest -p no:cacheprovider "$@"
