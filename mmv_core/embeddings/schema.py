"""Clip embeddings on disk: the contract between the embedding and evaluation jobs.

An embedding job's `--output_dir` holds
  `embeddings/*.tfrecord`  TFRecord shards of `tf.train.Example`, one per clip;
  `run.json`               the job's settings, including `num_train_clips`
                           (clips per training video) and `num_test_windows`.

Every example has the features named below: `video_id` (bytes), `label`
(int64, 0-based `classInd.txt` order), `label_name` (bytes), `clip_type`
(bytes, `train` or `test`), `clip_index` (int64, 0-based within the video and
type) and `embedding` (float list, the model's `vid_repr`), plus optional extra
float-list features.
"""

import json
from collections.abc import Iterator, Mapping
from typing import Any

from apache_beam.io.filesystems import FileSystems
import numpy as np

from mmv_core.embeddings import example_proto
from mmv_core.embeddings import tfrecord

VIDEO_ID = "video_id"
LABEL = "label"
LABEL_NAME = "label_name"
CLIP_TYPE = "clip_type"
CLIP_INDEX = "clip_index"
EMBEDDING = "embedding"
SCALAR_FEATURES = (VIDEO_ID, LABEL, LABEL_NAME, CLIP_TYPE, CLIP_INDEX)

CLIP_TYPE_TRAIN = "train"
CLIP_TYPE_TEST = "test"
CLIP_TYPES = (CLIP_TYPE_TRAIN, CLIP_TYPE_TEST)

SHARDS_DIR = "embeddings"
SHARD_SUFFIX = ".tfrecord"
RUN_CONFIG_FILE = "run.json"
NUM_TRAIN_CLIPS = "num_train_clips"
NUM_TEST_WINDOWS = "num_test_windows"
# The embedding job's settings in run.json, among them `splits_zip`, the
# split lists it listed its videos from, and the `classes` and `max_videos`
# that limited that list.
SETTINGS = "settings"
SPLITS_ZIP = "splits_zip"
CLASSES = "classes"
MAX_VIDEOS = "max_videos"


class EmbeddingFormatError(ValueError):
  """An embedding file does not follow this schema."""


def make_example(
    *,
    video_id: str,
    label: int,
    label_name: str,
    clip_type: str,
    clip_index: int,
    embedding: np.ndarray,
    extra_features: Mapping[str, np.ndarray] | None = None,
) -> example_proto.Example:
  """Builds the example of one clip.

  Args:
    video_id: e.g. `v_ApplyEyeMakeup_g08_c01`.
    label: 0-based class index.
    label_name: class name, e.g. `ApplyEyeMakeup`.
    clip_type: `CLIP_TYPE_TRAIN` or `CLIP_TYPE_TEST`.
    clip_index: 0-based index of the clip within its video and type.
    embedding: float [D], the clip's `vid_repr`.
    extra_features: more float arrays (any shape, stored flattened) by name.
  """
  if clip_type not in CLIP_TYPES:
    raise ValueError(f"{video_id}: clip_type {clip_type!r} not in {CLIP_TYPES}")
  extra_features = extra_features or {}
  clashes = set(extra_features) & {*SCALAR_FEATURES, EMBEDDING}
  if clashes:
    raise ValueError(f"{video_id}: extra features reuse reserved names {sorted(clashes)}")

  def bytes_feature(text):
    return example_proto.Feature(bytes_list=example_proto.BytesList(value=[text.encode()]))

  def int_feature(value):
    return example_proto.Feature(int64_list=example_proto.Int64List(value=[int(value)]))

  feature = {
      VIDEO_ID: bytes_feature(video_id),
      LABEL: int_feature(label),
      LABEL_NAME: bytes_feature(label_name),
      CLIP_TYPE: bytes_feature(clip_type),
      CLIP_INDEX: int_feature(clip_index),
  }
  for name, values in {EMBEDDING: embedding, **extra_features}.items():
    flat = np.asarray(values, dtype=np.float32).reshape(-1)
    feature[name] = example_proto.Feature(float_list=example_proto.FloatList(value=flat))
  return example_proto.Example(features=example_proto.Features(feature=feature))


def parse_example(
    serialized: bytes, *, include_floats: bool = True, source: str = "example"
) -> dict[str, Any]:
  """Parses one clip's example.

  Args:
    serialized: a serialized `tf.train.Example`.
    include_floats: whether to decode the float features, the expensive part;
      without them only the scalar features come back.
    source: names the record in errors, e.g. `shard-00001.tfrecord#17`.

  Returns:
    `{VIDEO_ID: str, LABEL: int, LABEL_NAME: str, CLIP_TYPE: str,
    CLIP_INDEX: int}` and, with `include_floats`, `EMBEDDING` (float32 [D]) and
    every extra float feature (float32, flat) by name.

  Raises:
    EmbeddingFormatError: naming `source`, if the record is not an Example
      of this schema or a float feature holds NaN or infinite values.
  """
  try:
    features = example_proto.Example.FromString(serialized).features.feature
  except Exception as e:  # protobuf raises its own DecodeError type.
    raise EmbeddingFormatError(f"{source}: not a tf.train.Example ({e})") from e

  def single(name, kind):
    if name not in features:
      raise EmbeddingFormatError(f"{source}: feature {name!r} is missing")
    values = getattr(features[name], kind).value
    if len(values) != 1:
      raise EmbeddingFormatError(
          f"{source}: feature {name!r} has {len(values)} {kind} values, expected 1"
      )
    return values[0]

  parsed = {
      VIDEO_ID: single(VIDEO_ID, "bytes_list").decode(),
      LABEL: int(single(LABEL, "int64_list")),
      LABEL_NAME: single(LABEL_NAME, "bytes_list").decode(),
      CLIP_TYPE: single(CLIP_TYPE, "bytes_list").decode(),
      CLIP_INDEX: int(single(CLIP_INDEX, "int64_list")),
  }
  if parsed[CLIP_TYPE] not in CLIP_TYPES:
    raise EmbeddingFormatError(f"{source}: clip_type {parsed[CLIP_TYPE]!r} not in {CLIP_TYPES}")
  if include_floats:
    if EMBEDDING not in features:
      raise EmbeddingFormatError(f"{source}: feature {EMBEDDING!r} is missing")
    for name, feature in features.items():
      if name not in SCALAR_FEATURES:
        values = example_proto.float_values(feature.float_list)
        if not np.isfinite(values).all():
          raise EmbeddingFormatError(
              f"{source}: feature {name!r} of {parsed[VIDEO_ID]} {parsed[CLIP_TYPE]} clip "
              f"{parsed[CLIP_INDEX]} holds NaN or infinite values"
          )
        parsed[name] = values
  return parsed


def shard_pattern(output_dir: str) -> str:
  """Glob of the embedding shards under an embedding job's output dir."""
  return FileSystems.join(output_dir, SHARDS_DIR, f"*{SHARD_SUFFIX}*")


def shard_paths(output_dir: str) -> list[str]:
  """Sorted paths of the embedding shards; an error if there are none."""
  pattern = shard_pattern(output_dir)
  paths = sorted(m.path for m in FileSystems.match([pattern])[0].metadata_list)
  if not paths:
    raise EmbeddingFormatError(f"{pattern}: no embedding shards")
  return paths


def read_run_config(output_dir: str) -> dict[str, Any]:
  """The embedding job's `run.json`, checked for the clip counts it must give."""
  path = FileSystems.join(output_dir, RUN_CONFIG_FILE)
  try:
    with FileSystems.open(path) as f:
      config = json.loads(f.read())
  except Exception as e:
    raise EmbeddingFormatError(f"{path}: cannot read run settings ({e})") from e
  for key in (NUM_TRAIN_CLIPS, NUM_TEST_WINDOWS):
    if not isinstance(config.get(key), int) or config[key] < 1:
      raise EmbeddingFormatError(
          f"{path}: {key!r} must be a positive integer, got {config.get(key)!r}"
      )
  return config


def iter_records(path: str) -> Iterator[bytes]:
  """Streams the serialized examples of one shard (local or gs://), checksums verified."""
  return tfrecord.iter_records(path, error=EmbeddingFormatError)


def embedding_records(output_dir: str) -> Iterator[tuple[str, bytes]]:
  """(source `path#index`, serialized example) of every clip of an embedding job's output."""
  for path in shard_paths(output_dir):
    for index, record in enumerate(iter_records(path)):
      yield f"{path}#{index}", record
