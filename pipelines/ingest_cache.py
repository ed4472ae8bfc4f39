"""Ingestion's cache writes and reads: re-encoded videos in and out of `<work_dir>/video_cache`.

`WriteVideoCache` writes videos as they come, a shard at a time, and commits
each shard to the index; `read_cached_video` reads one video's frames by byte
range in the step that needs them, uncommitting a damaged shard so that its
videos are fetched again on the next run.
"""

import dataclasses
import logging

import apache_beam as beam
from apache_beam.utils.windowed_value import WindowedValue

from mmv_core.video import video_cache
from pipelines.common import counter
from pipelines.ingest_fetch import STAGE_CACHE, StageFailure, failure_reason

DEFAULT_VIDEOS_PER_SHARD = 32


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
