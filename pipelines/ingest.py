"""Ingestion on Beam: a dataset's listing -> sharded fetch -> JPEG frames -> cache.

Stage: the first stage of every job. Usage from another pipeline:

    result = p | Ingest(videos_location, splits_location, work_dir,
                        dataset=datasets.HMDB51)   # UCF101 by default
    result.videos    # PCollection[video_cache.VideoRef]: video_id, label,
                     #   label_name, and where its frames are cached
    result.failures  # PCollection[dict]: {"video_id", "stage", "reason"}
    result.listed    # PCollection[ListedVideo]: every video selected
    result.failures | WriteFailures(path)
    frames = read_cached_video(ref)   # in the step that needs them

`Ingest` lists the dataset (`ListVideos`, `mmv_core/datasets.py`) and
fetches each video as its spec's `fetch` says: a member of one ZIP (UCF101:
the central directory is read once, members by byte range, inflated and
CRC-checked) or a whole file (HMDB51, CSV: local, gs:// or https://, with
the retries and deadlines of `mmv_core/sources.py`). Each is re-encoded with
the dataset's encoding recipe, a CSV segment cut first, on the worker that
processes it (`FetchAndEncode`, as many videos at once as it is given
threads), and written to `<work_dir>/video_cache` as it comes
(`WriteVideoCache`), under its cache key (`cache_key`: dataset, recipe and
location for files; UCF101's bare ids, as its caches always had). Videos
already cached are reused: a ZIP member only while the archive still holds
it with the CRC-32 recorded with it (a cache filled from another archive is
not served); if the central directory cannot be read, cached videos are
served as they are (counted as videos_reused_unverified), the cache then
being the only copy. With `read_cached_videos=False`, `videos` holds only
the newly encoded videos (for a run that only fills the cache).

Frames never travel between stages: `videos` holds references, a few
hundred bytes each, and the step that cuts clips reads one video's frames
by byte range (`read_cached_video`), so that no runner ever holds the
dataset's frames (docs/reliability.md, "Memory").

Every video listed in the splits either reaches `videos` or `failures`, once;
failure stages are `fetch` (not in the ZIP, a malformed or duplicated entry,
a missing file, unreadable, too slow), `extract` (corrupt member, CRC-32 mismatch, inflating
past its declared size) and `encode` (not a decodable video); reading a
referenced video's frames fails at `cache` (a damaged cache shard: it is
uncommitted, so its videos are fetched again on the next run). Any other
exception while processing one video fails that video at the stage it was
in, with the exception's type in the reason.

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
import os
import sys
import typing
import zlib
from collections.abc import Iterator, Sequence

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.utils.windowed_value import WindowedValue

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
from pipelines.common import OrderedLookahead, ProgressLogger, configure_logging, job_parser
from pipelines.common import interrupt_exits, run_main
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


def fetch_and_encode_or_failure(
    dataset: datasets.DatasetSpec, fetcher, context, video: dataset_listing.ListedVideo
) -> video_cache.CachedVideo | dict:
  """`fetch_and_encode`, or the video's failure record (counted)."""
  try:
    return fetch_and_encode(dataset, fetcher, context, video)
  except StageFailure as e:
    return failure(video.video_id, e.stage, e.reason)


class _FetchAndEncodeFn(beam.DoFn):
  """ListedVideo -> CachedVideo, or a failure record on the FAILURES output.

  Up to `parallelism` videos are fetched and re-encoded at once, each in its
  own thread (ffmpeg is a process of its own), emitted in the order taken.
  """

  def __init__(self, dataset: datasets.DatasetSpec, fetcher, parallelism: int):
    super().__init__()
    self._dataset = dataset
    self._fetcher = fetcher
    self._parallelism = parallelism

  def start_bundle(self):
    self._context = None
    self._lookahead = OrderedLookahead(
        self._encode, self._parallelism, thread_name="fetch_and_encode"
    )

  def process(
      self,
      video: dataset_listing.ListedVideo,
      context,
      timestamp=beam.DoFn.TimestampParam,
      window=beam.DoFn.WindowParam,
  ):
    self._context = context
    self._lookahead.submit(video, timestamp, window)
    yield from self._emit(self._parallelism)

  def finish_bundle(self):
    yield from self._emit(0)
    self._lookahead.close()

  def teardown(self):
    if hasattr(self, "_lookahead"):
      self._lookahead.close(wait=False)

  def _encode(self, video: dataset_listing.ListedVideo):
    return fetch_and_encode_or_failure(self._dataset, self._fetcher, self._context, video)

  def _emit(self, keep: int):
    for result, _, timestamp, window in self._lookahead.ready(keep):
      if isinstance(result, dict):
        yield beam.pvalue.TaggedOutput(FAILURES, WindowedValue(result, timestamp, (window,)))
      else:
        yield WindowedValue(result, timestamp, (window,))


class FetchAndEncode(beam.PTransform):
  """PCollection[ListedVideo] -> (CachedVideo PCollection, failures PCollection).

  The videos are reshuffled so that they are fetched and encoded in
  parallel across workers.

  Args:
    dataset: the videos' dataset.
    fetcher: a `FETCHERS` entry for `dataset.fetch`.
    context: a one-element PCollection, what `fetcher.prepare()` returned.
    parallelism: videos a worker thread fetches and re-encodes at once.
  """

  def __init__(
      self,
      dataset: datasets.DatasetSpec,
      fetcher,
      context: beam.PCollection,
      parallelism: int = 1,
  ):
    super().__init__()
    self._dataset = dataset
    self._fetcher = fetcher
    self._context = context
    self._parallelism = parallelism

  def expand(self, videos):
    outputs = (
        videos
        | "Spread" >> beam.Reshuffle()
        | "FetchEncode"
        >> beam.ParDo(
            _FetchAndEncodeFn(self._dataset, self._fetcher, self._parallelism),
            beam.pvalue.AsSingleton(self._context),
        ).with_outputs(FAILURES, main="videos")
    )
    return outputs["videos"], outputs[FAILURES]


# ---- Cache ----


class _WriteShardFn(beam.DoFn):
  """CachedVideo -> its IndexEntry, once the shard holding it is committed.

  Each video's record is written as it comes and its frames let go; a shard
  is committed every `videos_per_shard` videos and at the end of a bundle.
  """

  def __init__(self, work_dir: str, videos_per_shard: int):
    super().__init__()
    self._work_dir = work_dir
    self._videos_per_shard = videos_per_shard

  def start_bundle(self):
    self._writer = video_cache.ShardWriter(self._work_dir)
    self._placement: list[tuple] = []

  def process(
      self,
      video: video_cache.CachedVideo,
      timestamp=beam.DoFn.TimestampParam,
      window=beam.DoFn.WindowParam,
  ):
    self._writer.add(video)
    self._placement.append((timestamp, window))
    if len(self._writer) >= self._videos_per_shard:
      yield from self._commit()

  def finish_bundle(self):
    yield from self._commit()

  def teardown(self):
    # A bundle that failed or was interrupted leaves no file in the cache's tmp/.
    if hasattr(self, "_writer"):
      self._writer.discard()

  def _commit(self):
    entries = self._writer.commit()
    counter("videos_cached").inc(len(entries))
    for entry, (timestamp, window) in zip(entries, self._placement):
      yield WindowedValue(entry, timestamp, (window,))
    self._placement = []


class WriteVideoCache(beam.PTransform):
  """PCollection[CachedVideo] -> their IndexEntry, each once its video is committed to the cache."""

  def __init__(self, work_dir: str, videos_per_shard: int = DEFAULT_VIDEOS_PER_SHARD):
    super().__init__()
    self._work_dir = work_dir
    self._videos_per_shard = videos_per_shard

  def expand(self, videos):
    return videos | "WriteShard" >> beam.ParDo(
        _WriteShardFn(self._work_dir, self._videos_per_shard)
    )


def read_cached_video(ref: video_cache.VideoRef) -> video_cache.CachedVideo:
  """The frames of `ref`, under its listed id and labels.

  A video whose record is damaged (its shard missing, truncated or corrupt,
  or holding another video there) is uncommitted, so that the next run
  fetches it again instead of failing it forever; the shard's other videos
  stay cached.

  Raises:
    StageFailure: at `cache`, the video cannot be read.
  """
  try:
    cached = video_cache.read_video(ref.entry)
  except video_cache.CacheError as e:
    raise StageFailure(STAGE_CACHE, _uncommit(ref.entry, str(e))) from e
  except Exception as e:  # pylint: disable=broad-except  # E.g. storage unreachable for a while.
    raise StageFailure(STAGE_CACHE, failure_reason(e)) from e
  return dataclasses.replace(
      cached, video_id=ref.video_id, label=ref.label, label_name=ref.label_name
  )


def _uncommit(entry: video_cache.IndexEntry, damage: str) -> str:
  """Uncommits a damaged video from the cache; returns its failure reason."""
  try:
    video_cache.discard_video(entry)
  except Exception as e:  # pylint: disable=broad-except  # The video fails either way.
    logging.warning("%s: could not drop a damaged video from the cache: %s", entry.shard, e)
    return f"{damage}; could not drop it from the cache ({e})"
  return f"{damage}; dropped from the cache, fetched again next run"


# ---- Everything together ----


class IngestResult(typing.NamedTuple):
  """What `Ingest` gives: references to frames, never frames (see video_cache.VideoRef).

  Attributes:
    videos: VideoRef of each listed video that is cached, newly or before.
    failures: failure records of the videos that could not be.
    listed: ListedVideo of every video the run selected.
  """

  videos: beam.PCollection
  failures: beam.PCollection
  listed: beam.PCollection


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


def listed_ref(entry: video_cache.IndexEntry) -> video_cache.VideoRef:
  """The reference to a video this run cached (its entry holds the listing's labels)."""
  return video_cache.VideoRef(video_id_of(entry.video_id), entry.label, entry.label_name, entry)


def cached_ref(
    keyed_video: tuple[str, dataset_listing.ListedVideo], cached: dict[str, video_cache.IndexEntry]
) -> video_cache.VideoRef:
  """The reference to a video found in the cache, under the current listing's labels."""
  key, video = keyed_video
  counter("videos_reused").inc()
  return video_cache.VideoRef(video.video_id, video.label, video.label_name, cached[key])


# What `Ingest`'s progress lines count.
VIDEOS_SETTLED = "videos fetched and re-encoded, failed, or found in the cache"


class Ingest(beam.PTransform):
  """PBegin -> IngestResult(videos, failures, listed); see the module docstring.

  Args:
    videos_location: where the videos are: UCF101's ZIP (gs://, https:// or
      a local path), the folder or prefix of a dataset of files; None: the
      dataset's default.
    splits_location: the split definitions (UCF101's split-list zip, HMDB51's
      split folder, a CSV folder); None: the dataset's default.
    work_dir: where the video cache lives (local or gs://).
    classes, max_videos, expected_split_counts, listing: as in `ListVideos`.
    videos_per_shard: most videos in one cache shard.
    read_cached_videos: also give the videos that were already cached in
      `videos`; False when the run only fills the cache.
    dataset: the dataset, UCF101 by default.
    progress: counts each video as its fate is settled: fetched and
      re-encoded, failed, or found in the cache.
    parallelism: videos a worker thread fetches and re-encodes at once
      (`common.host_threads`).
    skip: ids of listed videos not to ingest (a resumed run's written ones);
      they are still in `listed`.
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
      parallelism: int = 1,
      skip: frozenset[str] = frozenset(),
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
    self._parallelism = parallelism
    self._skip = skip

  def expand(self, pbegin):
    work_dir = self._work_dir
    dataset = self._dataset
    listed = pbegin | "List" >> self._list
    to_ingest = listed
    if self._skip:
      to_ingest = listed | "Skip" >> beam.Filter(
          lambda video, skip: video.video_id not in skip, self._skip
      )
    keyed = to_ingest | "KeyByCacheKey" >> beam.Map(
        lambda video: (cache_key(dataset, video), video)
    )
    cached_index = (
        pbegin
        | "WorkDir" >> beam.Create([work_dir])
        | "ReadCacheIndex" >> beam.FlatMap(lambda d: video_cache.read_index(d, locate=True).items())
    )
    fetch_context = (
        pbegin
        | "Fetcher" >> beam.Create([self._fetcher])
        | "PrepareFetch" >> beam.Map(lambda fetcher: fetcher.prepare())
    )
    cached, to_fetch = keyed | "SplitCached" >> beam.Partition(
        reuse_or_fetch,
        2,
        beam.pvalue.AsDict(cached_index),
        self._fetcher,
        beam.pvalue.AsSingleton(fetch_context),
    )
    encoded, failures = (
        to_fetch
        | "Unkey" >> beam.Values()
        | "FetchAndEncode"
        >> FetchAndEncode(dataset, self._fetcher, fetch_context, self._parallelism)
    )
    if self._progress:
      # On the steps that settle each video, so that the lines come as they do.
      for settled, label in ((encoded, "Encoded"), (failures, "Failed"), (cached, "Cached")):
        _ = settled | f"Progress{label}" >> beam.ParDo(self._progress)
    written = (
        encoded
        | "WriteCache" >> WriteVideoCache(work_dir, self._videos_per_shard)
        | "AsListed" >> beam.Map(listed_ref)
    )
    if not self._read_cached_videos:
      return IngestResult(videos=written, failures=failures, listed=listed)
    reused = cached | "CachedRefs" >> beam.Map(cached_ref, beam.pvalue.AsDict(cached_index))
    videos = (reused, written) | "AllVideos" >> beam.Flatten()
    return IngestResult(videos=videos, failures=failures, listed=listed)


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
  with interrupt_exits(
      PROG, lambda: "interrupted; the videos re-encoded so far are in the cache: rerun to go on"
  ):
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
