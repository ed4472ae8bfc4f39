"""The main job: UCF101 videos in, MMV clip embeddings out as TFRecords.

    python -m pipelines.embed --checkpoint_path mmv_s3d.pkl \
        --work_dir /tmp/mmv_work --output_dir /tmp/mmv_out

Stages: `Ingest` (split lists, sharded ranged fetch, ffmpeg re-encoding, video
cache; see pipelines/ingest.py) -> Reshuffle (spreads videos over workers
and separates the CPU stages from the accelerator stage) -> `SampleClips`
(decodes each video's JPEG frames once and cuts `--num_train_clips` seeded
training clips and `--num_test_windows` test windows) -> RunInference with
`JaxEmbeddingHandler` -> `tf.train.Example` per clip (schema in
mmv_core/embedding_schema.py) -> `OUTPUT_DIR/embeddings/*.tfrecord`.

Also written: `OUTPUT_DIR/failures/*.jsonl` (one JSON line per video that
failed, with stage and reason) and `OUTPUT_DIR/run.json` (settings, backbone,
checkpoint sha256, package versions, counts). Beam's file sinks commit a
bundle's output only once, so a retried bundle never duplicates clips.
"""

import argparse
import dataclasses
import importlib.metadata
import json
import logging
import os
import platform
import sys
import time
import typing
from collections.abc import Iterator, Sequence

import apache_beam as beam
import numpy as np
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics
from apache_beam.ml.inference.base import KeyedModelHandler, RunInference
from apache_beam.options.pipeline_options import PipelineOptions, TestOptions

from mmv_core import checkpoints
from mmv_core import embedding_schema as schema
from mmv_core import ucf101
from mmv_core import video
from mmv_core.models import mmv
from mmv_core.embedder import EmbedderConfig, VID_REPR, VIDEO_AUDIO, VIDEO_TEXT
from mmv_core.video_cache import CachedVideo
from pipelines import ingest
from pipelines.jax_inference import JaxEmbeddingHandler

METRICS_NAMESPACE = "mmv"
FAILURES_DIR = "failures"
STAGE_SAMPLE = "sample"
STAGE_EMBED = "embed"
# Beam runs locally on the in-process FnApiRunner unless told otherwise: the
# DirectRunner of Beam 2.77 first tries to download the Prism runner.
LOCAL_RUNNER_ARGS = ("--runner=FnApiRunner", "--direct_num_workers=0",
                     "--direct_running_mode=multi_processing")
_PACKAGES = ("apache-beam", "jax", "jaxlib", "dm-haiku", "tensorflow-cpu", "numpy",
             "scikit-learn", "imageio-ffmpeg", "mmv-pipeline")


@dataclasses.dataclass(frozen=True)
class EmbedJobConfig:
  """Every setting of the embedding job (the flags of `parse_args`)."""
  checkpoint_path: str
  work_dir: str
  output_dir: str
  video_zip: str = ucf101.VIDEO_ZIP_URL
  splits_zip: str = ucf101.SPLITS_ZIP_URL
  backbone: str | None = None
  num_frames: int = video.DEFAULT_NUM_FRAMES
  stride: int = video.DEFAULT_STRIDE
  min_resize: int = video.DEFAULT_MIN_RESIZE
  crop_size: int = video.DEFAULT_CROP_SIZE
  num_train_clips: int = 10
  num_test_windows: int = video.DEFAULT_NUM_TEST_WINDOWS
  batch_size: int = 8
  compute_dtype: str = "float32"
  joint_embeddings: bool = False
  seed: int = 0
  classes: tuple[str, ...] = ()
  max_videos: int | None = None
  embed_accelerator: str | None = None
  embed_min_ram: str | None = None
  model_copies: int | None = None

  @property
  def outputs(self) -> tuple[str, ...]:
    return (VID_REPR, VIDEO_AUDIO, VIDEO_TEXT) if self.joint_embeddings else (VID_REPR,)

  @property
  def resolved_backbone(self) -> str:
    return self.backbone or checkpoints.infer_backbone(self.checkpoint_path)


class ClipKey(typing.NamedTuple):
  """What identifies one clip through inference."""
  video_id: str
  label: int
  label_name: str
  clip_type: str
  clip_index: int


def _counter(name: str):
  return Metrics.counter(METRICS_NAMESPACE, name)


# ---- Clip sampling ----

def sample_clips(cached: CachedVideo, config: EmbedJobConfig
                 ) -> Iterator[tuple[ClipKey, np.ndarray]]:
  """All clips of one video: uint8 [T, crop, crop, 3] each, with its key.

  Training clips are seeded by video id, so a re-run cuts the same clips.
  """
  train, test = video.clips_from_jpegs(
      cached.frames, num_train_clips=config.num_train_clips,
      num_test_windows=config.num_test_windows, num_frames=config.num_frames,
      stride=config.stride, min_resize=config.min_resize, crop_size=config.crop_size,
      seed=video.video_seed(cached.video_id, config.seed))
  for clip_type, clips in ((schema.CLIP_TYPE_TRAIN, train), (schema.CLIP_TYPE_TEST, test)):
    for index, clip in enumerate(clips):
      yield ClipKey(cached.video_id, cached.label, cached.label_name, clip_type, index), clip


class SampleClipsFn(beam.DoFn):
  """CachedVideo -> (ClipKey, clip); undecodable videos go to FAILURES."""

  def __init__(self, config: EmbedJobConfig):
    self._config = config

  def process(self, cached: CachedVideo):
    try:
      clips = list(sample_clips(cached, self._config))
    except Exception as e:  # One bad video must not stop the job.
      yield beam.pvalue.TaggedOutput(
          ingest.FAILURES, ingest.failure(cached.video_id, STAGE_SAMPLE, f"{type(e).__name__}: {e}"))
      return
    _counter("videos_sampled").inc()
    yield from clips


# ---- Embeddings out ----

def to_example(keyed_result, outputs: Sequence[str]) -> bytes:
  key, result = keyed_result
  embeddings = result.inference
  _counter(f"clips_embedded_{key.clip_type}").inc()
  return schema.make_example(
      video_id=key.video_id, label=key.label, label_name=key.label_name,
      clip_type=key.clip_type, clip_index=key.clip_index,
      embedding=embeddings[VID_REPR],
      extra_features={name: embeddings[name] for name in outputs if name != VID_REPR},
  ).SerializeToString()


def inference_failure(failed) -> Iterator[dict]:
  """RunInference's failed batch -> one failure per video in it.

  `failed` is (batch of (ClipKey, clip), (exception type, message, traceback)).
  """
  batch, (exception_type, message, _) = failed
  for video_id in sorted({key.video_id for key, _ in batch}):
    yield ingest.failure(video_id, STAGE_EMBED, f"{exception_type.__name__}: {message}")


class ProgressLogger(beam.DoFn):
  """Logs a readable progress line per worker process every few seconds."""

  _INTERVAL_S = 10.0

  def setup(self):
    self._start = self._last = time.monotonic()
    self._clips = 0

  def process(self, element):
    self._clips += 1
    now = time.monotonic()
    if now - self._last >= self._INTERVAL_S:
      self._last = now
      # Printed, not logged: local runners relay worker logs in a form hard to read.
      print(f"[embed] worker {os.getpid()}: {self._clips} clips embedded, "
            f"{self._clips / (now - self._start):.2f} clips/s", file=sys.stderr, flush=True)
    yield element


# ---- Run record ----

def _package_versions() -> dict[str, str]:
  versions = {"python": platform.python_version()}
  for name in _PACKAGES:
    try:
      versions[name] = importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
      pass
  return versions


def write_run_record(counts: dict, *, config: EmbedJobConfig, checkpoint_sha256: str) -> None:
  record = {
      "settings": dataclasses.asdict(config),
      "backbone": config.resolved_backbone,
      "checkpoint_sha256": checkpoint_sha256,
      "versions": _package_versions(),
      schema.NUM_TRAIN_CLIPS: config.num_train_clips,
      schema.NUM_TEST_WINDOWS: config.num_test_windows,
      "counts": counts,
  }
  path = FileSystems.join(config.output_dir, schema.RUN_CONFIG_FILE)
  with FileSystems.create(path) as f:
    f.write(json.dumps(record, indent=2, sort_keys=True).encode())


class _CountsCombineFn(beam.CombineFn):
  """Counts videos and clips written and videos failed, exactly once each."""

  def create_accumulator(self):
    return {"videos": set(), "clips_train": 0, "clips_test": 0, "failed": {}}

  def add_input(self, acc, item):
    kind, value = item
    if kind == "clip":
      video_id, clip_type = value
      acc["videos"].add(video_id)
      acc[f"clips_{clip_type}"] += 1
    else:
      acc["failed"].setdefault(value["video_id"], value["stage"])
    return acc

  def merge_accumulators(self, accs):
    merged = self.create_accumulator()
    for acc in accs:
      merged["videos"] |= acc["videos"]
      merged["clips_train"] += acc["clips_train"]
      merged["clips_test"] += acc["clips_test"]
      merged["failed"].update(acc["failed"])
    return merged

  def extract_output(self, acc):
    failed_by_stage: dict[str, int] = {}
    for stage in acc["failed"].values():
      failed_by_stage[stage] = failed_by_stage.get(stage, 0) + 1
    # A video that failed after some of its clips were embedded is not complete.
    complete = acc["videos"] - set(acc["failed"])
    return {"videos_written": len(complete), "clips_written_train": acc["clips_train"],
            "clips_written_test": acc["clips_test"], "videos_failed": len(acc["failed"]),
            "videos_failed_by_stage": failed_by_stage}


# ---- The pipeline ----

def build(pipeline: beam.Pipeline, config: EmbedJobConfig, checkpoint_sha256: str) -> None:
  """Adds the whole job to `pipeline`."""
  ingested = pipeline | "Ingest" >> ingest.Ingest(
      config.video_zip, config.splits_zip, config.work_dir,
      classes=config.classes or None, max_videos=config.max_videos)

  sampled = (ingested.videos
             | "SpreadVideos" >> beam.Reshuffle()
             | "SampleClips" >> beam.ParDo(SampleClipsFn(config)).with_outputs(
                 ingest.FAILURES, main="clips"))
  handler = KeyedModelHandler(JaxEmbeddingHandler(
      config.checkpoint_path, config.resolved_backbone,
      EmbedderConfig(batch_size=config.batch_size, compute_dtype=config.compute_dtype),
      config.outputs, model_copies=config.model_copies))
  inference = RunInference(handler).with_exception_handling()
  if config.embed_accelerator:
    hints = {"accelerator": config.embed_accelerator}
    if config.embed_min_ram:
      hints["min_ram"] = config.embed_min_ram
    inference = inference.with_resource_hints(**hints)
  embedded, inference_errors = sampled.clips | "Embed" >> inference

  examples = (embedded
              | "Progress" >> beam.ParDo(ProgressLogger())
              | "ToExample" >> beam.Map(to_example, config.outputs))
  _ = examples | "WriteEmbeddings" >> beam.io.WriteToTFRecord(
      FileSystems.join(config.output_dir, schema.SHARDS_DIR, "part"),
      file_name_suffix=schema.SHARD_SUFFIX)

  failures = ((ingested.failures, sampled[ingest.FAILURES],
               inference_errors.failed_inferences
               | "InferenceFailures" >> beam.FlatMap(inference_failure))
              | "AllFailures" >> beam.Flatten())
  _ = (failures
       | "FailuresToJson" >> beam.Map(json.dumps)
       | "WriteFailures" >> beam.io.WriteToText(
           FileSystems.join(config.output_dir, FAILURES_DIR, "failures"),
           file_name_suffix=".jsonl"))

  clip_items = embedded | "ClipItems" >> beam.Map(
      lambda kv: ("clip", (kv[0].video_id, kv[0].clip_type)))
  failure_items = failures | "FailureItems" >> beam.Map(lambda f: ("failure", f))
  _ = ((clip_items, failure_items)
       | "CountItems" >> beam.Flatten()
       | "Counts" >> beam.CombineGlobally(_CountsCombineFn())
       | "WriteRunRecord" >> beam.Map(write_run_record, config=config,
                                      checkpoint_sha256=checkpoint_sha256))


def parse_args(argv: Sequence[str] | None) -> tuple[EmbedJobConfig, list[str]]:
  """Flags -> (job config, remaining Beam pipeline options)."""
  defaults = EmbedJobConfig(checkpoint_path="", work_dir="", output_dir="")
  p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
  p.add_argument("--checkpoint_path", required=True,
                 help="released MMV checkpoint (.pkl) or converted .npz; local, gs:// or https://")
  p.add_argument("--work_dir", required=True, help="video cache (local or gs://), reused across runs")
  p.add_argument("--output_dir", required=True)
  p.add_argument("--video_zip", default=defaults.video_zip)
  p.add_argument("--splits_zip", default=defaults.splits_zip)
  p.add_argument("--backbone", default=None, choices=mmv.BACKBONES,
                 help="default: inferred from the checkpoint's file name")
  for name in ("num_frames", "stride", "min_resize", "crop_size", "num_train_clips",
               "num_test_windows", "batch_size", "seed"):
    p.add_argument(f"--{name}", type=int, default=getattr(defaults, name))
  p.add_argument("--compute_dtype", choices=("float32", "bfloat16"), default=defaults.compute_dtype,
                 help="bfloat16 only pays on accelerators; float32 is the protocol")
  p.add_argument("--joint_embeddings", action="store_true",
                 help="also write the video-audio and video-text joint-space embeddings")
  p.add_argument("--classes", default="", help="comma-separated class names, for trials")
  p.add_argument("--max_videos", type=int, default=None, help="limit the run, for trials")
  p.add_argument("--embed_accelerator", default=None,
                 help='Dataflow resource hint for the embedding step only, e.g. '
                      '"type:nvidia-l4;count:1;install-nvidia-driver"')
  p.add_argument("--embed_min_ram", default=None, help='resource hint, e.g. "16GB"')
  p.add_argument("--model_copies", type=int, default=None,
                 help="models per worker VM shared across its processes (e.g. 1 per GPU)")
  args, beam_args = p.parse_known_args(argv)
  values = vars(args)
  values["classes"] = tuple(c for c in values["classes"].split(",") if c)
  return EmbedJobConfig(**values), beam_args


def run(argv: Sequence[str] | None = None) -> beam.runners.runner.PipelineResult:
  """Builds and runs the job; returns Beam's result (finished unless the runner is async)."""
  config, beam_args = parse_args(argv)
  if not any(a.startswith("--runner") for a in beam_args):
    beam_args = [*LOCAL_RUNNER_ARGS, *beam_args]
  options = PipelineOptions(beam_args)
  if options.view_as(TestOptions).dry_run:
    checkpoint_sha256 = "not read in a dry run"
  else:
    # Fail before any work starts if the checkpoint is unreadable or of the
    # wrong backbone; workers load it again themselves.
    checkpoint = checkpoints.load_checkpoint(config.checkpoint_path)
    checkpoints.validate_tree(checkpoint.params, checkpoint.state,
                              *mmv.param_shapes(config.resolved_backbone),
                              source=config.checkpoint_path)
    checkpoint_sha256 = checkpoint.sha256
  pipeline = beam.Pipeline(options=options)
  build(pipeline, config, checkpoint_sha256)
  return pipeline.run()


def main(argv: Sequence[str] | None = None) -> None:
  logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
  result = run(argv)
  result.wait_until_finish()


if __name__ == "__main__":
  # Run the imported module, not __main__, so that workers in other processes
  # can unpickle this module's classes by their real name.
  from pipelines import embed
  embed.main(sys.argv[1:])
