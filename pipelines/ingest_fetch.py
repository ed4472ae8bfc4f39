"""Ingestion's fetch and re-encoding: one video's bytes to JPEG frames, on a worker.

Each video is fetched as its dataset's spec says: a member of one ZIP (the
central directory is read once, members by byte range, inflated and
CRC-checked) or a whole file (local, gs:// or https://, with the retries and
deadlines of `mmv_core/video/sources.py`), then re-encoded with the dataset's
encoding recipe (`FetchAndEncode`, as many videos at once as it is given
threads). A video that fails becomes a `StageFailure` at the stage it was in.
"""

import contextlib
import hashlib
import logging
import zlib

import apache_beam as beam
from apache_beam.utils.windowed_value import WindowedValue

from mmv_core.datasets import dataset_listing
from mmv_core import datasets
from mmv_core.video import encode
from mmv_core.video import encoding_recipes
from mmv_core.video import sources
from mmv_core.datasets import ucf101
from mmv_core.video import video_cache
from mmv_core.video import zip_index
from pipelines.common import FAILURES, counter, failure
from pipelines.common import OrderedLookahead

STAGE_FETCH = "fetch"
STAGE_EXTRACT = "extract"
STAGE_ENCODE = "encode"
STAGE_CACHE = "cache"
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
