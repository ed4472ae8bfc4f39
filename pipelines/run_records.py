"""What each job records of its run, and how the records are read back.

- The embedding job's last step writes `OUT/run.json` (`embedding_record`):
  its settings, the dataset it listed (`dataset_record`), the backbone, the
  checkpoint's SHA-256, the package versions and the counts reconciled from
  the files it wrote. Readers: the evaluation
  (`mmv_core.embeddings.schema.read_run_config`), `load_embeddings`, and a
  resumed run (pipelines/embed_output.py).
- The evaluation writes `EVAL/metrics.json` (`evaluation_record`): the
  metrics of each split and their mean, its settings, the package versions,
  and under `evaluated` what its embeddings are, copied from their run.json
  (`evaluated_record`). Readers: the evaluation's summary and
  `pipelines.compare` (`read_evaluation`).

Both are JSON with sorted keys and no NaN (`write_record`).
"""

import dataclasses
import importlib.metadata
import json
import platform
from typing import TYPE_CHECKING, Any

from apache_beam.io.filesystems import FileSystems

from mmv_core.datasets import dataset_listing
from mmv_core.embeddings import schema
from mmv_core.evaluation import linear_eval
from mmv_core.evaluation import report
from pipelines.common import UsageError

if TYPE_CHECKING:
  from pipelines.embed_config import EmbedJobConfig

# The packages whose versions decide the numbers, recorded by both jobs.
PACKAGES = (
    "apache-beam",
    "jax",
    "jaxlib",
    "dm-haiku",
    "simplejpeg",
    "numpy",
    "scikit-learn",
    "imageio-ffmpeg",
    "mmv-pipeline",
)
# The embedding job's settings that say what its embeddings are: the
# evaluation copies them into metrics.json, so a results file read alone says it.
EMBEDDING_SETTINGS = (
    "checkpoint_path",
    "recipe",
    "num_frames",
    "stride",
    "min_resize",
    "crop_size",
    "num_train_clips",
    "num_test_windows",
    "exact_train_clips",
    "seed",
    "joint_embeddings",
    "precision",
    "classes",
    "max_videos",
)


def package_versions() -> dict[str, str]:
  """Python's and each installed package of `PACKAGES`'s version."""
  versions = {"python": platform.python_version()}
  for name in PACKAGES:
    try:
      versions[name] = importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
      pass
  return versions


def write_record(path: str, record: dict[str, Any]) -> None:
  """Writes `record` as JSON (sorted keys, non-finite floats as null) to a local path or gs://."""
  text = json.dumps(report.strict_json(record), indent=2, sort_keys=True, allow_nan=False)
  report.write_bytes(path, text.encode())


# ---- The embedding job's run.json ----


def dataset_record(
    config: "EmbedJobConfig", listing: dataset_listing.DatasetListing | None
) -> dict[str, Any]:
  """run.json's account of the dataset: name, recipe, locations, classes and splits.

  The classes and splits are those of the whole listing (None in a dry run,
  which reads no listing), so the evaluation numbers labels as the embedding
  job did.
  """
  spec = config.dataset_spec
  return {
      "name": spec.name,
      "recipe": spec.encoding_recipe.key,
      "splits_location": config.splits_location,
      "videos_location": config.videos_location,
      "class_names": None if listing is None else list(listing.class_names),
      "splits": None if listing is None else list(listing.splits),
  }


def embedding_record(
    config: "EmbedJobConfig",
    *,
    dataset: dict[str, Any],
    checkpoint_sha256: str,
    counts: dict[str, Any],
    attempt: int,
) -> dict[str, Any]:
  """run.json; `attempt` is the number of runs into the output directory, this one included."""
  return {
      schema.SETTINGS: dataclasses.asdict(config),
      "dataset": dataset,
      "backbone": config.resolved_backbone,
      "checkpoint_sha256": checkpoint_sha256,
      "versions": package_versions(),
      schema.NUM_TRAIN_CLIPS: config.num_train_clips,
      schema.NUM_TEST_WINDOWS: config.num_test_windows,
      "counts": counts,
      "runs": attempt,
  }


# ---- The evaluation's metrics.json ----


def evaluated_record(embeddings_dir: str, run_config: dict, dataset: str) -> dict[str, Any]:
  """metrics.json's `evaluated`: the embeddings, their backbone, checkpoint and settings."""
  settings = run_config.get(schema.SETTINGS, {})
  return {
      "embeddings_dir": embeddings_dir,
      "dataset": dataset,
      "backbone": run_config.get("backbone"),
      "checkpoint_sha256": run_config.get("checkpoint_sha256"),
      **{name: settings.get(name) for name in EMBEDDING_SETTINGS},
  }


def evaluation_record(
    results: list[linear_eval.SplitResult], settings: dict[str, Any], evaluated: dict[str, Any]
) -> dict[str, Any]:
  """metrics.json: each split's metrics and their mean (`linear_eval.summarise`), and the run's."""
  return linear_eval.summarise(results) | {
      "settings": settings,
      "evaluated": evaluated,
      "versions": package_versions(),
  }


def read_evaluation(eval_dir: str) -> dict[str, Any]:
  """An evaluation's metrics.json.

  Raises:
    UsageError: it cannot be read, naming the file.
  """
  path = f"{eval_dir.rstrip('/')}/{report.METRICS_FILE}"
  try:
    with FileSystems.open(path) as f:
      return json.loads(f.read())
  except Exception as e:  # Missing, unreadable or not JSON: the message says which.
    raise UsageError(f"{path}: cannot read an evaluation's metrics ({e})") from e
