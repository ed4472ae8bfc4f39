"""Ingestion on Beam: a dataset's listing -> sharded fetch -> JPEG frames -> cache.

Stage: the first stage of every job. Usage from another pipeline:

    result = p | Ingest(videos_location, splits_location, work_dir,
                        dataset=datasets.HMDB51)   # UCF101 by default
    result.videos    # PCollection[video_cache.CachedVideo]: video_id, label,
                     #   label_name, frames (JPEG bytes), source_crc32
    result.failures  # PCollection[dict]: {"video_id", "stage", "reason"}
    result.failures | WriteFailures(path)

`Ingest` lists the dataset (`ListVideos`, `mmv_core/datasets.py`) and
fetches each video as its spec's `fetch` says: a member of one ZIP (UCF101:
the central directory is read once, members by byte range, inflated and
CRC-checked) or a whole file (HMDB51, CSV: local, gs:// or https://, with
the retries and deadlines of `mmv_core/sources.py`). Each is re-encoded with
the dataset's encoding recipe, a CSV segment cut first, on the worker that
processes it (`FetchAndEncode`), and committed to `<work_dir>/video_cache`
(`WriteVideoCache`) under its cache key (`cache_key`: dataset, recipe and
location for files; UCF101's bare ids, as its caches always had). Videos
already cached are reused: a ZIP member only while the archive still holds
it with the CRC-32 recorded with it (a cache filled from another archive is
not served); if the central directory cannot be read, cached videos are
served as they are (counted as videos_reused_unverified), the cache then
being the only copy. With `read_cached_videos=False`, `videos` holds only
the newly encoded videos and cached ones are not read at all (for a run
that only fills the cache). `p | ReadVideoCache(work_dir)` reads the whole
cache back as a PCollection of `CachedVideo` (under cache keys).

Every video listed in the splits either reaches `videos` or `failures`, once;
failure stages are `fetch` (not in the ZIP, a malformed or duplicated entry,
a missing file, unreadable, too slow), `extract` (corrupt member, CRC-32 mismatch, inflating
past its declared size), `encode` (not a decodable video) and `cache` (a
damaged cache shard: it is uncommitted, so its videos are fetched again on
the next run). Any other exception while processing one video fails that
video at the stage it was in, with the exception's type in the reason.

Beam counters, namespace "mmv": videos_listed, split_count_differences,
videos_reused (found in the cache), videos_reused_unverified, videos_stale
(cached from a member with another CRC-32, fetched again), videos_fetched,
bytes_fetched, fetch_retries, videos_encoded, frames_encoded, videos_cached
(committed to the cache by this run), videos_failed and failed_<stage>.

CLI (ingestion alone; runs on the FnApiRunner unless --runner is given):

    python -m pipelines.ingest --video_zip gs://... --splits_zip ... \
        --work_dir /tmp/mmv --classes ApplyEyeMakeup,Archery --max_videos 20
    python -m pipelines.ingest --dataset=hmdb51 --splits_dir ... --video_root ... \
        --work_dir /tmp/mmv
"""

import argparse
import contextlib
import dataclasses
import hashlib
import json
import logging
import sys
import typing
import zlib
from collections.abc import Iterable, Iterator, Sequence

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import PipelineOptions

from mmv_core import dataset_listing
from mmv_core import datasets
from mmv_core import encode
from mmv_core import encoding_recipes
from mmv_core import sources
from mmv_core import ucf101
from mmv_core import video_cache
from mmv_core import zip_index
from pipelines.common import FAILURES, UsageError, WriteFailures, counter, counters, failure
from pipelines.common import add_required_flag, add_verbose_flag, check_beam_flags
from pipelines.common import ProgressLogger, configure_logging, job_parser, run_main
from pipelines.common import summarize_failures
from pipelines.common import runs_in_one_process, runs_locally, with_local_runner

STAGE_FETCH = "fetch"
STAGE_EXTRACT = "extract"
STAGE_ENCODE = "encode"
STAGE_CACHE = "cache"
DEFAULT_VIDEOS_PER_SHARD = 32
FAILURES_FILE = "ingest_failures.jsonl"
# Hex digits of the location's sha256 in a file's cache key.
_KEY_DIGEST_CHARS = 16
# Errors our own code raises with a message that says it all.
_EXPLAINED_ERRORS = (
    sources.SourceError,
    zip_index.ZipFormatError,
    encode.EncodeError,
    video_cache.CacheError,
)


class StageFailure(Exception):
  """One video failed at `stage` for `reason`."""

  def __init__(self, stage: str, reason: str):
    super().__init__(f"{stage}: {reason}")
    self.stage = stage
    self.reason = reason


def failure_reason(error: Exception) -> str:
  """The reason to record for `error`: its message, with its type if it is not ours.

  An error that is not ours may be a bug, so its traceback is logged.
  """
  if isinstance(error, _EXPLAINED_ERRORS):
    return str(error)
  logging.error("unexpected error, recorded as a video's failure", exc_info=error)
  return f"{type(error).__name__}: {error}"


@contextlib.contextmanager
def at_stage(stage: str):
  """Turns any exception in the block into a `StageFailure` at `stage`."""
  try:
    yield
  except Exception as e:  # pylint: disable=broad-except  # One video must not stop the job.
    raise StageFailure(stage, failure_reason(e)) from e


# ---- Listing ----


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
  """Refuses, before any work, an unreadable video ZIP when the cache holds none of `videos`.

  An archive that cannot be read fails every video the cache does not hold
  (`read_zip_index_or_reason`); when the cache holds none of `videos`, the
  run could only fail them all: a wrong flag, or storage out of reach. A run
  with cached videos goes on, serving those, as an offline rerun does.
  Datasets of whole files are not checked here: a missing file fails its
  video alone.

  Raises:
    UsageError: the archive cannot be read and none of `videos` is cached.
  """
  if dataset.fetch != datasets.FETCH_ZIP_MEMBER or not videos:
    return
  location = videos_location or dataset.default_videos
  try:
    read_zip_index(location)
  except Exception as e:  # Whatever the job's own reading would fail every video with.
    cached = video_cache.read_index(work_dir)
    if not any(cache_key(dataset, v) in cached for v in videos):
      raise UsageError(
          f"--{dataset.videos_flag}: {failure_reason(e)}; the video cache in --work_dir "
          f"{work_dir} holds none of the {len(videos)} videos either"
      ) from e


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


# ---- Fetch and encode ----


def cache_key(dataset: datasets.DatasetSpec, video: dataset_listing.ListedVideo) -> str:
  """The id under which `video`'s frames are cached.

  ZIP members re-encoded with UCF101's recipe keep their bare ids, the keys
  of the cache UCF101 runs have always written; they are checked against the
  archive's CRC-32 on every run. Anything else (whole files, or another
  `--recipe`) is keyed by dataset, recipe and location as well, so that
  datasets, recipes (and two CSV folders naming the same relative path
  under different roots) share a work directory without collisions. The id is the
  last `/`-separated part (ids never hold `/`), see `video_id_of`.
  """
  if (
      dataset.fetch == datasets.FETCH_ZIP_MEMBER
      and dataset.encoding_recipe == encoding_recipes.UCF101
  ):
    return video.video_id
  location_digest = hashlib.sha256(video.location.encode()).hexdigest()[:_KEY_DIGEST_CHARS]
  return f"{dataset.name}/{dataset.encoding_recipe.key}/{location_digest}/{video.video_id}"


def video_id_of(key: str) -> str:
  """The listing's video id of a cache key (`cache_key`'s last part)."""
  return key.rsplit("/", 1)[-1]


class ZipMemberFetcher:
  """Members of one ZIP, read by byte range after its central directory.

  `prepare` reads the central directory (or why it could not be read); a
  cached video is current when the archive still holds its member with the
  recorded CRC-32.
  """

  def __init__(self, video_zip: str):
    self.location = video_zip

  def prepare(self) -> zip_index.ZipIndex | str:
    return read_zip_index_or_reason(self.location)

  def is_current(
      self,
      video: dataset_listing.ListedVideo,
      entry: video_cache.IndexEntry,
      index: zip_index.ZipIndex | str,
  ) -> bool:
    if isinstance(index, str):
      counter("videos_reused_unverified").inc()
      return True
    member = index.members.get(video.location)
    return member is not None and member.crc32 == entry.source_crc32

  def fetch(
      self, video: dataset_listing.ListedVideo, index: zip_index.ZipIndex | str
  ) -> tuple[bytes, int]:
    """(the member's inflated bytes, its CRC-32); StageFailure at fetch or extract."""
    if isinstance(index, str):
      raise StageFailure(STAGE_FETCH, index)
    member = index.members.get(video.location)
    if member is None:
      raise StageFailure(
          STAGE_FETCH,
          index.unreadable.get(
              video.location, f"listed in the splits but {video.location} is not in {self.location}"
          ),
      )
    with at_stage(STAGE_FETCH):
      data = fetch_member(self.location, index, member)
    counter("videos_fetched").inc()
    with at_stage(STAGE_EXTRACT):
      content = zip_index.extract(member, data, source=self.location)
    return content, member.crc32


class FileFetcher:
  """Whole files: local paths, `gs://` objects, `http(s)://` URLs.

  A cached video is served without reading its file again (reading is the
  whole cost): a file changed in place keeps its old frames until the cache
  entry is removed.
  """

  def __init__(self, _videos_location: str | None):
    del _videos_location  # Listed videos carry their full locations.

  def prepare(self) -> None:
    return None

  def is_current(self, *_) -> bool:
    return True

  def fetch(self, video: dataset_listing.ListedVideo, _) -> tuple[bytes, int]:
    """(the file's bytes, their CRC-32); StageFailure at fetch."""
    with at_stage(STAGE_FETCH):
      data = fetch_file(video.location)
    counter("videos_fetched").inc()
    return data, zlib.crc32(data)


FETCHERS = {datasets.FETCH_ZIP_MEMBER: ZipMemberFetcher, datasets.FETCH_FILE: FileFetcher}


def read_zip_index(video_zip: str) -> zip_index.ZipIndex:
  """Central directory of the video ZIP, read with ranged reads."""
  size = sources.size(video_zip)
  if video_zip == ucf101.VIDEO_ZIP_URL and size != ucf101.VIDEO_ZIP_BYTES:
    raise zip_index.ZipFormatError(
        f"{video_zip}: {size} bytes, the pinned mirror has {ucf101.VIDEO_ZIP_BYTES}"
    )
  return zip_index.read_index(
      lambda start, length: sources.read_range(video_zip, start, length), size, source=video_zip
  )


def read_zip_index_or_reason(video_zip: str) -> zip_index.ZipIndex | str:
  """The central directory, or why it could not be read.

  An unreachable archive fails every video still to fetch (each with this
  reason) instead of the whole job, so cached videos still get through.
  """
  try:
    return read_zip_index(video_zip)
  except Exception as e:  # pylint: disable=broad-except  # Fails the videos, not the job.
    reason = failure_reason(e)
    logging.error("cannot read the video ZIP (%s); cached videos are served unverified", reason)
    return f"cannot read the video ZIP's central directory: {reason}"


def fetch_member(video_zip: str, index: zip_index.ZipIndex, member: zip_index.ZipMember) -> bytes:
  """The member's compressed bytes; transient errors are retried and counted."""

  def read(start: int, length: int) -> bytes:
    data = sources.read_range(
        video_zip, start, length, on_retry=lambda _: counter("fetch_retries").inc()
    )
    counter("bytes_fetched").inc(len(data))
    return data

  return zip_index.read_member_data(read, index, member, source=video_zip)


def fetch_file(location: str) -> bytes:
  """A whole file, as many bytes as its size says; transient errors are retried and counted.

  Read as one range, so that it gets the retries and the size-scaled
  deadline of `sources.read_range`, and a short read is an error.
  """
  data = sources.read_range(
      location, 0, sources.size(location), on_retry=lambda _: counter("fetch_retries").inc()
  )
  counter("bytes_fetched").inc(len(data))
  return data


def fetch_and_encode(
    dataset: datasets.DatasetSpec, fetcher, context, video: dataset_listing.ListedVideo
) -> video_cache.CachedVideo:
  """Fetches one video and re-encodes it with the dataset's recipe.

  Args:
    dataset: the video's dataset.
    fetcher: a `FETCHERS` entry for `dataset.fetch`.
    context: what `fetcher.prepare()` returned.
    video: the video to fetch.

  Returns:
    The video under its cache key (`cache_key`).

  Raises:
    StageFailure: at the stage that failed, for any reason.
  """
  content, source_crc32 = fetcher.fetch(video, context)
  with at_stage(STAGE_ENCODE):
    frames = encode.encode_jpeg_frames(
        content,
        video.location,
        recipe=dataset.encoding_recipe,
        start_s=video.start_s,
        end_s=video.end_s,
    )
  counter("videos_encoded").inc()
  counter("frames_encoded").inc(len(frames))
  return video_cache.CachedVideo(
      video_id=cache_key(dataset, video),
      label=video.label,
      label_name=video.label_name,
      frames=tuple(frames),
      source_crc32=source_crc32,
  )


class _FetchAndEncodeFn(beam.DoFn):
  """ListedVideo -> CachedVideo, or a failure record on the FAILURES output."""

  def __init__(self, dataset: datasets.DatasetSpec, fetcher):
    super().__init__()
    self._dataset = dataset
    self._fetcher = fetcher

  def process(self, video: dataset_listing.ListedVideo, context):
    try:
      encoded = fetch_and_encode(self._dataset, self._fetcher, context, video)
    except StageFailure as e:
      yield beam.pvalue.TaggedOutput(FAILURES, failure(video.video_id, e.stage, e.reason))
      return
    yield encoded


class FetchAndEncode(beam.PTransform):
  """PCollection[ListedVideo] -> (CachedVideo PCollection, failures PCollection).

  The videos are reshuffled so that they are fetched and encoded in
  parallel across workers.

  Args:
    dataset: the videos' dataset.
    fetcher: a `FETCHERS` entry for `dataset.fetch`.
    context: a one-element PCollection, what `fetcher.prepare()` returned.
  """

  def __init__(self, dataset: datasets.DatasetSpec, fetcher, context: beam.PCollection):
    super().__init__()
    self._dataset = dataset
    self._fetcher = fetcher
    self._context = context

  def expand(self, videos):
    outputs = (
        videos
        | "Spread" >> beam.Reshuffle()
        | "FetchEncode"
        >> beam.ParDo(
            _FetchAndEncodeFn(self._dataset, self._fetcher), beam.pvalue.AsSingleton(self._context)
        ).with_outputs(FAILURES, main="videos")
    )
    return outputs["videos"], outputs[FAILURES]


# ---- Cache ----


class _WriteShardFn(beam.DoFn):
  """A batch of CachedVideo -> one committed shard; yields the videos once committed."""

  def __init__(self, work_dir: str):
    super().__init__()
    self._work_dir = work_dir

  def process(self, batch: Sequence[video_cache.CachedVideo]):
    video_cache.write_shard(self._work_dir, batch)
    counter("videos_cached").inc(len(batch))
    yield from batch


class WriteVideoCache(beam.PTransform):
  """PCollection[CachedVideo] -> the same videos, after each is committed to the cache."""

  def __init__(self, work_dir: str, videos_per_shard: int = DEFAULT_VIDEOS_PER_SHARD):
    super().__init__()
    self._work_dir = work_dir
    self._videos_per_shard = videos_per_shard

  def expand(self, videos):
    return (
        videos
        | "Batch"
        >> beam.BatchElements(
            min_batch_size=self._videos_per_shard, max_batch_size=self._videos_per_shard
        )
        | "WriteShard" >> beam.ParDo(_WriteShardFn(self._work_dir))
    )


def _drop_damaged_shard(shard: str, damage: str) -> str:
  """Uncommits a damaged shard; returns the failure reason for its videos."""
  try:
    video_cache.discard_shard(shard)
  except Exception as e:  # pylint: disable=broad-except  # Its videos fail either way.
    logging.warning("%s: could not drop the damaged shard from the cache: %s", shard, e)
    return f"{damage}; could not drop the shard from the cache ({e})"
  return f"{damage}; shard dropped from the cache, its videos are fetched again next run"


def read_cached_videos(
    shard: str, listed: dict[str, dataset_listing.ListedVideo]
) -> tuple[list[video_cache.CachedVideo], dict[str, str]]:
  """Reads the `listed` videos (by cache key) from one cache shard.

  Ids and labels come from the current listing, not from the cache, so a
  cache filled under other lists cannot leak stale labels. A damaged shard
  (missing, truncated, corrupt, or lacking a video its index lists) is
  uncommitted, so that the next run fetches its videos again instead of
  failing them forever.

  Returns:
    (the videos read, the reason by video id for each that could not be).
  """
  try:
    cached = list(video_cache.read_shard(shard, listed))
  except video_cache.CacheError as e:
    reason = _drop_damaged_shard(shard, str(e))
    return [], {video.video_id: reason for video in listed.values()}
  except Exception as e:  # pylint: disable=broad-except  # E.g. storage unreachable for a while.
    return [], {video.video_id: failure_reason(e) for video in listed.values()}
  lacking = sorted(set(listed) - {video.video_id for video in cached})
  reasons = {}
  if lacking:
    reason = _drop_damaged_shard(shard, f"{shard}: the cache index lists videos the shard lacks")
    reasons = {listed[key].video_id: reason for key in lacking}
  videos = [
      dataclasses.replace(
          video,
          video_id=listed[video.video_id].video_id,
          label=listed[video.video_id].label,
          label_name=listed[video.video_id].label_name,
      )
      for video in cached
  ]
  return videos, reasons


class _ReadCachedFn(beam.DoFn):
  """(shard path, (cache key, ListedVideo) cached in it) -> CachedVideo, or failures."""

  def process(
      self, shard_and_videos: tuple[str, Iterable[tuple[str, dataset_listing.ListedVideo]]]
  ):
    shard, keyed_videos = shard_and_videos
    cached, reasons = read_cached_videos(shard, dict(keyed_videos))
    yield from cached
    for video_id, reason in sorted(reasons.items()):
      yield beam.pvalue.TaggedOutput(FAILURES, failure(video_id, STAGE_CACHE, reason))


class ReadVideoCache(beam.PTransform):
  """PBegin -> PCollection[CachedVideo]: every video committed under `work_dir`, once each."""

  def __init__(self, work_dir: str):
    super().__init__()
    self._work_dir = work_dir

  def expand(self, pbegin):
    return (
        pbegin
        | "WorkDir" >> beam.Create([self._work_dir])
        | "Index"
        >> beam.FlatMap(
            lambda work_dir: [
                (e.shard, e.video_id) for e in video_cache.read_index(work_dir).values()
            ]
        )
        | "ByShard" >> beam.GroupByKey()
        | "ReadShard" >> beam.FlatMap(lambda kv: video_cache.read_shard(*kv))
    )


# ---- Everything together ----


class IngestResult(typing.NamedTuple):
  videos: beam.PCollection
  failures: beam.PCollection


_REUSE, _FETCH = 0, 1


def reuse_or_fetch(
    keyed_video: tuple[str, dataset_listing.ListedVideo],
    _,
    cached: dict[str, video_cache.IndexEntry],
    fetcher,
    context,
) -> int:
  """`_REUSE` a cached video that is still current, else `_FETCH` it.

  Current as `fetcher.is_current` says: for ZIP members, the archive holds
  the member with the CRC-32 recorded in the cache (an archive that cannot
  be read cannot tell: the cached copy is served, as the only one there is).
  (`_` is the number of partitions, which `beam.Partition` passes.)
  """
  key, video = keyed_video
  entry = cached.get(key)
  if entry is None:
    return _FETCH
  if not fetcher.is_current(video, entry, context):
    counter("videos_stale").inc()
    return _FETCH
  return _REUSE


# What `Ingest`'s progress lines count.
VIDEOS_SETTLED = "videos fetched and re-encoded, failed, or found in the cache"


class Ingest(beam.PTransform):
  """PBegin -> IngestResult(videos, failures); see the module docstring.

  Args:
    videos_location: where the videos are: UCF101's ZIP (gs://, https:// or
      a local path), the folder or prefix of a dataset of files; None: the
      dataset's default.
    splits_location: the split definitions (UCF101's split-list zip, HMDB51's
      split folder, a CSV folder); None: the dataset's default.
    work_dir: where the video cache lives (local or gs://).
    classes, max_videos, expected_split_counts, listing: as in `ListVideos`.
    videos_per_shard: most videos in one cache shard.
    read_cached_videos: also read videos that were already cached into
      `videos`; False when the run only fills the cache.
    dataset: the dataset, UCF101 by default.
    progress: counts each video as its fate is settled: fetched and
      re-encoded, failed, or found in the cache.
  """

  def __init__(
      self,
      videos_location: str | None = None,
      splits_location: str | None = None,
      work_dir: str = "",
      classes: Sequence[str] | None = None,
      max_videos: int | None = None,
      expected_split_counts: dict | str | None = OFFICIAL_SPLIT_COUNTS,
      videos_per_shard: int = DEFAULT_VIDEOS_PER_SHARD,
      read_cached_videos: bool = True,
      dataset: datasets.DatasetSpec = datasets.UCF101,
      progress: ProgressLogger | None = None,
      listing: dataset_listing.DatasetListing | None = None,
  ):
    super().__init__()
    if not work_dir:
      raise ValueError("Ingest needs a work_dir for its video cache")
    self._dataset = dataset
    self._fetcher = FETCHERS[dataset.fetch](videos_location or dataset.default_videos)
    self._work_dir = work_dir
    self._list = ListVideos(
        dataset,
        splits_location,
        videos_location,
        classes,
        max_videos,
        expected_split_counts,
        listing,
    )
    self._videos_per_shard = videos_per_shard
    self._read_cached_videos = read_cached_videos
    self._progress = progress

  def expand(self, pbegin):
    work_dir = self._work_dir
    dataset = self._dataset
    listed = (
        pbegin
        | "List" >> self._list
        | "KeyByCacheKey" >> beam.Map(lambda video: (cache_key(dataset, video), video))
    )
    cached_index = (
        pbegin
        | "WorkDir" >> beam.Create([work_dir])
        | "ReadCacheIndex" >> beam.FlatMap(lambda d: video_cache.read_index(d).items())
    )
    fetch_context = (
        pbegin
        | "Fetcher" >> beam.Create([self._fetcher])
        | "PrepareFetch" >> beam.Map(lambda fetcher: fetcher.prepare())
    )
    cached, to_fetch = listed | "SplitCached" >> beam.Partition(
        reuse_or_fetch,
        2,
        beam.pvalue.AsDict(cached_index),
        self._fetcher,
        beam.pvalue.AsSingleton(fetch_context),
    )
    encoded, failures = (
        to_fetch
        | "Unkey" >> beam.Values()
        | "FetchAndEncode" >> FetchAndEncode(dataset, self._fetcher, fetch_context)
    )
    if self._progress:
      # On the steps that settle each video, so that the lines come as they do.
      for settled, label in ((encoded, "Encoded"), (failures, "Failed"), (cached, "Cached")):
        _ = settled | f"Progress{label}" >> beam.ParDo(self._progress)
    written = (
        encoded
        | "WriteCache" >> WriteVideoCache(work_dir, self._videos_per_shard)
        | "AsListed" >> beam.Map(lambda v: dataclasses.replace(v, video_id=video_id_of(v.video_id)))
    )
    if not self._read_cached_videos:
      return IngestResult(videos=written, failures=failures)
    reused = (
        cached
        | "CountReused" >> beam.Map(_count_reused)
        | "ShardOf"
        >> beam.Map(lambda kv, index: (index[kv[0]].shard, kv), beam.pvalue.AsDict(cached_index))
        | "ByShard" >> beam.GroupByKey()
        | "ReadCached" >> beam.ParDo(_ReadCachedFn()).with_outputs(FAILURES, main="videos")
    )
    videos = (reused.videos, written) | "AllVideos" >> beam.Flatten()
    failures = (failures, reused[FAILURES]) | "AllFailures" >> beam.Flatten()
    return IngestResult(videos=videos, failures=failures)


def _count_reused(keyed_video):
  counter("videos_reused").inc()
  return keyed_video


# ---- Command line ----

LOG_PREFIX = "[ingest]"

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


PROG = "python -m pipelines.ingest"


def main(argv: Sequence[str] | None = None) -> dict[str, int]:
  """Ingests the dataset into the video cache; prints the counts and the failures."""
  parser = job_parser(
      PROG,
      __doc__.split("\n", 1)[0],
      "Other flags are Beam pipeline options (e.g. --direct_num_workers).",
  )
  add_dataset_flags(parser)
  add_required_flag(parser, "--work_dir", "the video cache (local or gs://)")
  parser.add_argument("--classes", default="", help="comma-separated class names (empty: all)")
  parser.add_argument("--max_videos", type=int, default=None, help="limit the run, for trials")
  parser.add_argument(
      "--videos_per_shard",
      type=int,
      default=DEFAULT_VIDEOS_PER_SHARD,
      help="videos per cache shard",
  )
  parser.add_argument(
      "--failures", default=None, help=f"JSON-lines failure file (None: WORK_DIR/{FAILURES_FILE})"
  )
  parser.add_argument(
      "--no_count_check",
      action="store_true",
      help="skip the check against the official per-split counts",
  )
  add_verbose_flag(parser, "Beam's INFO logs")
  args, beam_args = parser.parse_known_args(argv)
  check_beam_flags(beam_args, PROG)
  configure_logging(argv)
  dataset, splits_location, videos_location = resolve_dataset(
      args.dataset, {flag: getattr(args, flag) for flag in LOCATION_FLAGS}, args.recipe
  )
  failures_path = args.failures or FileSystems.join(args.work_dir, FAILURES_FILE)
  classes = [c for c in args.classes.split(",") if c]
  listing = load_listing(dataset, splits_location, videos_location)
  selected = select_videos(listing, classes or None, args.max_videos)
  check_videos_readable(dataset, videos_location, args.work_dir, selected)
  print(f"{LOG_PREFIX} {len(selected)} videos listed", flush=True)

  options = PipelineOptions(with_local_runner(beam_args))
  pipeline = beam.Pipeline(options=options)
  # Read once: a local job takes the listing as it is.
  local_listing = listing if runs_locally(options) else None
  result = pipeline | "Ingest" >> Ingest(
      videos_location,
      splits_location,
      args.work_dir,
      classes=classes or None,
      max_videos=args.max_videos,
      expected_split_counts=None if args.no_count_check else OFFICIAL_SPLIT_COUNTS,
      videos_per_shard=args.videos_per_shard,
      read_cached_videos=False,
      dataset=dataset,
      progress=ProgressLogger(
          LOG_PREFIX,
          VIDEOS_SETTLED,
          # Progress totals mean something only where one process counts everything.
          len(selected) if runs_in_one_process(options) else None,
      ),
      listing=local_listing,
  )
  _ = result.failures | "WriteFailures" >> WriteFailures(failures_path)
  run = pipeline.run()
  run.wait_until_finish()

  totals = counters(run)
  with FileSystems.open(failures_path) as f:
    records = [json.loads(line) for line in f.read().decode().splitlines() if line]
  print(json.dumps(totals, indent=2, sort_keys=True))
  print(summarize_failures(records))
  print(f"failures: {failures_path}")
  return totals


if __name__ == "__main__":
  # Run the imported module, not __main__, so that workers in other processes
  # can unpickle this module's classes by their real name.
  from pipelines import ingest

  run_main(ingest.main, ingest.PROG, sys.argv[1:])
