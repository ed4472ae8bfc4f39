"""The README's commands stay true: the quick start, every flag it names, and
its Python examples, which run here as written but for smaller clips."""

import functools
import json
import pathlib
import re
import shlex

import cli_checks
import numpy as np
import pytest
from apache_beam.options import pipeline_options

from mmv_core import checkpoints
from mmv_core.embeddings import schema as embedding_schema
from mmv_core.datasets import synthetic
from mmv_core.embeddings import tfrecord
from mmv_core import video

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
README = (REPO_ROOT / "README.md").read_text()


def _shell_blocks(text: str) -> list[str]:
  return re.findall(r"```shell\n(.*?)```", text, flags=re.S)


def _python_blocks(text: str) -> list[str]:
  return re.findall(r"```python\n(.*?)```", text, flags=re.S)


def _python_commands() -> list[list[str]]:
  """Every `python -m MODULE ...` command line of the README's shell blocks."""
  commands = []
  for block in _shell_blocks(README):
    for line in block.splitlines():
      words = shlex.split(line, comments=True)
      if "-m" in words and words[0].endswith("python"):
        commands.append(words[words.index("-m") + 1 :])
  return commands


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
  assert {
      "pipelines.embed",
      "pipelines.ingest",
      "pipelines.linear_eval",
      "pipelines.compare",
      "launch.dataflow",
      "mmv_core.checkpoints",
  } <= modules


@pytest.mark.parametrize("words", _python_commands(), ids=lambda w: " ".join(w[:2]))
def test_every_flag_in_the_readme_exists(words):
  module, args = words[0], words[1:]
  subcommand = (args[0],) if args and not args[0].startswith("-") else ()
  help_text = cli_checks.help_text(module, *subcommand)
  for flag in (a.split("=", 1)[0] for a in args if a.startswith("--")):
    known = re.search(rf"(^|[\s\[,]){re.escape(flag)}\b", help_text) or flag in _beam_flags()
    assert known, f"README: `python -m {module}` has no flag {flag}"


def test_every_flag_named_in_the_prose_exists_somewhere():
  helps = "\n".join(
      cli_checks.help_text(
          *(words[:2] if len(words) > 1 and not words[1].startswith("-") else words[:1])
      )
      for words in _python_commands()
  )
  for flag in sorted(set(re.findall(r"`(--[a-z_]+)", README))):
    assert (
        re.search(rf"{re.escape(flag)}\b", helps) or flag in _beam_flags()
    ), f"README names {flag}, which no job accepts"


# The README's examples spell out the protocol's sampling; the test runs them
# with these smaller clips, which keep S3D on a CPU to seconds.
PROTOCOL_SAMPLING = dict(
    num_windows=video.DEFAULT_NUM_TEST_WINDOWS,
    num_frames=video.DEFAULT_NUM_FRAMES,
    stride=video.DEFAULT_STRIDE,
    min_resize=video.DEFAULT_MIN_RESIZE,
    crop_size=video.DEFAULT_CROP_SIZE,
)
SMALL_SAMPLING = dict(num_windows=3, num_frames=4, stride=2, min_resize=32, crop_size=32)


def _with_small_sampling(block: str) -> str:
  """`block` with each protocol setting `name=value` replaced by the small one."""
  for name, small in SMALL_SAMPLING.items():
    values = re.findall(rf"\b{name}=(\d+)", block)
    assert all(
        int(v) == PROTOCOL_SAMPLING[name] for v in values
    ), f"README: {name}={values} is not the protocol's {PROTOCOL_SAMPLING[name]}"
    block = re.sub(rf"\b{name}=\d+", f"{name}={small}", block)
  return block


def _write_embedding_job_output(output_dir: pathlib.Path) -> None:
  """Two videos' clips, one test window and one training clip each."""
  (output_dir / embedding_schema.SHARDS_DIR).mkdir(parents=True)
  records = [
      embedding_schema.make_example(
          video_id=video_id,
          label=label,
          label_name=name,
          clip_type=clip_type,
          clip_index=0,
          embedding=np.full(1024, label, np.float32),
      )
      for video_id, label, name in (
          ("v_Archery_g01_c01", 1, "Archery"),
          ("v_ApplyEyeMakeup_g01_c01", 0, "ApplyEyeMakeup"),
      )
      for clip_type in embedding_schema.CLIP_TYPES
  ]
  (output_dir / embedding_schema.SHARDS_DIR / "part-00000-of-00001.tfrecord").write_bytes(
      b"".join(tfrecord.encode_record(r.SerializeToString()) for r in records)
  )
  (output_dir / embedding_schema.RUN_CONFIG_FILE).write_text(
      json.dumps({"backbone": "s3d", "num_train_clips": 1, "num_test_windows": 1})
  )


def test_python_examples_run(tmp_path, monkeypatch):
  """The README's Python blocks, in order, in one namespace, as in a notebook."""
  blocks = _python_blocks(README)
  assert blocks
  # The files the examples name, in the directory they run in.
  # The examples run in try_mmv/ (README: `cd try_mmv`), beside the demo's output.
  run_dir = tmp_path / "try_mmv"
  run_dir.mkdir()
  rng = np.random.default_rng(0)
  frames = synthetic.render_frames(0, 2, rng, width=64, height=48, num_frames=10, fps=10.0)
  (run_dir / "v_SynthDiskA_g01_c01.avi").write_bytes(synthetic.encode_avi(frames, 10.0))
  checkpoints.write_random_checkpoint(
      run_dir / "mmv_s3d.pkl", *checkpoints.checkpoint_shapes("s3d")
  )
  _write_embedding_job_output(tmp_path / "demo_output" / "ucf101" / "embed")
  monkeypatch.chdir(run_dir)

  namespace = {}
  for block in blocks:
    exec(compile(_with_small_sampling(block), "README.md", "exec"), namespace)  # pylint: disable=exec-used

  windows, size = SMALL_SAMPLING["num_windows"], SMALL_SAMPLING["crop_size"]
  assert namespace["frames"].dtype == np.uint8
  assert namespace["frames"].shape == (25, 48, 64, 3)  # 1 s re-encoded at 25 fps.
  assert namespace["features"].dtype == np.float32
  assert namespace["features"].shape == (windows, 1024)
  assert namespace["clips"].shape == (windows, SMALL_SAMPLING["num_frames"], size, size, 3)
  assert namespace["clips"].dtype == np.float32
  assert {name: out.shape for name, out in namespace["joint"].items()} == {
      "vid_repr": (windows, 1024),
      "video_audio": (windows, 512),
      "video_text": (windows, 256),
  }
  np.testing.assert_allclose(
      namespace["joint"]["vid_repr"], namespace["features"], rtol=1e-5, atol=1e-5
  )
  embeddings = namespace["embeddings"]
  assert embeddings.video_id.tolist() == ["v_ApplyEyeMakeup_g01_c01", "v_Archery_g01_c01"]
  assert set(embeddings.clip_type) == {"test"}
  np.testing.assert_array_equal(embeddings.X, np.repeat([[0.0], [1.0]], 1024, axis=1))
