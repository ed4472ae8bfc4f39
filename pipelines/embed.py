"""The main job: a dataset's videos in, MMV clip embeddings out as TFRecords.

    python -m pipelines.embed --checkpoint_path mmv_s3d.pkl \
        --work_dir /tmp/mmv_work --output_dir /tmp/mmv_out \
        [--dataset=hmdb51 --splits_dir ... --video_root ...]

`--dataset` (docs/datasets.md) names where the videos come from, how they
are listed and re-encoded, and the sampling defaults of its protocol; the
sampling flags override them. UCF101 is the default.

Stages: `Ingest` (listing, sharded fetch, ffmpeg re-encoding, video
cache; see pipelines/ingest.py) -> Reshuffle (spreads videos over workers)
-> `EmbedClips`, the accelerator step: `SampleClipsFn` decodes each video's
JPEG frames once and cuts `--num_train_clips` seeded training clips and
`--num_test_windows` test windows in a background thread, `--prefetch_videos`
videos ahead, while RunInference with `JaxEmbeddingHandler` embeds earlier
clips on the device -> `AssembleVideoFn` groups a video's clips and writes
them all (or fails the video) as `tf.train.Example`s (schema in
mmv_core/embedding_schema.py) -> `OUTPUT_DIR/embeddings/*.tfrecord`.

Also written: `OUTPUT_DIR/failures/failures.jsonl` (one JSON line per video
that failed, with stage and reason) and `OUTPUT_DIR/run.json` (settings,
backbone, checkpoint sha256, package versions, counts). Beam's file sinks
commit a bundle's output only once, so a retried bundle never duplicates
clips; a run refuses an output directory that already holds embeddings.
"""

import collections
import concurrent.futures
import dataclasses
import importlib.metadata
import json
import logging
import platform
import sys
import time
import typing
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence

import apache_beam as beam
import numpy as np
from apache_beam.io.filesystems import FileSystems
from apache_beam.ml.inference.base import KeyedModelHandler, ModelHandler, RunInference
from apache_beam.options.pipeline_options import PipelineOptions, TestOptions
from apache_beam.utils.windowed_value import WindowedValue

from mmv_core import checkpoints
from mmv_core import dataset_listing
from mmv_core import datasets
from mmv_core import embedding_schema as schema
from mmv_core import video
from mmv_core.embedder_config import CACHE_DIR_ENV, EmbedderConfig
from mmv_core.models.names import BACKBONES, VID_REPR, VIDEO_OUTPUTS
from mmv_core.video_cache import CachedVideo
from pipelines import ingest
from pipelines.common import FAILURES, WriteFailures, count_failure, counter, distribution
from pipelines.common import failure_record
from pipelines.common import IN_PROCESS_RUNNER_ARGS, UsageError, claim_output_dir, read_owners
from pipelines.common import run_main, runs_in_one_process, runs_locally
from pipelines.common import add_required_flag, add_verbose_flag, check_beam_flags
from pipelines.common import ProgressLogger, configure_logging, job_parser, with_local_runner
from pipelines.jax_inference import JaxEmbeddingHandler

FAILURES_DIR = "failures"
FAILURES_FILE = "failures.jsonl"
# Starts the lines the job prints.
LOG_PREFIX = "[embed]"
# Starts the log line of a finished run's `job_timings`, as JSON.
TIMINGS_PREFIX = f"{LOG_PREFIX} timings "
STAGE_SAMPLE = "sample"
STAGE_EMBED = "embed"
WRITTEN = "written"
_PACKAGES = (
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


@dataclasses.dataclass(frozen=True)
class EmbedJobConfig:
  """Every setting of the embedding job (the flags of `parse_args`)."""

  checkpoint_path: str
  work_dir: str
  output_dir: str
  dataset: str = datasets.UCF101.name
  # The location flags of every dataset (`ingest.LOCATION_FLAGS`); a
  # dataset's own are filled with its defaults, the others stay None.
  video_zip: str | None = None
  splits_zip: str | None = None
  splits_dir: str | None = None
  csv_dir: str | None = None
  video_root: str | None = None
  backbone: str | None = None
  num_frames: int = video.DEFAULT_NUM_FRAMES
  stride: int = video.DEFAULT_STRIDE
  min_resize: int = video.DEFAULT_MIN_RESIZE
  crop_size: int = video.DEFAULT_CROP_SIZE
  num_train_clips: int = video.DEFAULT_NUM_TRAIN_CLIPS
  num_test_windows: int = video.DEFAULT_NUM_TEST_WINDOWS
  exact_train_clips: bool = False
  batch_size: int = EmbedderConfig.batch_size
  compute_dtype: str = EmbedderConfig.compute_dtype
  joint_embeddings: bool = False
  seed: int = 0
  classes: tuple[str, ...] = ()
  max_videos: int | None = None
  embed_accelerator: str | None = None
  embed_min_ram: str | None = None
  model_copies: int | None = None
  prefetch_videos: int = 1
  jax_cache_dir: str | None = None
  overwrite: bool = False
  resume: bool = False
  max_failed_share: float = 0.1
  recipe: str | None = None

  @property
  def outputs(self) -> tuple[str, ...]:
    return VIDEO_OUTPUTS if self.joint_embeddings else (VID_REPR,)

  @property
  def resolved_backbone(self) -> str:
    return self.backbone or checkpoints.infer_backbone(self.checkpoint_path)

  @property
  def dataset_spec(self) -> datasets.DatasetSpec:
    """The --dataset, re-encoded with --recipe if given."""
    spec = datasets.get(self.dataset)
    return dataclasses.replace(spec, recipe=self.recipe) if self.recipe else spec

  @property
  def splits_location(self) -> str | None:
    return getattr(self, self.dataset_spec.splits_flag)

  @property
  def videos_location(self) -> str | None:
    return getattr(self, self.dataset_spec.videos_flag)


class ClipKey(typing.NamedTuple):
  """What identifies one clip through inference."""

  video_id: str
  label: int
  label_name: str
  clip_type: str
  clip_index: int


# ---- Clip sampling ----


def sample_clips(
    cached: CachedVideo, config: EmbedJobConfig
) -> Iterator[tuple[ClipKey, np.ndarray]]:
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


SampleFn = Callable[[CachedVideo, EmbedJobConfig], Iterable[tuple[ClipKey, np.ndarray]]]


def sample_video(
    cached: CachedVideo, config: EmbedJobConfig, sample: SampleFn = sample_clips
) -> list[tuple[ClipKey, np.ndarray]] | dict:
  """One video's (ClipKey, clip) pairs, or its failure record if it cannot be sampled."""
  try:
    return list(sample(cached, config))
  except Exception as e:  # One bad video must not stop the job.
    return failure_record(cached.video_id, STAGE_SAMPLE, f"{type(e).__name__}: {e}")


class SampleClipsFn(beam.DoFn):
  """CachedVideo -> (ClipKey, clip); undecodable videos go to FAILURES.

  Samples in a background thread up to `config.prefetch_videos` videos ahead
  of what it emits. RunInference, fused after this step in the worker's
  thread, embeds a batch on the device meanwhile: JPEG decoding and the compiled
  resizing release the GIL, as does JAX while it waits for the device. At
  most `prefetch_videos + 1` videos' clips are held (each
  `num_train_clips + num_test_windows` uint8 [T, crop, crop, 3] clips).
  """

  def __init__(self, config: EmbedJobConfig, sample: SampleFn = sample_clips):
    self._config = config
    self._sample = sample

  def setup(self):
    self._sampler = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="sample_clips")

  def start_bundle(self):
    self._in_flight = collections.deque()

  def process(
      self, cached: CachedVideo, timestamp=beam.DoFn.TimestampParam, window=beam.DoFn.WindowParam
  ):
    self._in_flight.append((self._sampler.submit(self._timed_sample, cached), timestamp, window))
    while len(self._in_flight) > self._config.prefetch_videos:
      yield from self._emit_oldest()

  def finish_bundle(self):
    while self._in_flight:
      yield from self._emit_oldest()

  def teardown(self):
    if hasattr(self, "_sampler"):  # Beam calls teardown even when setup failed.
      self._sampler.shutdown(cancel_futures=True)

  def _timed_sample(self, cached: CachedVideo) -> tuple[list | dict, float]:
    start = time.perf_counter()
    return sample_video(cached, self._config, self._sample), time.perf_counter() - start

  def _emit_oldest(self):
    future, timestamp, window = self._in_flight.popleft()
    wait_start = time.perf_counter()
    sampled, sample_s = future.result()
    # Metrics are recorded on this thread: Beam keeps them per processing thread.
    distribution("host_wait_ms").update(int(1000 * (time.perf_counter() - wait_start)))
    distribution("sample_video_ms").update(int(1000 * sample_s))
    # Each value keeps its own video's window and timestamp: it may leave
    # during a later video's `process` call, or in `finish_bundle`.
    if isinstance(sampled, dict):
      # Counted once the video's fate is settled, in AssembleVideoFn.
      yield beam.pvalue.TaggedOutput(FAILURES, WindowedValue(sampled, timestamp, (window,)))
      return
    counter("videos_sampled").inc()
    for clip in sampled:
      yield WindowedValue(clip, timestamp, (window,))


# ---- Embedding ----


def embedding_handler(config: EmbedJobConfig) -> JaxEmbeddingHandler:
  """The job's model handler: clips uint8 [T, crop, crop, 3] -> {output: float32 [dim]}."""
  return JaxEmbeddingHandler(
      config.checkpoint_path,
      config.resolved_backbone,
      EmbedderConfig(batch_size=config.batch_size, compute_dtype=config.compute_dtype),
      config.outputs,
      model_copies=config.model_copies,
      jax_cache_dir=config.jax_cache_dir,
  )


class EmbedClips(beam.PTransform):
  """CachedVideo -> (sampled clips' embeddings, failures), on accelerator workers.

  Sampling and inference form one step so that they fuse on the worker that
  holds the accelerator: only JPEG bytes reach it, never the 20x larger clips.
  Returns `{"embedded": (ClipKey, {output: float32 [dim]}), FAILURES: record}`.
  `handler` and `sample` replace the model and the clip sampling (benchmarks
  and tests give ones of known cost).
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

  def expand(self, videos):
    config = self._config
    sampled = videos | "SampleClips" >> beam.ParDo(
        SampleClipsFn(config, self._sample)
    ).with_outputs(FAILURES, main="clips")
    handler = KeyedModelHandler(self._handler or embedding_handler(config))
    embedded, errors = (
        sampled.clips | "RunInference" >> RunInference(handler).with_exception_handling()
    )
    failed_batches = errors.failed_inferences | "FailedBatches" >> beam.FlatMap(inference_failures)
    return {
        "embedded": embedded | "Inference" >> beam.MapTuple(lambda key, r: (key, r.inference)),
        FAILURES: (sampled[FAILURES], failed_batches) | "Failures" >> beam.Flatten(),
    }


def inference_failures(failed) -> Iterator[dict]:
  """RunInference's failed batch -> one failure per video in it.

  `failed` is (batch of (ClipKey, clip), (exception type, message, traceback)).
  """
  batch, (exception_type, message, _) = failed
  for video_id in sorted({key.video_id for key, _ in batch}):
    yield failure_record(video_id, STAGE_EMBED, f"{exception_type.__name__}: {message}")


# ---- Embeddings out ----


def assemble_video(
    video_id: str,
    clips: Iterable[tuple[ClipKey, dict]],
    embed_failures: Iterable[dict],
    *,
    expected_clips: int,
    outputs: Sequence[str],
) -> list[bytes] | dict:
  """A video's serialized examples, all of them, or its failure record.

  A video is written whole or not at all: a failed sampling or batch, a
  missing clip or a non-finite embedding fails the video, so the evaluation
  never sees half of it.
  """
  embed_failures = list(embed_failures)
  if embed_failures:
    return embed_failures[0]
  by_key = {(key.clip_type, key.clip_index): (key, embeddings) for key, embeddings in clips}
  if len(by_key) != expected_clips:
    return failure_record(
        video_id, STAGE_EMBED, f"{len(by_key)} of {expected_clips} clips embedded"
    )
  examples = []
  for (clip_type, clip_index), (key, embeddings) in sorted(by_key.items()):
    if not all(np.isfinite(embeddings[name]).all() for name in outputs):
      return failure_record(
          video_id, STAGE_EMBED, f"non-finite embedding in {clip_type} clip {clip_index}"
      )
    examples.append(
        schema.make_example(
            video_id=key.video_id,
            label=key.label,
            label_name=key.label_name,
            clip_type=clip_type,
            clip_index=clip_index,
            embedding=embeddings[VID_REPR],
            extra_features={name: embeddings[name] for name in outputs if name != VID_REPR},
        ).SerializeToString()
    )
  return examples


class AssembleVideoFn(beam.DoFn):
  """(video_id, {"clips", "failures"}) -> serialized examples, or one failure.

  Also emits (train clips, test clips) of each written video on WRITTEN.
  """

  def __init__(self, config: EmbedJobConfig):
    self._expected = config.num_train_clips + config.num_test_windows
    self._outputs = config.outputs

  def process(self, grouped):
    video_id, parts = grouped
    result = assemble_video(
        video_id,
        parts["clips"],
        parts["failures"],
        expected_clips=self._expected,
        outputs=self._outputs,
    )
    if isinstance(result, dict):
      yield beam.pvalue.TaggedOutput(FAILURES, count_failure(result))
      return
    counter("videos_embedded").inc()
    counter("clips_embedded").inc(len(result))
    clip_types = [
        clip_type for clip_type, _ in {(key.clip_type, key.clip_index) for key, _ in parts["clips"]}
    ]
    yield beam.pvalue.TaggedOutput(
        WRITTEN, (clip_types.count(schema.CLIP_TYPE_TRAIN), clip_types.count(schema.CLIP_TYPE_TEST))
    )
    yield from result


# ---- Output directory: ownership and resuming ----

# The settings that decide the embeddings: a resumed run must repeat them.
RESUME_SETTINGS = (
    "dataset",
    "recipe",
    "video_zip",
    "splits_zip",
    "splits_dir",
    "csv_dir",
    "video_root",
    "backbone",
    "num_frames",
    "stride",
    "min_resize",
    "crop_size",
    "num_train_clips",
    "num_test_windows",
    "exact_train_clips",
    "compute_dtype",
    "joint_embeddings",
    "seed",
    "classes",
    "max_videos",
)


# What a run refused an output directory that another run owns can do.
_OWNED_DIR_REMEDY = (
    "choose a new --output_dir, pass --resume to complete it, or --overwrite to delete it "
    "and start again"
)


@dataclasses.dataclass(frozen=True)
class PriorOutput:
  """What earlier runs into the output directory wrote (nothing, for a new directory).

  Attributes:
    video_ids: videos whose embeddings are written; a resumed run skips them.
    train_clips, test_clips: their clips of each kind.
    attempt: this run's number in the directory, 1 for its first run.
  """

  video_ids: frozenset[str] = frozenset()
  train_clips: int = 0
  test_clips: int = 0
  attempt: int = 1


def owner_record(config: EmbedJobConfig, checkpoint_sha256: str) -> dict:
  settings = {name: getattr(config, name) for name in RESUME_SETTINGS}
  settings["backbone"] = config.resolved_backbone
  settings["classes"] = list(config.classes)
  return {"job": PROG, "settings": settings, "checkpoint_sha256": checkpoint_sha256}


def prior_output(output_dir: str, attempt: int) -> PriorOutput:
  """The videos and clips that the directory's final shards hold (none after a killed run)."""
  video_ids, clips = set(), collections.Counter()
  if not FileSystems.match([schema.shard_pattern(output_dir)])[0].metadata_list:
    return PriorOutput(attempt=attempt)
  for source, record in schema.embedding_records(output_dir):
    clip = schema.parse_example(record, include_floats=False, source=source)
    video_ids.add(clip[schema.VIDEO_ID])
    clips[clip[schema.CLIP_TYPE]] += 1
  return PriorOutput(
      frozenset(video_ids), clips[schema.CLIP_TYPE_TRAIN], clips[schema.CLIP_TYPE_TEST], attempt
  )


def resume_output_dir(config: EmbedJobConfig, owner: dict) -> PriorOutput:
  """Joins a directory that an earlier run of the same settings owns; its output is kept."""
  owners = read_owners(config.output_dir)
  if not owners:
    raise UsageError(f"--resume: no earlier run owns {config.output_dir}")
  first = owners[0]
  differences = [
      f"{name} {first.get('settings', {}).get(name)!r} -> {value!r}"
      for name, value in owner["settings"].items()
      if first.get("settings", {}).get(name) != value
  ]
  if first.get("checkpoint_sha256") != owner["checkpoint_sha256"]:
    differences.append("the checkpoint (sha256)")
  if differences:
    raise UsageError(
        f"--resume: these settings differ from those of the run that wrote "
        f"{config.output_dir}: {'; '.join(differences)}"
    )
  attempt = len(owners) + 1
  claim_output_dir(config.output_dir, owner, remedy=_OWNED_DIR_REMEDY, attempt=attempt)
  # Beam's sinks of a killed run leave their uncommitted files behind.
  stale = FileSystems.match([FileSystems.join(config.output_dir, "*", "beam-temp-*", "*")])[0]
  if stale.metadata_list:
    FileSystems.delete([m.path for m in stale.metadata_list])
  return prior_output(config.output_dir, attempt)


# ---- Run record ----


def _package_versions() -> dict[str, str]:
  versions = {"python": platform.python_version()}
  for name in _PACKAGES:
    try:
      versions[name] = importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
      pass
  return versions


def dataset_record(config: EmbedJobConfig, listing: dataset_listing.DatasetListing | None) -> dict:
  """run.json's account of the dataset: name, recipe, locations, classes and splits.

  The classes and splits are those of the whole listing (None in a dry run,
  which reads no listing), so the evaluation numbers labels as this job did.
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


def write_run_record(
    counts: dict,
    *,
    config: EmbedJobConfig,
    checkpoint_sha256: str,
    prior: PriorOutput,
    dataset: dict,
) -> None:
  """Writes run.json; its counts include what earlier runs into the directory wrote."""
  counts = {
      **counts,
      "videos_written": counts["videos_written"] + len(prior.video_ids),
      "clips_written_train": counts["clips_written_train"] + prior.train_clips,
      "clips_written_test": counts["clips_written_test"] + prior.test_clips,
  }
  record = {
      schema.SETTINGS: dataclasses.asdict(config),
      "dataset": dataset,
      "backbone": config.resolved_backbone,
      "checkpoint_sha256": checkpoint_sha256,
      "versions": _package_versions(),
      schema.NUM_TRAIN_CLIPS: config.num_train_clips,
      schema.NUM_TEST_WINDOWS: config.num_test_windows,
      "counts": counts,
      "runs": prior.attempt,
  }
  path = FileSystems.join(config.output_dir, schema.RUN_CONFIG_FILE)
  with FileSystems.create(path) as f:
    f.write(json.dumps(record, indent=2, sort_keys=True).encode())


class _CountsCombineFn(beam.CombineFn):
  """("written", (train clips, test clips)) and ("failed", record) -> run.json counts."""

  def create_accumulator(self):
    return {"videos": 0, "train": 0, "test": 0, "failed": {}}

  def add_input(self, acc, item):
    kind, value = item
    if kind == WRITTEN:
      acc["videos"] += 1
      acc["train"] += value[0]
      acc["test"] += value[1]
    else:
      acc["failed"].setdefault(value["video_id"], value["stage"])
    return acc

  def merge_accumulators(self, accs):
    merged = self.create_accumulator()
    for acc in accs:
      for name in ("videos", "train", "test"):
        merged[name] += acc[name]
      merged["failed"].update(acc["failed"])
    return merged

  def extract_output(self, acc):
    by_stage: dict[str, int] = {}
    for stage in acc["failed"].values():
      by_stage[stage] = by_stage.get(stage, 0) + 1
    return {
        "videos_written": acc["videos"],
        "clips_written_train": acc["train"],
        "clips_written_test": acc["test"],
        "videos_failed": len(acc["failed"]),
        "videos_failed_by_stage": by_stage,
    }


# ---- The pipeline ----


def build(
    pipeline: beam.Pipeline,
    config: EmbedJobConfig,
    checkpoint_sha256: str,
    expected_videos: int | None = None,
    prior: PriorOutput = PriorOutput(),
    listing: dataset_listing.DatasetListing | None = None,
    handler: ModelHandler | None = None,
) -> None:
  """Adds the whole job to `pipeline`.

  `expected_videos` (if known) is for progress lines; videos of `prior` are
  not embedded again, and this run's shards are named apart from theirs.
  `listing`, read before the job, gives run.json its classes and splits,
  and a local job its videos (elsewhere a worker reads them at run time).
  `handler` replaces the model (see `EmbedClips`).
  """
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
  )
  expected_clips = None
  if expected_videos is not None:
    expected_clips = (expected_videos - len(prior.video_ids)) * (
        config.num_train_clips + config.num_test_windows
    )
  videos = ingested.videos
  if prior.video_ids:
    videos = videos | "SkipWritten" >> beam.Filter(
        lambda cached, written: cached.video_id not in written, prior.video_ids
    )

  embed_clips = EmbedClips(config, handler)
  if config.embed_accelerator:
    hints = {"accelerator": config.embed_accelerator}
    if config.embed_min_ram:
      hints["min_ram"] = config.embed_min_ram
    embed_clips = embed_clips.with_resource_hints(**hints)
  # The reshuffle spreads videos over workers and keeps ingestion (CPU
  # workers) from fusing with the accelerator step.
  embedded = videos | "SpreadVideos" >> beam.Reshuffle() | "Embed" >> embed_clips

  _ = embedded["embedded"] | "EmbedProgress" >> beam.ParDo(
      ProgressLogger(LOG_PREFIX, "clips embedded", expected_clips)
  )
  by_video = (
      {
          "clips": embedded["embedded"]
          | "ClipsByVideo" >> beam.Map(lambda kv: (kv[0].video_id, kv)),
          "failures": embedded[FAILURES]
          | "EmbedFailuresByVideo" >> beam.Map(lambda f: (f["video_id"], f)),
      }
      | "GroupByVideo" >> beam.CoGroupByKey()
      | "AssembleVideos"
      >> beam.ParDo(AssembleVideoFn(config)).with_outputs(FAILURES, WRITTEN, main="examples")
  )
  _ = by_video.examples | "WriteEmbeddings" >> beam.io.WriteToTFRecord(
      FileSystems.join(
          config.output_dir,
          schema.SHARDS_DIR,
          "part" if prior.attempt == 1 else f"part-run{prior.attempt}",
      ),
      file_name_suffix=schema.SHARD_SUFFIX,
  )

  failures = (ingested.failures, by_video[FAILURES]) | "AllFailures" >> beam.Flatten()
  _ = failures | "WriteFailures" >> WriteFailures(
      FileSystems.join(config.output_dir, FAILURES_DIR, FAILURES_FILE)
  )

  _ = (
      (
          by_video[WRITTEN] | "WrittenItems" >> beam.Map(lambda counts: (WRITTEN, counts)),
          failures | "FailedItems" >> beam.Map(lambda record: ("failed", record)),
      )
      | "CountItems" >> beam.Flatten()
      | "Counts" >> beam.CombineGlobally(_CountsCombineFn())
      | "WriteRunRecord"
      >> beam.Map(
          write_run_record,
          config=config,
          checkpoint_sha256=checkpoint_sha256,
          prior=prior,
          dataset=dataset_record(config, listing),
      )
  )


PROG = "python -m pipelines.embed"
# Sampling flags whose defaults are the dataset's (`datasets.ProtocolDefaults`).
_PROTOCOL_FLAGS = (
    ("num_frames", "frames per clip (T)"),
    ("stride", "step between a clip's frames"),
    ("min_resize", "frames are resized so their smaller side is this"),
    ("crop_size", "side of the square crop (at most --min_resize)"),
    ("num_train_clips", "random training clips per video (0: none)"),
    ("num_test_windows", "evenly spaced test windows per video (0: none)"),
)


def parse_args(argv: Sequence[str] | None) -> tuple[EmbedJobConfig, list[str]]:
  """Flags -> (job config, remaining Beam pipeline options)."""
  defaults = EmbedJobConfig(checkpoint_path="", work_dir="", output_dir="")
  p = job_parser(
      PROG,
      __doc__.split("\n", 1)[0],
      "Other flags are Beam pipeline options (e.g. --runner, --direct_num_workers, "
      "Dataflow's --project, --region, --temp_location).",
  )
  add_required_flag(
      p,
      "--checkpoint_path",
      "released MMV checkpoint (.pkl) or converted .npz; local, gs:// or https://",
  )
  add_required_flag(p, "--work_dir", "video cache (local or gs://), reused across runs")
  add_required_flag(p, "--output_dir", "embeddings, failures and run.json; one run per directory")
  ingest.add_dataset_flags(p)
  p.add_argument(
      "--backbone",
      default=None,
      choices=BACKBONES,
      help="default: inferred from the checkpoint's file name",
  )
  for name, text in _PROTOCOL_FLAGS:
    p.add_argument(
        f"--{name}", type=int, default=None, help=f"{text}; default: the dataset's protocol"
    )
  for name, text in (
      ("batch_size", "clips per forward pass (a multiple of the devices)"),
      ("seed", "seed of the training clips' draws"),
  ):
    p.add_argument(f"--{name}", type=int, default=getattr(defaults, name), help=text)
  p.add_argument(
      "--exact_train_clips",
      action="store_true",
      help="flip training clips before resizing them, bit-exactly as the protocol; "
      "by default they are flipped after it (each frame resized once), which "
      "draws the same clips but leaves flipped ones within 1 grey level of the "
      "protocol's (bilinear resizing is not exactly flip-equivariant)",
  )
  p.add_argument(
      "--compute_dtype",
      choices=("float32", "bfloat16"),
      default=defaults.compute_dtype,
      help="bfloat16 only pays on accelerators; float32 is the protocol",
  )
  p.add_argument(
      "--joint_embeddings",
      action="store_true",
      help="also write the video-audio and video-text joint-space embeddings",
  )
  p.add_argument("--classes", default="", help="comma-separated class names, for trials")
  p.add_argument("--max_videos", type=int, default=None, help="limit the run, for trials")
  p.add_argument(
      "--embed_accelerator",
      default=None,
      help="Dataflow resource hint for the embedding step only, e.g. "
      '"type:nvidia-l4;count:1;install-nvidia-driver"',
  )
  p.add_argument("--embed_min_ram", default=None, help='resource hint, e.g. "16GB"')
  p.add_argument(
      "--model_copies",
      type=int,
      default=None,
      help="models per worker VM shared across its SDK processes; each batch is "
      "then pickled to the model's process (bench/README.md: GPU workers)",
  )
  p.add_argument(
      "--prefetch_videos",
      type=int,
      default=defaults.prefetch_videos,
      help="videos whose clips are cut ahead, while the device embeds (0: one after "
      "the other); each holds (train clips + test windows) x T x crop x crop x 3 "
      "bytes",
  )
  p.add_argument(
      "--jax_cache_dir",
      default=None,
      help=f"compiled programs kept across runs; default ${CACHE_DIR_ENV}, "
      "else $XDG_CACHE_HOME/mmv/jax, else ~/.cache/mmv/jax",
  )
  p.add_argument(
      "--overwrite",
      action="store_true",
      help="delete what --output_dir holds and start again; without it or "
      "--resume a used --output_dir is refused",
  )
  p.add_argument(
      "--resume",
      action="store_true",
      help="complete the run that owns --output_dir (same settings): its written "
      "videos are kept and skipped, the others (failed ones too) embedded",
  )
  p.add_argument(
      "--max_failed_share",
      type=float,
      default=defaults.max_failed_share,
      help="the run ends with status 1 if more than this share of its videos fail",
  )
  add_verbose_flag(p, "Beam's, JAX's and the workers' INFO logs")
  args, beam_args = p.parse_known_args(argv)
  check_beam_flags(beam_args, PROG)
  values = vars(args)
  values.pop("verbose")
  values["classes"] = tuple(c for c in values["classes"].split(",") if c)
  return resolve_dataset_defaults(EmbedJobConfig(**values)), beam_args


def resolve_dataset_defaults(config: EmbedJobConfig) -> EmbedJobConfig:
  """`config` with its dataset's default locations and protocol where flags gave none.

  Raises:
    UsageError: an unknown dataset, or a location flag of another dataset.
  """
  spec, splits_location, videos_location = ingest.resolve_dataset(
      config.dataset, {flag: getattr(config, flag) for flag in ingest.LOCATION_FLAGS}, config.recipe
  )
  protocol = {
      name: getattr(spec.protocol, name)
      for name, _ in _PROTOCOL_FLAGS
      if getattr(config, name) is None
  }
  return dataclasses.replace(
      config,
      **protocol,
      recipe=spec.recipe,
      **{spec.splits_flag: splits_location, spec.videos_flag: videos_location},
  )


def settings_problems(config: EmbedJobConfig) -> list[str]:
  """What makes the settings unusable, before any work; empty when they are fine."""
  problems = [
      f"--{name} must be positive, got {getattr(config, name)}"
      for name in ("num_frames", "stride", "min_resize", "crop_size", "batch_size")
      if getattr(config, name) < 1
  ]
  problems += [
      f"--{name} must be 0 or more, got {getattr(config, name)}"
      for name in ("num_train_clips", "num_test_windows", "prefetch_videos")
      if getattr(config, name) < 0
  ]
  if config.num_train_clips == 0 and config.num_test_windows == 0:
    problems.append("--num_train_clips and --num_test_windows are both 0: nothing to embed")
  if config.crop_size > config.min_resize > 0:
    problems.append(
        f"--crop_size {config.crop_size} is larger than --min_resize "
        f"{config.min_resize}: training crops would not fit in the frames"
    )
  if config.max_videos is not None and config.max_videos < 1:
    problems.append(f"--max_videos must be positive, got {config.max_videos}")
  if config.model_copies is not None and config.model_copies < 1:
    problems.append(f"--model_copies must be positive, got {config.model_copies}")
  if config.resume and config.overwrite:
    problems.append("--resume keeps what --output_dir holds and --overwrite deletes it: choose one")
  if not 0 <= config.max_failed_share <= 1:
    problems.append(f"--max_failed_share must be in [0, 1], got {config.max_failed_share}")
  return problems


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


def prepare_output_dir(config: EmbedJobConfig, checkpoint_sha256: str) -> PriorOutput:
  """Makes this run the owner of `--output_dir`: new, emptied (`--overwrite`) or resumed."""
  owner = owner_record(config, checkpoint_sha256)
  if config.resume:
    return resume_output_dir(config, owner)
  # A directory written before runs claimed theirs holds shards but no owner.
  existing = FileSystems.match([schema.shard_pattern(config.output_dir)])[0].metadata_list
  if existing and not read_owners(config.output_dir):
    raise UsageError(
        f"{config.output_dir} already holds {len(existing)} embedding shards, of a run that "
        "did not claim it; choose a new --output_dir"
    )
  spec = config.dataset_spec
  claim_output_dir(
      config.output_dir,
      owner,
      remedy=_OWNED_DIR_REMEDY,
      overwrite=config.overwrite,
      inputs={
          "--checkpoint_path": config.checkpoint_path,
          "--work_dir": config.work_dir,
          f"--{spec.videos_flag}": config.videos_location,
          f"--{spec.splits_flag}": config.splits_location,
      },
  )
  return PriorOutput()


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
    config: EmbedJobConfig, beam_args: Sequence[str], handler: ModelHandler | None = None
) -> beam.runners.runner.PipelineResult:
  """Builds and runs the job; returns Beam's result (finished unless the runner is async).

  `handler` replaces the model (see `EmbedClips`); the checkpoint is checked all the same.

  Raises:
    UsageError: settings no run can use, unreadable inputs, an unusable
      checkpoint, or an output directory that another run owns; all before
      any work starts.
  """
  problems = settings_problems(config)
  if problems:
    raise UsageError("; ".join(problems))
  options = PipelineOptions(with_local_runner(beam_args, IN_PROCESS_RUNNER_ARGS))
  num_videos, prior, listing = None, PriorOutput(), None
  if options.view_as(TestOptions).dry_run:
    sha256 = "not read in a dry run"
  else:
    listing = ingest.load_listing(
        config.dataset_spec, config.splits_location, config.videos_location
    )
    selected = ingest.select_videos(listing, config.classes or None, config.max_videos)
    num_videos = len(selected)
    ingest.check_videos_readable(
        config.dataset_spec, config.videos_location, config.work_dir, selected
    )
    # The checkpoint is read before the output directory is claimed, so that
    # a wrong checkpoint leaves no owned, empty directory behind.
    sha256 = checkpoint_sha256(config)
    check_writable(config.work_dir, "--work_dir")
    prior = prepare_output_dir(config, sha256)
  pipeline = beam.Pipeline(options=options)
  # Progress totals mean something only where one process counts everything.
  expected_videos = num_videos if runs_in_one_process(options) else None
  build(pipeline, config, sha256, expected_videos, prior, listing, handler)
  return pipeline.run()


def job_timings(result: beam.runners.runner.PipelineResult) -> dict[str, float]:
  """Worker seconds spent on each part of embedding, summed over workers and threads.

  `sample_s`: cutting clips (host); `host_wait_s`: the inference thread
  waiting for clips, i.e. host preparation not hidden behind the device;
  `inference_s`: RunInference's batch calls (stacking, transfer, device
  compute, results back); `load_model_s`: loading checkpoints.
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


def summary(config: EmbedJobConfig, counts: dict, seconds: float) -> list[str]:
  """The lines a finished run ends with: what was done, what failed, where it all is."""
  failed = counts["videos_failed"]
  failed_text = f"{failed} failed"
  if failed:
    failed_text += (
        " ("
        + ", ".join(
            f"{stage}: {n}" for stage, n in sorted(counts["videos_failed_by_stage"].items())
        )
        + ")"
    )
  lines = [
      f"finished in {seconds:.0f} s: {counts['videos_written']} videos embedded "
      f"({counts['clips_written_train']} training clips, "
      f"{counts['clips_written_test']} test windows), {failed_text}",
      f"embeddings: {schema.shard_pattern(config.output_dir)}",
      f"run record: {FileSystems.join(config.output_dir, schema.RUN_CONFIG_FILE)}",
  ]
  if failed:
    lines.append(f"failures:   {FileSystems.join(config.output_dir, FAILURES_DIR, FAILURES_FILE)}")
  return lines


def outcome_problem(config: EmbedJobConfig, counts: dict) -> str | None:
  """Why a finished run failed its purpose (nothing embedded, too many failures), or None."""
  written, failed = counts["videos_written"], counts["videos_failed"]
  if not written:
    return f"no video was embedded ({failed} failed)"
  if failed > config.max_failed_share * (written + failed):
    return (
        f"{failed} of {written + failed} videos failed, more than --max_failed_share "
        f"{config.max_failed_share:g}"
    )
  return None


def main(argv: Sequence[str] | None = None, handler: ModelHandler | None = None) -> None:
  """Runs the job, prints its summary; exits 1 if it embedded nothing or too little.

  `handler` replaces the model (see `EmbedClips`).
  """
  started = time.monotonic()
  configure_logging(argv)
  config, beam_args = parse_args(argv)
  result = start(config, beam_args, handler)
  result.wait_until_finish()
  if result.state != beam.runners.runner.PipelineState.DONE:
    return  # A dry run, or an async runner: no results yet.
  # For benchmarks (bench/embed_pipeline_bench.py runs the job with --verbose).
  logging.info("%s%s", TIMINGS_PREFIX, json.dumps(job_timings(result), sort_keys=True))
  with FileSystems.open(FileSystems.join(config.output_dir, schema.RUN_CONFIG_FILE)) as f:
    counts = json.loads(f.read())["counts"]
  for line in summary(config, counts, time.monotonic() - started):
    print(f"{LOG_PREFIX} {line}", flush=True)
  problem = outcome_problem(config, counts)
  if problem:
    print(f"{PROG}: error: {problem}", file=sys.stderr, flush=True)
    sys.exit(1)


if __name__ == "__main__":
  # Run the imported module, not __main__, so that workers in other processes
  # can unpickle this module's classes by their real name.
  from pipelines import embed

  run_main(embed.main, embed.PROG, sys.argv[1:])
