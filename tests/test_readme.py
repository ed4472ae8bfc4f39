"""The README's commands stay true: the quick start, and every flag it names."""

import functools
import pathlib
import re
import shlex
import subprocess
import sys

import pytest
from apache_beam.options import pipeline_options

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
README = (REPO_ROOT / "README.md").read_text()


def _shell_blocks(text: str) -> list[str]:
  return re.findall(r"```shell\n(.*?)```", text, flags=re.S)


def _python_commands() -> list[list[str]]:
  """Every `python -m MODULE ...` command line of the README's shell blocks."""
  commands = []
  for block in _shell_blocks(README):
    for line in block.splitlines():
      words = shlex.split(line, comments=True)
      if "-m" in words and words[0].endswith("python"):
        commands.append(words[words.index("-m") + 1:])
  return commands


@functools.cache
def _help_text(module_and_command: tuple[str, ...]) -> str:
  result = subprocess.run([sys.executable, "-m", *module_and_command, "--help"], cwd=REPO_ROOT,
                          capture_output=True, text=True, check=True)
  return result.stdout


@functools.cache
def _beam_flags() -> frozenset[str]:
  """Every pipeline option Beam knows; our jobs pass these through to Beam."""
  parser = pipeline_options._BeamArgumentParser(allow_abbrev=False)  # pylint: disable=protected-access

  def subclasses(cls):
    for sub in cls.__subclasses__():
      yield sub
      yield from subclasses(sub)

  for options_class in set(subclasses(pipeline_options.PipelineOptions)):
    try:
      options_class._add_argparse_args(parser)  # pylint: disable=protected-access
    except Exception:  # A few option classes clash when added twice; their flags are in.
      pass
  return frozenset(parser._option_string_actions)  # pylint: disable=protected-access


def test_quick_start_is_two_commands_in_one_shell_block():
  section = README.split("## Quick start", 1)[1].split("\n## ", 1)[0]
  blocks = _shell_blocks(section)
  assert len(blocks) == 1
  commands = [line for line in blocks[0].splitlines() if line.strip()]
  assert commands == ["bash launch/demo_local.sh", "bash tests/run_tests.sh"]
  ci = (REPO_ROOT / ".ci" / "run").read_text()
  assert commands[1] in ci  # CI runs the README's test command.


def test_readme_runs_every_job():
  modules = {words[0] for words in _python_commands()}
  assert {"pipelines.embed", "pipelines.ingest", "pipelines.linear_eval",
          "launch.dataflow", "mmv_core.checkpoints"} <= modules


@pytest.mark.parametrize("words", _python_commands(), ids=lambda w: " ".join(w[:2]))
def test_every_flag_in_the_readme_exists(words):
  module, args = words[0], words[1:]
  subcommand = (args[0],) if args and not args[0].startswith("-") else ()
  help_text = _help_text((module, *subcommand))
  for flag in (a.split("=", 1)[0] for a in args if a.startswith("--")):
    known = re.search(rf"(^|[\s\[,]){re.escape(flag)}\b", help_text) or flag in _beam_flags()
    assert known, f"README: `python -m {module}` has no flag {flag}"


def test_every_flag_named_in_the_prose_exists_somewhere():
  helps = "\n".join(_help_text(tuple(words[:2] if len(words) > 1 and not words[1].startswith("-")
                                     else words[:1]))
                    for words in _python_commands())
  for flag in sorted(set(re.findall(r"`(--[a-z_]+)", README))):
    assert re.search(rf"{re.escape(flag)}\b", helps) or flag in _beam_flags(), (
        f"README names {flag}, which no job accepts")
