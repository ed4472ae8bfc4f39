#!/usr/bin/env bash
# Creates (or refreshes) the project's virtual environment at .venv/ in the
# repository root, with the pinned dependencies and this package installed
# in editable mode. Idempotent: it reinstalls only when requirements.txt,
# constraints.txt or setup.py changed. Source it, or run it.
#   bash launch/env.sh            # set up
#   bash launch/env.sh --freeze   # rewrite constraints.txt from the current .venv
set -euo pipefail
repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$repo_root/.venv"
python_bin="${PYTHON:-python3}"

if [[ "${1:-}" == "--freeze" ]]; then
  "$venv/bin/pip" freeze --exclude-editable | grep -v -i -E '^(pip|setuptools|wheel)==' > "$repo_root/constraints.txt"
  echo "wrote $repo_root/constraints.txt"
  exit 0
fi

stamp="$venv/.installed-$(cat "$repo_root/requirements.txt" "$repo_root/constraints.txt" "$repo_root/setup.py" | sha256sum | cut -c1-16)"
if [[ ! -f "$stamp" ]]; then
  if [[ ! -x "$venv/bin/python" ]]; then
    echo "[env] creating $venv with $("$python_bin" --version)"
    "$python_bin" -m venv "$venv"
  fi
  echo "[env] installing pinned dependencies into $venv (first run: about a minute and a half)"
  # uv installs the same pins as pip, in parallel: 1.5 minutes instead of
  # 2.5 on 2 cores. Bytecode is compiled at install, as pip does: where
  # PYTHONDONTWRITEBYTECODE is set, nothing would cache it later, and every
  # process would parse Beam, JAX and TensorFlow anew (three times as slow).
  # pip stays in the environment for the user's own installs.
  uv_pin="$(grep -i '^uv==' "$repo_root/constraints.txt")"
  "$venv/bin/python" -m pip install --quiet "$uv_pin"
  "$venv/bin/uv" pip install --quiet --compile-bytecode --python "$venv/bin/python" \
    -c "$repo_root/constraints.txt" -e "$repo_root[test]"
  rm -f "$venv"/.installed-*
  touch "$stamp"
fi
