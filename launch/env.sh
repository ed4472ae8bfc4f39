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
  echo "[env] installing pinned dependencies into $venv (first run: under a minute)"
  # uv installs the same pins as pip, in parallel (10 s here, against pip's 2.5
  # minutes). pip stays in the environment for the user's own installs.
  uv_pin="$(grep -i '^uv==' "$repo_root/constraints.txt")"
  "$venv/bin/python" -m pip install --quiet "$uv_pin"
  "$venv/bin/uv" pip install --quiet --python "$venv/bin/python" \
    -c "$repo_root/constraints.txt" -e "$repo_root[test]"
  # On bytecode: uv leaves it to Python, which writes it as each module is
  # first imported. Importing the heavy packages here, two processes at once,
  # writes it for the third of the environment's 17,000 files that the jobs
  # and the tests import (compiling all 17,000 took 45 s); otherwise the
  # first processes to start, such as the test workers, would each compile
  # them at the same time (a minute of CPU). Where PYTHONDONTWRITEBYTECODE is
  # set, nothing would write it and every process would parse Beam, JAX and
  # TensorFlow anew (the tests take half as long again), so this and the
  # scripts that run the project (tests/run_tests.sh, launch/demo_local.sh)
  # unset it.
  echo "[env] compiling the bytecode of Beam, JAX, numba, scikit-learn, TensorFlow and pytest"
  env -u PYTHONDONTWRITEBYTECODE "$venv/bin/python" -c "import tensorflow" 2>/dev/null &
  tensorflow_import=$!
  env -u PYTHONDONTWRITEBYTECODE "$venv/bin/python" \
    -c "import apache_beam, haiku, jax, numba, pytest, sklearn.model_selection, sklearn.svm, xdist"
  wait "$tensorflow_import"
  rm -f "$venv"/.installed-*
  touch "$stamp"
fi
