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

`Ingest` lists the dataset (`ListVideos`, `mmv_core/datasets/registry.py`) and
fetches each video as its spec's `fetch` says: a member of one ZIP (UCF101:
the central directory is read once, members by byte range, inflated and
CRC-checked) or a whole file (HMDB51, CSV: local, gs:// or https://, with
the retries and deadlines of `mmv_core/video/sources.py`). Each is re-encoded with
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

import json
import sys
import typing
from collections.abc import Sequence

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import PipelineOptions

from mmv_core.datasets import dataset_listing
from mmv_core import datasets
from mmv_core.video import video_cache
from pipelines import dataset_flags
from pipelines.common import WriteFailures, counter, counters
from pipelines.common import add_required_flag, add_verbose_flag, check_beam_flags
from pipelines.common import ProgressLogger, configure_logging, job_parser
from pipelines.common import interrupt_exits, run_main
from pipelines.common import summarize_failures
from pipelines.common import runs_in_one_process, runs_locally, with_local_runner
from pipelines.ingest_cache import DEFAULT_VIDEOS_PER_SHARD, WriteVideoCache
from pipelines.ingest_fetch import FETCHERS, FetchAndEncode, cache_key, video_id_of
from pipelines.ingest_listing import OFFICIAL_SPLIT_COUNTS, ListVideos, check_videos_readable
from pipelines.ingest_listing import load_listing, select_videos

FAILURES_FILE = "ingest_failures.jsonl"


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

PROG = "python -m pipelines.ingest"
LOG_PREFIX = "[ingest]"


def main(argv: Sequence[str] | None = None) -> dict[str, int]:
  """Ingests the dataset into the video cache; prints the counts and the failures."""
  parser = job_parser(
      PROG,
      __doc__.split("\n", 1)[0],
      "Other flags are Beam pipeline options (e.g. --direct_num_workers).",
  )
  dataset_flags.add_dataset_flags(parser)
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
  dataset, splits_location, videos_location = dataset_flags.resolve_dataset(
      args.dataset,
      {flag: getattr(args, flag) for flag in dataset_flags.LOCATION_FLAGS},
      args.recipe,
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
