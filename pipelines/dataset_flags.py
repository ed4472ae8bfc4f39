"""The dataset flags that the ingestion and embedding jobs share.

`--dataset` names a dataset of the registry (mmv_core/datasets/registry.py),
`--recipe` overrides its encoding recipe, and each dataset takes its own two
location flags (`DatasetSpec.splits_flag`, `.videos_flag`; e.g. UCF101's
`--splits_zip` and `--video_zip`). `resolve_dataset` turns them into the
dataset and its two locations, refusing another dataset's flag.
"""

import argparse
import dataclasses

from mmv_core import datasets
from mmv_core.video import encoding_recipes
from pipelines.common import UsageError

# Every dataset's location flags (`DatasetSpec.splits_flag`, `.videos_flag`).
LOCATION_FLAGS = tuple(
    sorted(
        {
            flag
            for spec in datasets.DATASETS.values()
            for flag in (spec.splits_flag, spec.videos_flag)
        }
    )
)


def add_dataset_flags(parser: argparse.ArgumentParser) -> None:
  """Adds --dataset, --recipe and every dataset's location flags (None: the dataset's)."""
  names = ", ".join(f"{spec.name}: {spec.description}" for spec in datasets.DATASETS.values())
  parser.add_argument("--dataset", default=datasets.UCF101.name, help=names)
  parser.add_argument(
      "--recipe",
      default=None,
      choices=sorted(encoding_recipes.RECIPES),
      help="how videos are re-encoded into frames (docs/datasets.md); default: "
      "the dataset's (csv: ucf101's)",
  )
  flag_users = {
      flag: [
          spec
          for spec in datasets.DATASETS.values()
          if flag in (spec.splits_flag, spec.videos_flag)
      ]
      for flag in LOCATION_FLAGS
  }
  for flag, specs in flag_users.items():
    defaults = {
        spec.default_splits if flag == spec.splits_flag else spec.default_videos for spec in specs
    } - {None}
    default_text = f"; default {defaults.pop()}" if defaults else ""
    parser.add_argument(
        f"--{flag}",
        default=None,
        help=f"for --dataset={'/'.join(s.name for s in specs)}: local, gs:// "
        f"or https://{default_text}",
    )


def resolve_dataset(
    name: str, locations: dict[str, str | None], recipe: str | None = None
) -> tuple[datasets.DatasetSpec, str | None, str | None]:
  """(dataset, splits location, videos location) from --dataset, the location flags, --recipe.

  Args:
    name: the --dataset value.
    locations: the value of each of `LOCATION_FLAGS` (None: not given).
    recipe: the --recipe value; None keeps the dataset's.

  Raises:
    UsageError: an unknown dataset, or a location flag that another dataset takes.
  """
  try:
    spec = datasets.get(name)
  except datasets.UnknownDatasetError as e:
    raise UsageError(str(e)) from e
  if recipe is not None:
    spec = dataclasses.replace(spec, recipe=recipe)
  foreign = [
      flag
      for flag, value in sorted(locations.items())
      if value is not None and flag not in (spec.splits_flag, spec.videos_flag)
  ]
  if foreign:
    raise UsageError(
        f"--{foreign[0]} is not a flag of --dataset={spec.name}, which takes "
        f"--{spec.splits_flag} and --{spec.videos_flag}"
    )
  return (
      spec,
      locations[spec.splits_flag] or spec.default_splits,
      locations[spec.videos_flag] or spec.default_videos,
  )
