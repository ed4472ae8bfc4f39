"""What the tests of the jobs' command lines check: user errors, `--help` and Ctrl-C."""

import contextlib
import functools
import io
import json
import os
import pathlib
import re
import runpy
import signal
import subprocess
import sys
import textwrap
import time
import warnings
from collections.abc import Sequence
from unittest import mock

import pytest

from pipelines import common

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
# Packages that take a second or more to import, which --help should not wait
# for. (scipy's core is not among them: numba, which the clip kernels need,
# loads it in a few milliseconds; scikit-learn is what loads the rest.)
HEAVY_MODULES = ("sklearn", "matplotlib", "jax", "tensorflow")


# The commands users type, as `python -m` takes them.
COMMANDS = (
    ("pipelines.ingest",),
    ("pipelines.embed",),
    ("pipelines.linear_eval",),
    ("launch.dataflow",),
    ("launch.dataflow", "embed"),
    ("launch.dataflow", "linear_eval"),
)


@functools.cache
def help_text(module: str, *command: str) -> str:
  """`python -m MODULE [COMMAND] --help`'s text, run as `python -m` runs it (runpy),
  in this process (`packages_imported_by_help` checks a fresh process's imports)."""
  text = io.StringIO()
  with (
      mock.patch.object(sys, "argv", [module, *command, "--help"]),
      contextlib.redirect_stdout(text),
      warnings.catch_warnings(),
      pytest.raises(SystemExit) as exited,
  ):
    # runpy warns that the module is imported already, as it is in a test run.
    warnings.simplefilter("ignore", RuntimeWarning)
    runpy.run_module(module, run_name="__main__", alter_sys=True)
  assert exited.value.code == 0, f"python -m {' '.join([module, *command])} --help failed"
  return text.getvalue()


def packages_imported_by_help(commands: Sequence[tuple[str, ...]]) -> set[str]:
  """The top-level packages imported by `python -m COMMAND --help` of each of `commands`,
  run one after another in one fresh process."""
  script = textwrap.dedent(f"""
      import contextlib, io, json, runpy, sys
      for module, *command in {list(commands)!r}:
        sys.argv = [module, *command, "--help"]
        with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):
          runpy.run_module(module, run_name="__main__", alter_sys=True)
      print(json.dumps(sorted({{name.split(".")[0] for name in sys.modules}})))
  """)
  result = subprocess.run(
      [sys.executable, "-c", script], cwd=REPO_ROOT, capture_output=True, text=True, check=True
  )
  return set(json.loads(result.stdout.splitlines()[-1]))


def undocumented_options(help_text: str) -> list[str]:
  """The options of a --help that lack help text, or say neither their default
  nor that they are required and are not boolean flags (which have no value)."""
  section = help_text.split("\noptions:\n", 1)[1].split("\n\n", 1)[0]
  undocumented = []
  for entry in re.split(r"\n(?=  -)", section):
    first_line, *more_lines = entry.strip().split("\n")
    flags, *first_words = re.split(r"\s{2,}", first_line, maxsplit=1)
    description = " ".join([*first_words, *(line.strip() for line in more_lines)])
    is_boolean = re.fullmatch(r"(-\w, )?--\w+", flags)
    # "(default: X)", or the help's own words where the default is None.
    shows_default = "default" in description or description.endswith("; required")
    said = re.sub(r"\(default: [^)]*\)$|; required$", "", description).strip()
    if not said or not (shows_default or is_boolean):
      undocumented.append(" ".join(entry.split()))
  return undocumented


def usage_error(main, prog: str, argv: list[str], capsys) -> str:
  """Runs `main` as its command line does (`common.run_main`); checks exit status 2,
  one line on stderr and nothing on stdout, and returns that line."""
  with pytest.raises(SystemExit) as stopped:
    common.run_main(main, prog, argv)
  assert stopped.value.code == common.USAGE_ERROR_STATUS
  stdout, stderr = capsys.readouterr()
  assert stdout == ""
  assert len(stderr.splitlines()) == 1, stderr
  assert stderr.startswith(f"{prog}: error: ")
  return stderr


def interrupt_at(monkeypatch, owner, name: str) -> None:
  """Makes a call of `owner.name` do what Ctrl-C does: SIGINT to this process."""

  def interrupted(*args, **kwargs):
    del args, kwargs
    os.kill(os.getpid(), signal.SIGINT)
    time.sleep(10)
    raise AssertionError("SIGINT did not stop the job")

  monkeypatch.setattr(owner, name, interrupted)


def interrupted_line(main, argv, capsys) -> str:
  """Runs `main`; checks it ends with status 130 and one line on stderr; returns that line."""
  with pytest.raises(SystemExit) as stopped:
    main(argv)
  assert stopped.value.code == common.INTERRUPTED_STATUS
  stderr = capsys.readouterr().err
  assert len(stderr.splitlines()) == 1, stderr
  return stderr.strip()
