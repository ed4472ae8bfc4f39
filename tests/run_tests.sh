#!/usr/bin/env bash
# Runs the linter, the formatter's check and the whole test suite (what CI runs), setting up .venv/
# first if needed. Extra arguments go to pytest, e.g.
# `bash tests/run_tests.sh -k checkpoints`.
set -euo pipefail
repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$repo_root/launch/env.sh"
unset PYTHONDONTWRITEBYTECODE  # Why: launch/env.sh, on bytecode.
cd "$repo_root"
"$repo_root/.venv/bin/ruff" check .
"$repo_root/.venv/bin/pyink" --check --quiet .
exec "$repo_root/.venv/bin/python" -m pytest tests "$@"
