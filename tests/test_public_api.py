"""The package's public names: what `mmv_core` exports, and that it does so lazily."""

import pathlib
import subprocess
import sys
import textwrap

import cli_checks
import pytest

import mmv_core

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
PUBLIC_NAMES = ["EmbedderConfig", "VideoEmbedder", "load_embeddings", "load_video"]


def test_ingestion_imports_load_neither_jax_nor_tensorflow():
  script = textwrap.dedent("""
      import sys
      import mmv_core, mmv_core.video.sources
      heavy = sorted({name.split(".")[0] for name in sys.modules} & {"jax", "tensorflow"})
      assert not heavy, f"importing mmv_core loaded {heavy}"
      from mmv_core import embedder
      assert mmv_core.VideoEmbedder is embedder.VideoEmbedder
      assert "jax" in sys.modules  # The first use imports it.
  """)
  result = subprocess.run(
      [sys.executable, "-c", script], cwd=REPO_ROOT, capture_output=True, text=True, check=False
  )
  assert result.returncode == 0, result.stderr


def test_all_and_dir_list_the_public_names():
  assert mmv_core.__all__ == PUBLIC_NAMES
  assert set(PUBLIC_NAMES) <= set(dir(mmv_core))


@pytest.mark.parametrize(
    "name, module",
    [
        ("VideoEmbedder", "mmv_core.embedder"),
        ("EmbedderConfig", "mmv_core.embedder_config"),
        ("load_video", "mmv_core.video.video_file"),
        ("load_embeddings", "mmv_core.embeddings.reader"),
    ],
)
def test_public_names_are_the_modules_objects(name, module):
  assert getattr(mmv_core, name) is getattr(sys.modules[module], name)


def test_unknown_names_raise_attribute_error():
  with pytest.raises(AttributeError, match="has no attribute 'load_videos'"):
    _ = mmv_core.load_videos


def test_the_jobs_and_the_readme_imports_load_no_tensorflow_and_write_nothing_to_stderr():
  """TensorFlow costs seconds at start-up and exit and prints notices; nothing needs it."""
  script = textwrap.dedent("""
      import sys
      import mmv_core
      from mmv_core import video
      mmv_core.VideoEmbedder
      import pipelines.embed, pipelines.ingest, pipelines.linear_eval
      assert "tensorflow" not in sys.modules
  """)
  result = subprocess.run(
      [sys.executable, "-c", script], cwd=REPO_ROOT, capture_output=True, text=True, check=False
  )
  assert result.returncode == 0, result.stderr
  assert result.stderr == ""


def test_no_commands_help_waits_for_jax_tensorflow_or_scikit_learn():
  imported = cli_checks.packages_imported_by_help(cli_checks.COMMANDS)
  assert sorted(imported & set(cli_checks.HEAVY_MODULES)) == []
