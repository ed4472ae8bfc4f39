"""UCF101 ingestion on Beam: split lists -> sharded ranged fetch -> JPEG frames -> cache.

Stage: the first stage of every job. Usage from another pipeline:

    result = p | Ingest(video_zip, splits_zip, work_dir)
    result.videos    # PCollection[video_cache.CachedVideo]: video_id, label,
                     #   label_name, frames (JPEG bytes), source_crc32
    result.failures  # PCollection[dict]: {"video_id", "stage", "reason"}
    result.failures | WriteFailures(path)

`Ingest` lists the split-list zip (`ListVideos`) and reads the video ZIP's
central directory once. It reuses videos already in `<work_dir>/video_cache`
whose source member still has the CRC-32 recorded with them (nothing is
fetched for them; a cache filled from another archive is not served), and
for the rest fetches, inflates, CRC-checks and re-encodes each member on the
worker that processes it (`FetchAndEncode`) and commits the results to the
cache (`WriteVideoCache`). If the central directory cannot be read, cached
videos are served as they are (counted as videos_reused_unverified): the
cache is then the only copy. With `read_cached_videos=False`, `videos` holds
only the newly encoded videos and cached ones are not read at all (for a run
that only fills the cache). `p | ReadVideoCache(work_dir)` reads the whole cache
back as a PCollection of `CachedVideo`.

Every video listed in the splits either reaches `videos` or `failures`, once;
failure stages are `fetch` (not in the ZIP, a malformed or duplicated entry,
unreadable, too slow), `extract` (corrupt member, CRC-32 mismatch, inflating
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
"""

import argparse
import contextlib
import dataclasses
import json
import logging
import sys
import typing
from collections.abc import Iterable, Iterator, Sequence

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import PipelineOptions

from mmv_core import encode
from mmv_core import sources
from mmv_core import ucf101
from mmv_core import video_cache
from mmv_core import zip_index
from pipelines.common import FAILURES, UsageError, WriteFailures, counter, counters, failure
from pipelines.common import run_main, summarize_failures, with_local_runner

STAGE_FETCH = "fetch"
STAGE_EXTRACT = "extract"
STAGE_ENCODE = "encode"
STAGE_CACHE = "cache"
DEFAULT_VIDEOS_PER_SHARD = 32
FAILURES_FILE = "ingest_failures.jsonl"
# Errors our own code raises with a message that says it all.
_EXPLAINED_ERRORS = (sources.SourceError, zip_index.ZipFormatError, encode.EncodeError,
                     video_cache.CacheError)


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

def count_videos(splits_zip: str, classes: Sequence[str] | None,
                 max_videos: int | None) -> int:
  """How many videos a run lists: the split lists read and the selection made,
  before the job starts.

  Raises:
    UsageError: the split-list zip cannot be read or is malformed (e.g. a
      video under two classes), or the selection is impossible (an unknown
      class, a max_videos below 1); the message says where.
  """
  try:
    return len(ucf101.select_videos(ucf101.load_split_lists(splits_zip), classes, max_videos))
  except (ValueError, sources.SourceError) as e:  # ValueError: SplitListError or max_videos.
    raise UsageError(str(e)) from e


def list_videos(splits_zip: str, classes: Sequence[str] | None, max_videos: int | None,
                expected_split_counts: dict | None) -> Iterator[ucf101.VideoRecord]:
  """The videos to ingest; logs and counts differences from the official split sizes."""
  split_lists = ucf101.load_split_lists(splits_zip)
  if expected_split_counts is not None:
    for difference in split_lists.count_differences(expected_split_counts):
      logging.warning("%s: %s", splits_zip, difference)
      counter("split_count_differences").inc()
  for video in ucf101.select_videos(split_lists, classes, max_videos):
    counter("videos_listed").inc()
    yield video


class ListVideos(beam.PTransform):
  """PBegin -> PCollection[ucf101.VideoRecord] from the split-list zip, read at run time.

  Args:
    splits_zip: location of the split-list zip (local, gs:// or https://).
    classes: class names to keep (all when None).
    max_videos: keep at most this many, round-robin over classes.
    expected_split_counts: per-split (train, test) counts to check against;
      None skips the check (subsets, synthetic data).
  """

  def __init__(self, splits_zip: str, classes: Sequence[str] | None = None,
               max_videos: int | None = None,
               expected_split_counts: dict | None = ucf101.EXPECTED_SPLIT_COUNTS):
    super().__init__()
    self._splits_zip = splits_zip
    self._classes = tuple(classes) if classes else None
    self._max_videos = max_videos
    self._expected = expected_split_counts

  def expand(self, pbegin):
    return (pbegin
            | "SplitsZip" >> beam.Create([self._splits_zip])
            | "Parse" >> beam.FlatMap(list_videos, self._classes, self._max_videos,
                                      self._expected))


# ---- Fetch and encode ----

def read_zip_index(video_zip: str) -> zip_index.ZipIndex:
  """Central directory of the video ZIP, read with ranged reads."""
  size = sources.size(video_zip)
  if video_zip == ucf101.VIDEO_ZIP_URL and size != ucf101.VIDEO_ZIP_BYTES:
    raise zip_index.ZipFormatError(
        f"{video_zip}: {size} bytes, the pinned mirror has {ucf101.VIDEO_ZIP_BYTES}")
  return zip_index.read_index(lambda start, length: sources.read_range(video_zip, start, length),
                              size, source=video_zip)


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


def fetch_member(video_zip: str, index: zip_index.ZipIndex,
                 member: zip_index.ZipMember) -> bytes:
  """The member's compressed bytes; transient errors are retried and counted."""
  def read(start: int, length: int) -> bytes:
    data = sources.read_range(video_zip, start, length,
                              on_retry=lambda _: counter("fetch_retries").inc())
    counter("bytes_fetched").inc(len(data))
    return data
  return zip_index.read_member_data(read, index, member, source=video_zip)


def fetch_and_encode(video_zip: str, index: zip_index.ZipIndex | str,
                     video: ucf101.VideoRecord) -> video_cache.CachedVideo:
  """Fetches, inflates, CRC-checks and re-encodes one video.

  Args:
    video_zip: the archive's location.
    index: its central directory, or why it could not be read.
    video: the video to fetch.

  Raises:
    StageFailure: at the stage that failed, for any reason.
  """
  if isinstance(index, str):
    raise StageFailure(STAGE_FETCH, index)
  member = index.members.get(video.member_name)
  if member is None:
    raise StageFailure(STAGE_FETCH, index.unreadable.get(
        video.member_name,
        f"listed in the splits but {video.member_name} is not in {video_zip}"))
  with at_stage(STAGE_FETCH):
    data = fetch_member(video_zip, index, member)
  counter("videos_fetched").inc()
  with at_stage(STAGE_EXTRACT):
    content = zip_index.extract(member, data, source=video_zip)
  with at_stage(STAGE_ENCODE):
    frames = encode.encode_jpeg_frames(content, name=member.name)
  counter("videos_encoded").inc()
  counter("frames_encoded").inc(len(frames))
  return video_cache.CachedVideo(
      video_id=video.video_id, label=video.label, label_name=video.label_name,
      frames=tuple(frames), source_crc32=member.crc32)


class _FetchAndEncodeFn(beam.DoFn):
  """VideoRecord -> CachedVideo, or a failure record on the FAILURES output."""

  def __init__(self, video_zip: str):
    super().__init__()
    self._video_zip = video_zip

  def process(self, video: ucf101.VideoRecord, index: zip_index.ZipIndex | str):
    try:
      encoded = fetch_and_encode(self._video_zip, index, video)
    except StageFailure as e:
      yield beam.pvalue.TaggedOutput(FAILURES, failure(video.video_id, e.stage, e.reason))
      return
    yield encoded


class FetchAndEncode(beam.PTransform):
  """PCollection[VideoRecord] -> (CachedVideo PCollection, failures PCollection).

  The videos are reshuffled so that members are fetched and encoded in
  parallel across workers.

  Args:
    video_zip: the archive's location.
    index: a one-element PCollection, the archive's central directory or why
      it could not be read (`read_zip_index_or_reason`).
  """

  def __init__(self, video_zip: str, index: beam.PCollection):
    super().__init__()
    self._video_zip = video_zip
    self._index = index

  def expand(self, videos):
    outputs = (videos
               | "Spread" >> beam.Reshuffle()
               | "FetchEncode" >> beam.ParDo(_FetchAndEncodeFn(self._video_zip),
                                             beam.pvalue.AsSingleton(self._index))
               .with_outputs(FAILURES, main="videos"))
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
    return (videos
            | "Batch" >> beam.BatchElements(min_batch_size=self._videos_per_shard,
                                            max_batch_size=self._videos_per_shard)
            | "WriteShard" >> beam.ParDo(_WriteShardFn(self._work_dir)))


def _drop_damaged_shard(shard: str, damage: str) -> str:
  """Uncommits a damaged shard; returns the failure reason for its videos."""
  try:
    video_cache.discard_shard(shard)
  except Exception as e:  # pylint: disable=broad-except  # Its videos fail either way.
    logging.warning("%s: could not drop the damaged shard from the cache: %s", shard, e)
    return f"{damage}; could not drop the shard from the cache ({e})"
  return f"{damage}; shard dropped from the cache, its videos are fetched again next run"


def read_cached_videos(shard: str, listed: dict[str, ucf101.VideoRecord]
                       ) -> tuple[list[video_cache.CachedVideo], dict[str, str]]:
  """Reads the `listed` videos from one cache shard.

  Labels come from the current split lists, not from the cache, so a cache
  filled under other lists cannot leak stale labels. A damaged shard (missing,
  truncated, corrupt, or lacking a video its index lists) is uncommitted, so
  that the next run fetches its videos again instead of failing them forever.

  Returns:
    (the videos read, the reason by video id for each that could not be).
  """
  try:
    cached = list(video_cache.read_shard(shard, listed))
  except video_cache.CacheError as e:
    return [], dict.fromkeys(listed, _drop_damaged_shard(shard, str(e)))
  except Exception as e:  # pylint: disable=broad-except  # E.g. storage unreachable for a while.
    return [], dict.fromkeys(listed, failure_reason(e))
  lacking = sorted(set(listed) - {video.video_id for video in cached})
  reasons = {}
  if lacking:
    reason = _drop_damaged_shard(shard, f"{shard}: the cache index lists videos the shard lacks")
    reasons = dict.fromkeys(lacking, reason)
  videos = [dataclasses.replace(video, label=listed[video.video_id].label,
                                label_name=listed[video.video_id].label_name)
            for video in cached]
  return videos, reasons


class _ReadCachedFn(beam.DoFn):
  """(shard path, VideoRecords cached in it) -> CachedVideo, or failures."""

  def process(self, shard_and_videos: tuple[str, Iterable[ucf101.VideoRecord]]):
    shard, videos = shard_and_videos
    cached, reasons = read_cached_videos(shard, {v.video_id: v for v in videos})
    yield from cached
    for video_id, reason in sorted(reasons.items()):
      yield beam.pvalue.TaggedOutput(FAILURES, failure(video_id, STAGE_CACHE, reason))


class ReadVideoCache(beam.PTransform):
  """PBegin -> PCollection[CachedVideo]: every video committed under `work_dir`, once each."""

  def __init__(self, work_dir: str):
    super().__init__()
    self._work_dir = work_dir

  def expand(self, pbegin):
    return (pbegin
            | "WorkDir" >> beam.Create([self._work_dir])
            | "Index" >> beam.FlatMap(
                lambda work_dir: [(e.shard, e.video_id)
                                  for e in video_cache.read_index(work_dir).values()])
            | "ByShard" >> beam.GroupByKey()
            | "ReadShard" >> beam.FlatMap(lambda kv: video_cache.read_shard(*kv)))


# ---- Everything together ----

class IngestResult(typing.NamedTuple):
  videos: beam.PCollection
  failures: beam.PCollection


_REUSE, _FETCH = 0, 1


def reuse_or_fetch(video: ucf101.VideoRecord, _, cached: dict[str, video_cache.IndexEntry],
                   index: zip_index.ZipIndex | str) -> int:
  """`_REUSE` a cached video whose source member is unchanged, else `_FETCH` it.

  Unchanged: the archive holds the member with the CRC-32 recorded in the
  cache. An archive that cannot be read cannot tell: the cached copy is
  served, as the only one there is. (`_` is the number of partitions, which
  `beam.Partition` passes.)
  """
  entry = cached.get(video.video_id)
  if entry is None:
    return _FETCH
  if isinstance(index, str):
    counter("videos_reused_unverified").inc()
    return _REUSE
  member = index.members.get(video.member_name)
  if member is None or member.crc32 != entry.source_crc32:
    counter("videos_stale").inc()
    return _FETCH
  return _REUSE


class Ingest(beam.PTransform):
  """PBegin -> IngestResult(videos, failures); see the module docstring.

  Args:
    video_zip: the UCF101 ZIP mirror (gs://, https:// or a local path).
    splits_zip: the split-list zip.
    work_dir: where the video cache lives (local or gs://).
    classes, max_videos, expected_split_counts: as in `ListVideos`.
    videos_per_shard: most videos in one cache shard.
    read_cached_videos: also read videos that were already cached into
      `videos`; False when the run only fills the cache.
  """

  def __init__(self, video_zip: str = ucf101.VIDEO_ZIP_URL,
               splits_zip: str = ucf101.SPLITS_ZIP_URL, work_dir: str = "",
               classes: Sequence[str] | None = None, max_videos: int | None = None,
               expected_split_counts: dict | None = ucf101.EXPECTED_SPLIT_COUNTS,
               videos_per_shard: int = DEFAULT_VIDEOS_PER_SHARD,
               read_cached_videos: bool = True):
    super().__init__()
    if not work_dir:
      raise ValueError("Ingest needs a work_dir for its video cache")
    self._video_zip = video_zip
    self._splits_zip = splits_zip
    self._work_dir = work_dir
    self._list = ListVideos(splits_zip, classes, max_videos, expected_split_counts)
    self._videos_per_shard = videos_per_shard
    self._read_cached_videos = read_cached_videos

  def expand(self, pbegin):
    work_dir = self._work_dir
    listed = pbegin | "List" >> self._list
    cached_index = (pbegin
                    | "WorkDir" >> beam.Create([work_dir])
                    | "ReadCacheIndex" >> beam.FlatMap(
                        lambda d: video_cache.read_index(d).items()))
    zip_central_directory = (pbegin
                             | "VideoZip" >> beam.Create([self._video_zip])
                             | "ReadCentralDirectory" >> beam.Map(read_zip_index_or_reason))
    cached, to_fetch = listed | "SplitCached" >> beam.Partition(
        reuse_or_fetch, 2, beam.pvalue.AsDict(cached_index),
        beam.pvalue.AsSingleton(zip_central_directory))
    encoded, failures = to_fetch | "FetchAndEncode" >> FetchAndEncode(
        self._video_zip, zip_central_directory)
    written = encoded | "WriteCache" >> WriteVideoCache(work_dir, self._videos_per_shard)
    if not self._read_cached_videos:
      return IngestResult(videos=written, failures=failures)
    reused = (cached
              | "CountReused" >> beam.Map(_count_reused)
              | "ShardOf" >> beam.Map(lambda v, index: (index[v.video_id].shard, v),
                                      beam.pvalue.AsDict(cached_index))
              | "ByShard" >> beam.GroupByKey()
              | "ReadCached" >> beam.ParDo(_ReadCachedFn()).with_outputs(FAILURES, main="videos"))
    videos = (reused.videos, written) | "AllVideos" >> beam.Flatten()
    failures = (failures, reused[FAILURES]) | "AllFailures" >> beam.Flatten()
    return IngestResult(videos=videos, failures=failures)


def _count_reused(video: ucf101.VideoRecord) -> ucf101.VideoRecord:
  counter("videos_reused").inc()
  return video


def main(argv: Sequence[str] | None = None) -> dict[str, int]:
  parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
  parser.add_argument("--video_zip", default=ucf101.VIDEO_ZIP_URL)
  parser.add_argument("--splits_zip", default=ucf101.SPLITS_ZIP_URL)
  parser.add_argument("--work_dir", required=True)
  parser.add_argument("--classes", default="",
                      help="comma-separated class names (default: all)")
  parser.add_argument("--max_videos", type=int, default=None)
  parser.add_argument("--videos_per_shard", type=int, default=DEFAULT_VIDEOS_PER_SHARD)
  parser.add_argument("--failures", default=None,
                      help=f"JSON-lines failure file (default: WORK_DIR/{FAILURES_FILE})")
  parser.add_argument("--no_count_check", action="store_true",
                      help="skip the check against the official per-split counts")
  args, beam_args = parser.parse_known_args(argv)
  failures_path = args.failures or FileSystems.join(args.work_dir, FAILURES_FILE)
  classes = [c for c in args.classes.split(",") if c]
  logging.info("%d videos listed", count_videos(args.splits_zip, classes or None, args.max_videos))

  pipeline = beam.Pipeline(options=PipelineOptions(with_local_runner(beam_args)))
  result = pipeline | "Ingest" >> Ingest(
      args.video_zip, args.splits_zip, args.work_dir, classes=classes or None,
      max_videos=args.max_videos,
      expected_split_counts=None if args.no_count_check else ucf101.EXPECTED_SPLIT_COUNTS,
      videos_per_shard=args.videos_per_shard, read_cached_videos=False)
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
  logging.getLogger().setLevel(logging.INFO)
  # Run the imported module, not __main__, so that workers in other processes
  # can unpickle this module's classes by their real name.
  from pipelines import ingest
  run_main(ingest.main, "python -m pipelines.ingest", sys.argv[1:])
