"""The main job: a dataset's videos in, MMV clip embeddings out as TFRecords.

    python -m pipelines.embed --checkpoint_path mmv_s3d.pkl \
        --work_dir /tmp/mmv_work --output_dir /tmp/mmv_out \
        [--dataset=hmdb51 --splits_dir ... --video_root ...]

`--dataset` (docs/datasets.md) names where the videos come from, how they
are listed and re-encoded, and the sampling defaults of its protocol; the
sampling flags override them (pipelines/embed_config.py). UCF101 is the
default.

Stages: `Ingest` (listing, sharded fetch, ffmpeg re-encoding into the video
cache; pipelines/ingest.py) gives a reference to each video's cached frames
-> Reshuffle of the references (spreads videos over workers) -> `EmbedClips`,
one fused step on the accelerator worker: `SampleClipsFn` reads a video's
JPEG frames from the cache, decodes them once and cuts `--num_train_clips`
seeded training clips and `--num_test_windows` test windows, in threads,
`--prefetch_videos` videos ahead, while RunInference with
`JaxEmbeddingHandler` embeds earlier clips on the device; `AssembleVideosFn`
collects a video's embeddings as they come back and writes them all (or
fails the video) when its last clip is in -> `OUTPUT_DIR/embeddings/*.tfrecord`
(`tf.train.Example`s, mmv_core/embeddings/schema.py).

Frames, clips and embeddings never go through a grouping: what a runner
holds between stages is a few hundred bytes per video, and a worker holds
the frames and clips of the videos in flight (docs/reliability.md,
"Memory"). The last step reconciles the written shards and failure records
with the selected videos (pipelines/reconcile.py) and writes
`OUTPUT_DIR/run.json`; `main` exits with status 1 if any video is
unaccounted for. Also written: `OUTPUT_DIR/failures/failures.jsonl`, one
JSON line per video that failed, with stage and reason.
"""

import collections
import json
import logging
import sys
import time
import typing
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence

import apache_beam as beam
import numpy as np
from apache_beam.io.filesystems import FileSystems
from apache_beam.ml.inference.base import KeyedModelHandler, ModelHandler
from apache_beam.ml.inference.base import RunInference
from apache_beam.options.pipeline_options import PipelineOptions, TestOptions
from apache_beam.transforms.window import GlobalWindows
from apache_beam.utils.windowed_value import WindowedValue

from mmv_core import checkpoints
from mmv_core.datasets import dataset_listing
from mmv_core.embeddings import example_proto
from mmv_core.embeddings import schema
from mmv_core import video
from mmv_core.embedder_config import EmbedderConfig
from mmv_core.models.names import VID_REPR
from mmv_core.video.video_cache import CachedVideo, VideoRef
from pipelines import embed_output
from pipelines import embed_summary
from pipelines import ingest
from pipelines.ingest_listing import check_videos_readable, load_listing, select_videos
from pipelines import ingest_cache
from pipelines import ingest_fetch
from pipelines import reconcile
from pipelines import run_records
from pipelines.common import FAILURES, IN_PROCESS_RUNNER_ARGS, OrderedLookahead, ProgressLogger
from pipelines.common import UsageError, WriteFailures, configure_logging, count_failure, counter
from pipelines.common import distribution, failure_record, host_threads, interrupt_exits, run_main
from pipelines.common import runs_in_one_process, runs_locally, with_local_runner
from pipelines.embed_config import LOG_PREFIX, PROG, EmbedJobConfig, parse_args, settings_problems
from pipelines.jax_inference import JaxEmbeddingHandler
from pipelines.ownership import claimed_by_this_process

# Starts the log line of a finished run's `job_timings`, as JSON.
TIMINGS_PREFIX = f"{LOG_PREFIX} timings "
STAGE_SAMPLE = "sample"
STAGE_EMBED = "embed"
WRITTEN = "written"
# What the progress lines count.
VIDEOS_EMBEDDED = "videos embedded"


class ClipKey(typing.NamedTuple):
  """What identifies one clip through inference."""

  video_id: str
  label: int
  label_name: str
  clip_type: str
  clip_index: int


# ---- Clip sampling ----


def cut_clips(cached: CachedVideo, config: EmbedJobConfig) -> Iterator[tuple[ClipKey, np.ndarray]]:
  """All clips of one video: uint8 [T, crop, crop, 3] each, with its key.

  Training clips are seeded by video id, so a re-run cuts the same clips.
  """
  train, test = video.clips_from_jpegs(
      cached.frames,
      num_train_clips=config.num_train_clips,
      num_test_windows=config.num_test_windows,
      num_frames=config.num_frames,
      stride=config.stride,
      min_resize=config.min_resize,
      crop_size=config.crop_size,
      seed=video.video_seed(cached.video_id, config.seed),
      exact_train_clips=config.exact_train_clips,
  )
  for clip_type, clips in ((schema.CLIP_TYPE_TRAIN, train), (schema.CLIP_TYPE_TEST, test)):
    for index, clip in enumerate(clips):
      yield ClipKey(cached.video_id, cached.label, cached.label_name, clip_type, index), clip


def sample_clips(ref: VideoRef, config: EmbedJobConfig) -> Iterator[tuple[ClipKey, np.ndarray]]:
  """`cut_clips` of the video `ref` points to, read from the cache.

  Raises:
    ingest_fetch.StageFailure: at `cache`, the frames cannot be read.
  """
  return cut_clips(ingest_cache.read_cached_video(ref), config)


SampleFn = Callable[[VideoRef, EmbedJobConfig], Iterable[tuple[ClipKey, np.ndarray]]]


def sample_video(
    ref: VideoRef, config: EmbedJobConfig, sample: SampleFn = sample_clips
) -> list[tuple[ClipKey, np.ndarray]] | dict:
  """One video's (ClipKey, clip) pairs, or its failure record if it cannot be sampled."""
  try:
    return list(sample(ref, config))
  except ingest_fetch.StageFailure as e:
    return failure_record(ref.video_id, e.stage, e.reason)
  except Exception as e:  # One bad video must not stop the job.
    return failure_record(ref.video_id, STAGE_SAMPLE, f"{type(e).__name__}: {e}")


class SampleClipsFn(beam.DoFn):
  """VideoRef -> (ClipKey, clip); videos that cannot be read or cut go to FAILURES.

  Samples up to `config.prefetch_videos` videos ahead of what it emits, each
  in its own thread (`OrderedLookahead`). RunInference, fused after this
  step in the worker's thread, embeds a batch on the device meanwhile: JPEG
  decoding and the compiled resizing release the GIL, as does JAX while it
  waits for the device. At most `prefetch_videos + 1` videos' clips are held
  (each `num_train_clips + num_test_windows` uint8 [T, crop, crop, 3] clips).
  """

  def __init__(self, config: EmbedJobConfig, sample: SampleFn = sample_clips):
    self._config = config
    self._sample = sample

  def start_bundle(self):
    self._lookahead = OrderedLookahead(
        self._timed_sample, self._config.prefetch_videos, thread_name="sample_clips"
    )

  def process(
      self, ref: VideoRef, timestamp=beam.DoFn.TimestampParam, window=beam.DoFn.WindowParam
  ):
    self._lookahead.submit(ref, timestamp, window)
    yield from self._emit(self._config.prefetch_videos)

  def finish_bundle(self):
    yield from self._emit(0)
    self._lookahead.close()

  def teardown(self):
    if hasattr(self, "_lookahead"):
      self._lookahead.close(wait=False)

  def _timed_sample(self, ref: VideoRef) -> tuple[list | dict, float]:
    start = time.perf_counter()
    return sample_video(ref, self._config, self._sample), time.perf_counter() - start

  def _emit(self, keep: int):
    for (sampled, sample_s), wait_s, timestamp, window in self._lookahead.ready(keep):
      # Metrics are recorded on this thread: Beam keeps them per processing thread.
      distribution("host_wait_ms").update(int(1000 * wait_s))
      distribution("sample_video_ms").update(int(1000 * sample_s))
      if isinstance(sampled, dict):
        yield beam.pvalue.TaggedOutput(
            FAILURES, WindowedValue(count_failure(sampled), timestamp, (window,))
        )
        continue
      counter("videos_sampled").inc()
      for clip in sampled:
        yield WindowedValue(clip, timestamp, (window,))


# ---- Embedding ----


def embedding_handler(config: EmbedJobConfig) -> JaxEmbeddingHandler:
  """The job's model handler: clips uint8 [T, crop, crop, 3] -> {output: float32 [dim]}."""
  return JaxEmbeddingHandler(
      config.checkpoint_path,
      config.resolved_backbone,
      EmbedderConfig(batch_size=config.batch_size, precision=config.precision),
      config.outputs,
      model_copies=config.model_copies,
      jax_cache_dir=config.jax_cache_dir,
      log_prefix=LOG_PREFIX,
  )


class InferenceFailure(typing.NamedTuple):
  """The result of a clip whose batch could not be embedded."""

  reason: str


class KeyedHandlerKeepingFailures(KeyedModelHandler):
  """(key, clip) in, (key, result) out; a batch whose inference raises gives each of its
  clips an `InferenceFailure` as its result.

  RunInference's own exception handling sends failed batches to a second
  output; joining it with the results again takes a Flatten, which ends the
  fused step (Beam's local runner would then hold every embedding). Here
  results and failures leave in one stream.
  """

  def run_inference(self, batch, model, inference_args=None):
    try:
      return list(super().run_inference(batch, model, inference_args))
    except Exception as e:  # pylint: disable=broad-except  # Fails the batch's videos only.
      counter("failed_batches").inc()
      failure = InferenceFailure(f"{type(e).__name__}: {e}")
      return [(key, failure) for key, _ in batch]


def assemble_video(video_id: str, clips: dict, *, outputs: Sequence[str]) -> list[bytes] | dict:
  """A video's serialized examples, in clip order, or its failure record.

  `clips` is {(clip type, index): (ClipKey, {output: float32 [dim]})}, every
  clip of the video. A non-finite embedding fails the video, so the
  evaluation never sees half of it.
  """
  examples = []
  for (clip_type, clip_index), (key, embeddings) in sorted(clips.items()):
    if not all(np.isfinite(embeddings[name]).all() for name in outputs):
      return failure_record(
          video_id, STAGE_EMBED, f"non-finite embedding in {clip_type} clip {clip_index}"
      )
    example = schema.make_example(
        video_id=key.video_id,
        label=key.label,
        label_name=key.label_name,
        clip_type=clip_type,
        clip_index=clip_index,
        embedding=embeddings[VID_REPR],
        extra_features={name: embeddings[name] for name in outputs if name != VID_REPR},
    )
    examples.append(example_proto.serialize(example))
  return examples


class AssembleVideosFn(beam.DoFn):
  """(ClipKey, result) -> a video's serialized examples once its last clip is in, or one failure.

  A video is written whole or not at all. Its clips are all cut while its
  one reference is processed, so they all come back in that bundle: a video
  still missing clips when the bundle ends fails ("k of n clips embedded").
  Held meanwhile: the embeddings of the videos whose clips are in flight.
  Emits the id of each written video on WRITTEN.
  """

  def __init__(self, config: EmbedJobConfig):
    self._expected = config.num_train_clips + config.num_test_windows
    self._outputs = config.outputs

  def start_bundle(self):
    self._pending: dict[str, dict] = {}
    self._failed: set[str] = set()

  def process(self, keyed_result):
    key, result = keyed_result
    if key.video_id in self._failed:
      return
    if isinstance(result, InferenceFailure):
      self._pending.pop(key.video_id, None)
      yield beam.pvalue.TaggedOutput(
          FAILURES, self._fail(failure_record(key.video_id, STAGE_EMBED, result.reason))
      )
      return
    clips = self._pending.setdefault(key.video_id, {})
    clips[(key.clip_type, key.clip_index)] = (key, result.inference)
    if len(clips) == self._expected:
      del self._pending[key.video_id]
      yield from self._finish(key.video_id, clips)

  def finish_bundle(self):
    for video_id, clips in sorted(self._pending.items()):
      record = failure_record(
          video_id, STAGE_EMBED, f"{len(clips)} of {self._expected} clips embedded"
      )
      yield beam.pvalue.TaggedOutput(FAILURES, GlobalWindows.windowed_value(self._fail(record)))

  def _fail(self, record: dict) -> dict:
    self._failed.add(record["video_id"])
    return count_failure(record)

  def _finish(self, video_id: str, clips: dict):
    result = assemble_video(video_id, clips, outputs=self._outputs)
    if isinstance(result, dict):
      yield beam.pvalue.TaggedOutput(FAILURES, self._fail(result))
      return
    counter("videos_embedded").inc()
    counter("clips_embedded").inc(len(result))
    yield beam.pvalue.TaggedOutput(WRITTEN, video_id)
    yield from result


class EmbedClips(beam.PTransform):
  """VideoRef -> {"examples": serialized examples, WRITTEN: video ids, FAILURES: records}.

  Sampling, inference and assembly form one fused step on the worker that
  holds the accelerator: only references reach it, and only whole videos'
  examples leave it. `handler` and `sample` replace the model and the clip
  sampling (benchmarks and tests give ones of known cost).
  """

  def __init__(
      self,
      config: EmbedJobConfig,
      handler: ModelHandler | None = None,
      sample: SampleFn = sample_clips,
  ):
    super().__init__()
    self._config = config
    self._handler = handler
    self._sample = sample

  def expand(self, refs):
    config = self._config
    sampled = refs | "SampleClips" >> beam.ParDo(SampleClipsFn(config, self._sample)).with_outputs(
        FAILURES, main="clips"
    )
    handler = KeyedHandlerKeepingFailures(self._handler or embedding_handler(config))
    assembled = (
        sampled.clips
        | "RunInference" >> RunInference(handler)
        | "AssembleVideos"
        >> beam.ParDo(AssembleVideosFn(config)).with_outputs(FAILURES, WRITTEN, main="examples")
    )
    return {
        "examples": assembled.examples,
        WRITTEN: assembled[WRITTEN],
        FAILURES: (sampled[FAILURES], assembled[FAILURES]) | "Failures" >> beam.Flatten(),
    }


# ---- The pipeline ----


def build(
    pipeline: beam.Pipeline,
    config: EmbedJobConfig,
    checkpoint_sha256: str,
    expected_videos: int | None = None,
    prior: embed_output.PriorOutput | None = None,
    listing: dataset_listing.DatasetListing | None = None,
    handler: ModelHandler | None = None,
    progress: ProgressLogger | None = None,
) -> None:
  """Adds the whole job to `pipeline`.

  `expected_videos` (if known) is for progress lines, which `progress` (if
  given) prints; videos of `prior` are not ingested or embedded again, and
  this run's shards are named apart from theirs. `listing`, read before the
  job, gives run.json its classes and splits, and a local job its videos
  (elsewhere a worker reads them at run time). `handler` replaces the model
  (see `EmbedClips`).
  """
  prior = prior or embed_output.PriorOutput()
  local_listing = listing if runs_locally(pipeline.options) else None
  ingested = pipeline | "Ingest" >> ingest.Ingest(
      config.videos_location,
      config.splits_location,
      config.work_dir,
      classes=config.classes or None,
      max_videos=config.max_videos,
      dataset=config.dataset_spec,
      progress=ProgressLogger(LOG_PREFIX, ingest.VIDEOS_SETTLED, expected_videos),
      listing=local_listing,
      parallelism=host_threads(pipeline.options),
      skip=prior.video_ids,
  )
  hints = {}
  if config.embed_accelerator:
    hints = {"accelerator": config.embed_accelerator}
    if config.embed_min_ram:
      hints["min_ram"] = config.embed_min_ram

  def on_accelerator(transform: beam.PTransform) -> beam.PTransform:
    # Steps of other resource hints do not fuse: the embeddings are written
    # on the accelerator worker, in the step that made them.
    return transform.with_resource_hints(**hints) if hints else transform

  # The reshuffle spreads videos over workers and keeps ingestion (CPU
  # workers) from fusing with the accelerator step; it moves references only.
  embedded = (
      ingested.videos
      | "SpreadVideos" >> beam.Reshuffle()
      | "Embed" >> on_accelerator(EmbedClips(config, handler))
  )
  progress = progress or ProgressLogger(LOG_PREFIX, VIDEOS_EMBEDDED, None)
  _ = embedded[WRITTEN] | "EmbedProgress" >> beam.ParDo(progress)
  shards = embedded["examples"] | "WriteEmbeddings" >> on_accelerator(
      beam.io.WriteToTFRecord(
          FileSystems.join(
              config.output_dir,
              schema.SHARDS_DIR,
              "part" if prior.attempt == 1 else f"part-run{prior.attempt}",
          ),
          file_name_suffix=schema.SHARD_SUFFIX,
      )
  )
  failures = (ingested.failures, embedded[FAILURES]) | "AllFailures" >> beam.Flatten()
  failure_files = failures | "WriteFailures" >> WriteFailures(
      reconcile.failures_path(config.output_dir)
  )
  selected = ingested.listed | "SelectedIds" >> beam.Map(lambda v: v.video_id)
  _ = (
      pipeline
      | "AfterWrites" >> beam.Create([None])
      # The side inputs hold the step back until both sinks have committed.
      | "AllSelected"
      >> beam.Map(
          lambda _, ids, *written: ids,
          beam.pvalue.AsList(selected),
          beam.pvalue.AsList(shards),
          beam.pvalue.AsList(failure_files),
      )
      | "ReconcileAndRecord"
      >> beam.Map(
          embed_output.record_run,
          config=config,
          checkpoint_sha256=checkpoint_sha256,
          attempt=prior.attempt,
          dataset=run_records.dataset_record(config, listing),
      )
  )


# ---- Running it ----


def checkpoint_sha256(config: EmbedJobConfig) -> str:
  """The checkpoint's sha256, once it is known to be readable, of the backbone and finite."""
  try:
    checkpoint = checkpoints.load_checkpoint(config.checkpoint_path)
    checkpoints.validate_backbone(
        checkpoint.params,
        checkpoint.state,
        config.resolved_backbone,
        source=config.checkpoint_path,
    )
  except checkpoints.WrongBackboneError as e:
    named_by = "--backbone" if config.backbone else "its file name"
    raise UsageError(f"{e}, which {named_by} names; pass --backbone={e.actual}") from e
  except checkpoints.CheckpointError as e:
    raise UsageError(str(e)) from e
  return checkpoint.sha256


def check_writable(directory: str, flag: str) -> None:
  """Raises UsageError unless a file can be created and deleted in `directory`."""
  probe = FileSystems.join(directory, f".write_probe-{uuid.uuid4().hex}")
  try:
    with FileSystems.create(probe) as f:
      f.write(b"")
    FileSystems.delete([probe])
  except Exception as e:  # Any filesystem's error: the message carries the cause.
    raise UsageError(f"cannot write to {flag} {directory}: {e}") from e


def run(
    argv: Sequence[str] | None = None, handler: ModelHandler | None = None
) -> beam.runners.runner.PipelineResult:
  """Builds and runs the job from its flags; returns Beam's result (see `start`)."""
  return start(*parse_args(argv), handler)


def start(
    config: EmbedJobConfig,
    beam_args: Sequence[str],
    handler: ModelHandler | None = None,
    progress: ProgressLogger | None = None,
) -> beam.runners.runner.PipelineResult:
  """Builds and runs the job; returns Beam's result (finished unless the runner is async).

  `handler` replaces the model (see `EmbedClips`); the checkpoint is checked
  all the same. `progress` counts the videos embedded (one is made if not
  given).

  Raises:
    UsageError: settings no run can use, unreadable inputs, an unusable
      checkpoint, or an output directory that another run owns; all before
      any work starts.
    embed_output.NothingToDo: `--resume` of a run that is complete.
  """
  problems = settings_problems(config)
  if problems:
    raise UsageError("; ".join(problems))
  options = PipelineOptions(with_local_runner(beam_args, IN_PROCESS_RUNNER_ARGS))
  num_videos, prior, listing = None, embed_output.PriorOutput(), None
  if options.view_as(TestOptions).dry_run:
    sha256 = "not read in a dry run"
  else:
    listing = load_listing(config.dataset_spec, config.splits_location, config.videos_location)
    selected = select_videos(listing, config.classes or None, config.max_videos)
    num_videos = len(selected)
    check_videos_readable(config.dataset_spec, config.videos_location, config.work_dir, selected)
    # The checkpoint is read before the output directory is claimed, so that
    # a wrong checkpoint leaves no owned, empty directory behind.
    sha256 = checkpoint_sha256(config)
    check_writable(config.work_dir, "--work_dir")
    prior = embed_output.prepare_output_dir(config, sha256, [v.video_id for v in selected])
  pipeline = beam.Pipeline(options=options)
  # Progress totals mean something only where one process counts everything.
  expected = None
  if num_videos is not None and runs_in_one_process(options):
    expected = num_videos - len(prior.video_ids)
  progress = progress or ProgressLogger(LOG_PREFIX, VIDEOS_EMBEDDED, None)
  progress.expect(expected)
  build(pipeline, config, sha256, expected, prior, listing, handler, progress)
  return pipeline.run()


def job_timings(result: beam.runners.runner.PipelineResult) -> dict[str, float]:
  """Worker seconds spent on each part of embedding, summed over workers and threads.

  `sample_s`: reading and cutting clips (host); `host_wait_s`: the inference
  thread waiting for clips, i.e. host preparation not hidden behind the
  device; `inference_s`: RunInference's batch calls (stacking, transfer,
  device compute, results back); `load_model_s`: loading checkpoints.
  """
  sums: dict[str, float] = collections.Counter()
  batches = 0
  for metric in result.metrics().query()["distributions"]:
    sums[metric.key.metric.name] += metric.committed.sum
    if metric.key.metric.name == "inference_batch_latency_micro_secs":
      batches += metric.committed.count
  return {
      "sample_s": sums["sample_video_ms"] / 1e3,
      "host_wait_s": sums["host_wait_ms"] / 1e3,
      "inference_s": sums["inference_batch_latency_micro_secs"] / 1e6,
      "load_model_s": sums["load_model_latency_milli_secs"] / 1e3,
      "batches": batches,
  }


def main(argv: Sequence[str] | None = None, handler: ModelHandler | None = None) -> None:
  """Runs the job, prints its summary; exits 1 if it embedded nothing, too little, or lost any.

  Ctrl-C ends it with one line and exit status 130. `handler` replaces the
  model (see `EmbedClips`).
  """
  started = time.monotonic()
  configure_logging(argv)
  config, beam_args = parse_args(argv)
  progress = ProgressLogger(LOG_PREFIX, VIDEOS_EMBEDDED, None)

  def interrupted() -> str:
    if not claimed_by_this_process(config.output_dir):
      return "interrupted before any work; nothing written"
    embed_output.remove_sink_temp_dirs(config.output_dir)
    of_total = f" of {progress.expected}" if progress.expected is not None else ""
    return (
        f"interrupted after {progress.done()}{of_total} videos embedded (shards are committed "
        "only at the end of a run); rerun with --resume"
    )

  with interrupt_exits(PROG, interrupted):
    try:
      result = start(config, beam_args, handler, progress)
    except embed_output.NothingToDo as e:
      print(f"{LOG_PREFIX} {e}", flush=True)
      return
    result.wait_until_finish()
  if result.state != beam.runners.runner.PipelineState.DONE:
    return  # A dry run, or an async runner: no results yet.
  # For benchmarks (bench/embed_pipeline_bench.py runs the job with --verbose).
  logging.info("%s%s", TIMINGS_PREFIX, json.dumps(job_timings(result), sort_keys=True))
  embed_summary.report_outcome(config, time.monotonic() - started)


if __name__ == "__main__":
  # Run the imported module, not __main__, so that workers in other processes
  # can unpickle this module's classes by their real name.
  from pipelines import embed

  run_main(embed.main, embed.PROG, sys.argv[1:])
