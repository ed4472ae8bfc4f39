"""Ingestion's listing: a dataset's videos selected, checked and counted, as a PTransform.

`ListVideos` lists the dataset (its spec's `list_videos`, `mmv_core/datasets/`),
keeps the classes and the number of videos asked for, and compares each
split's count with the official one (counter `split_count_differences`).
"""

import logging
import os
from collections.abc import Iterator, Sequence

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems

from mmv_core.datasets import dataset_listing
from mmv_core import datasets
from mmv_core.video import sources
from mmv_core.video import video_cache
from pipelines.common import UsageError, counter
from pipelines.ingest_fetch import cache_key, failure_reason, read_zip_index


def load_listing(
    dataset: datasets.DatasetSpec, splits_location: str | None, videos_location: str | None
) -> dataset_listing.DatasetListing:
  """The dataset's listing, from the given locations or the dataset's defaults.

  Raises:
    UsageError: a location is missing, unreadable or malformed; the message
      says which and where.
  """
  try:
    return dataset.list_videos(splits_location, videos_location)
  except (ValueError, sources.SourceError) as e:  # Listing errors and missing flags.
    raise UsageError(str(e)) from e


def select_videos(
    listing: dataset_listing.DatasetListing, classes: Sequence[str] | None, max_videos: int | None
) -> list[dataset_listing.ListedVideo]:
  """The videos a run of `listing` (`load_listing`) selects, known before the job starts.

  Raises:
    UsageError: the selection is impossible (an unknown class, a max_videos
      below 1).
  """
  try:
    return listing.select(classes, max_videos)
  except ValueError as e:
    raise UsageError(str(e)) from e


def check_videos_readable(
    dataset: datasets.DatasetSpec,
    videos_location: str | None,
    work_dir: str,
    videos: Sequence[dataset_listing.ListedVideo],
) -> None:
  """Refuses, before any work, videos that cannot be read when the cache holds none of `videos`.

  The videos cannot be read when the video ZIP cannot (`read_zip_index`), or
  when the folder that a dataset of files names with its videos flag does
  not exist (local) or holds nothing (`gs://`). Every video the cache does
  not hold would then fail; when it holds none of `videos`, the run could
  only fail them all: a wrong flag, or storage out of reach. A run with
  cached videos goes on, serving those, as an offline rerun does. A single
  missing file fails its video alone.

  Raises:
    UsageError: the videos cannot be read and none of `videos` is cached.
  """
  if not videos:
    return
  location = videos_location or dataset.default_videos
  try:
    if dataset.fetch == datasets.FETCH_ZIP_MEMBER:
      read_zip_index(location)
    elif location and not _folder_exists(location):
      raise sources.SourceError(f"{location}: no such folder")
  except Exception as e:  # Whatever the job's own reading would fail every video with.
    cached = video_cache.read_index(work_dir)
    if not any(cache_key(dataset, v) in cached for v in videos):
      raise UsageError(
          f"--{dataset.videos_flag}: {failure_reason(e)}; the video cache in --work_dir "
          f"{work_dir} holds none of the {len(videos)} videos either"
      ) from e


def _folder_exists(location: str) -> bool:
  """Whether a local folder exists or a `gs://` prefix holds an object (http(s): cannot tell)."""
  if "://" not in location:
    return os.path.isdir(location)
  if location.startswith("gs://"):
    pattern = FileSystems.join(location.rstrip("/"), "**")
    return bool(FileSystems.match([pattern], limits=[1])[0].metadata_list)
  return True


def split_count_differences(
    listing: dataset_listing.DatasetListing, dataset_name: str, expected: dict[int, tuple[int, int]]
) -> list[str]:
  """Human-readable differences from the official per-split counts."""
  return [
      f"split {split}: {train} train / {test} test videos, official {dataset_name} has "
      f"{expected[split][0]} / {expected[split][1]}"
      for split, (train, test) in listing.split_counts().items()
      if split in expected and (train, test) != expected[split]
  ]


def list_videos(
    dataset: datasets.DatasetSpec,
    splits_location: str | None,
    videos_location: str | None,
    classes: Sequence[str] | None,
    max_videos: int | None,
    expected_split_counts: dict | None,
    listing: dataset_listing.DatasetListing | None = None,
) -> Iterator[dataset_listing.ListedVideo]:
  """The videos to ingest; logs and counts differences from the official split sizes.

  `listing`, read before the job, is used as it is; None: read it here.
  """
  if listing is None:
    listing = dataset.list_videos(splits_location, videos_location)
  if expected_split_counts is not None:
    for difference in split_count_differences(listing, dataset.name, expected_split_counts):
      logging.warning("%s: %s", splits_location or dataset.default_splits, difference)
      counter("split_count_differences").inc()
  for video in listing.select(classes, max_videos):
    counter("videos_listed").inc()
    yield video


# Default of `expected_split_counts`: the dataset's official counts.
OFFICIAL_SPLIT_COUNTS = "official"


class ListVideos(beam.PTransform):
  """PBegin -> PCollection[ListedVideo] from the dataset's listing.

  Args:
    dataset: the dataset.
    splits_location, videos_location: where its split definitions and videos
      are (None: the dataset's defaults).
    classes: class names to keep (all when None).
    max_videos: keep at most this many, round-robin over classes.
    expected_split_counts: per-split (train, test) counts to check against;
      OFFICIAL_SPLIT_COUNTS: the dataset's official ones; None skips the
      check (subsets, synthetic data).
    listing: the listing, read before the job (local runs); None: it is
      read at run time, by a worker.
  """

  def __init__(
      self,
      dataset: datasets.DatasetSpec,
      splits_location: str | None,
      videos_location: str | None,
      classes: Sequence[str] | None = None,
      max_videos: int | None = None,
      expected_split_counts: dict | str | None = OFFICIAL_SPLIT_COUNTS,
      listing: dataset_listing.DatasetListing | None = None,
  ):
    super().__init__()
    self._listing = listing
    self._dataset = dataset
    self._locations = (splits_location, videos_location)
    self._classes = tuple(classes) if classes else None
    self._max_videos = max_videos
    if expected_split_counts == OFFICIAL_SPLIT_COUNTS:
      expected_split_counts = dataset.expected_split_counts
    self._expected = expected_split_counts

  def expand(self, pbegin):
    return (
        pbegin
        | "Dataset" >> beam.Create([self._dataset])
        | "Parse"
        >> beam.FlatMap(
            list_videos,
            *self._locations,
            self._classes,
            self._max_videos,
            self._expected,
            self._listing,
        )
    )
