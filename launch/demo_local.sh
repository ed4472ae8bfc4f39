#!/usr/bin/env bash
# Quick start: sets up .venv/ if needed, then runs the whole system on an
# embedded default (synthetic UCF101, random checkpoint), offline, on this machine.
set -euo pipefail
repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$repo_root/launch/env.sh"
unset PYTHONDONTWRITEBYTECODE  # Why: launch/env.sh, on bytecode.
cd "$repo_root"
exec "$repo_root/.venv/bin/python" -m launch.demo "$@"
