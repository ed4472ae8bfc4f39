"""The re-encoded video cache: TFRecord shards of `tf.train.SequenceExample`.

Stage: end of ingestion, start of feature extraction. Layout under
`<work_dir>/video_cache/`:

- `shards/<uuid>.tfrecord`: one `SequenceExample` per video; the JPEG frames
  are the feature list `FRAMES_KEY`, the context holds id, label, class name,
  frame count and the CRC-32 of the source video.
- `index/<uuid>.json`: the videos of the shard of the same name. An index file
  is the shard's commit record: written last, and only after the shard is
  complete under its final name.
- `tmp/`: files being written; their final names appear by rename.

A worker that dies mid-write leaves at most an uncommitted file that no reader
sees. A retried bundle can commit the same video twice in two shards;
`read_index` keeps the first shard (by name) for each id, so readers see each
video once.

Damage costs a rerun's fetch, never the job: `read_index` skips an index file
that does not parse (its videos read as not cached), and a shard found
truncated, corrupt or missing is uncommitted by `discard_shard`, so that its
videos are fetched and cached again.
"""

import dataclasses
import json
import logging
import uuid
from collections.abc import Iterable, Iterator, Sequence

from apache_beam.io.filesystems import FileSystems

from mmv_core import example_proto
from mmv_core import tfrecord

CACHE_DIR = "video_cache"
SHARDS_DIR = "shards"
INDEX_DIR = "index"
TMP_DIR = "tmp"
SHARD_SUFFIX = ".tfrecord"
INDEX_SUFFIX = ".json"

# SequenceExample features.
VIDEO_ID_KEY = "video/id"
LABEL_KEY = "video/label/index"
LABEL_NAME_KEY = "video/label/name"
NUM_FRAMES_KEY = "video/num_frames"
SOURCE_CRC32_KEY = "video/source_crc32"
FRAMES_KEY = "image/encoded"


class CacheError(IOError):
  """A cache file is corrupt or inconsistent with its index."""


@dataclasses.dataclass(frozen=True)
class CachedVideo:
  """A re-encoded video.

  Attributes:
    video_id: file stem, e.g. `v_ApplyEyeMakeup_g08_c01`.
    label: 0-based class index (`classInd.txt` order).
    label_name: class name.
    frames: JPEG images as ffmpeg wrote them, one per frame at 25 fps.
    source_crc32: CRC-32 of the source video file.
  """

  video_id: str
  label: int
  label_name: str
  frames: tuple[bytes, ...]
  source_crc32: int

  @property
  def num_frames(self) -> int:
    return len(self.frames)


@dataclasses.dataclass(frozen=True)
class IndexEntry:
  """What the index records of one cached video, and its shard's path."""

  video_id: str
  label: int
  label_name: str
  num_frames: int
  source_crc32: int
  shard: str


def cache_dir(work_dir: str) -> str:
  return FileSystems.join(work_dir, CACHE_DIR)


# ---- SequenceExample ----


def to_sequence_example(video: CachedVideo) -> bytes:
  """Serializes a video as a `tf.train.SequenceExample`."""
  example = example_proto.SequenceExample()
  context = example.context.feature
  context[VIDEO_ID_KEY].bytes_list.value.append(video.video_id.encode())
  context[LABEL_KEY].int64_list.value.append(video.label)
  context[LABEL_NAME_KEY].bytes_list.value.append(video.label_name.encode())
  context[NUM_FRAMES_KEY].int64_list.value.append(video.num_frames)
  context[SOURCE_CRC32_KEY].int64_list.value.append(video.source_crc32)
  frames = example.feature_lists.feature_list[FRAMES_KEY]
  for frame in video.frames:
    frames.feature.add().bytes_list.value.append(frame)
  return example.SerializeToString()


def from_sequence_example(record: bytes) -> CachedVideo:
  """Parses a record written by `to_sequence_example`."""
  try:
    example = example_proto.SequenceExample.FromString(record)
  except Exception as e:  # protobuf's DecodeError, whose module varies by backend.
    raise CacheError(f"not a SequenceExample ({e})") from e
  context = example.context.feature
  try:
    frames = tuple(
        f.bytes_list.value[0] for f in example.feature_lists.feature_list[FRAMES_KEY].feature
    )
    video = CachedVideo(
        video_id=context[VIDEO_ID_KEY].bytes_list.value[0].decode(),
        label=context[LABEL_KEY].int64_list.value[0],
        label_name=context[LABEL_NAME_KEY].bytes_list.value[0].decode(),
        frames=frames,
        source_crc32=context[SOURCE_CRC32_KEY].int64_list.value[0],
    )
  except (KeyError, IndexError) as e:
    raise CacheError(f"a cached video lacks feature {e}") from e
  if context[NUM_FRAMES_KEY].int64_list.value[0] != len(frames):
    raise CacheError(
        f"{video.video_id}: record says "
        f"{context[NUM_FRAMES_KEY].int64_list.value[0]} frames, holds {len(frames)}"
    )
  return video


# ---- Shards and index ----


def _write_atomically(path: str, content: bytes, tmp_dir: str) -> None:
  """Writes `content` under a temporary name in `tmp_dir`, then renames it to `path`."""
  tmp_path = FileSystems.join(tmp_dir, uuid.uuid4().hex)
  with FileSystems.create(tmp_path) as f:
    f.write(content)
  _ensure_dir(FileSystems.split(path)[0])
  FileSystems.rename([tmp_path], [path])


def _ensure_dir(path: str) -> None:
  # Object stores have no directories; only local paths need them made.
  if "://" not in path and not FileSystems.exists(path):
    try:
      FileSystems.mkdirs(path)
    except IOError:
      if not FileSystems.exists(path):  # Another worker may have made it meanwhile.
        raise


def write_shard(work_dir: str, videos: Sequence[CachedVideo]) -> str:
  """Writes `videos` as one new shard and commits it; returns the shard's path.

  The shard is complete under its final name before its index file exists;
  both appear by rename from `tmp/`.
  """
  root = cache_dir(work_dir)
  tmp_dir = FileSystems.join(root, TMP_DIR)
  _ensure_dir(tmp_dir)
  shard_id = uuid.uuid4().hex
  shard_path = FileSystems.join(root, SHARDS_DIR, shard_id + SHARD_SUFFIX)
  _write_atomically(
      shard_path, b"".join(tfrecord.encode_record(to_sequence_example(v)) for v in videos), tmp_dir
  )
  index = {
      "shard": shard_id + SHARD_SUFFIX,
      "videos": [
          {
              "video_id": v.video_id,
              "label": v.label,
              "label_name": v.label_name,
              "num_frames": v.num_frames,
              "source_crc32": v.source_crc32,
          }
          for v in videos
      ],
  }
  _write_atomically(
      FileSystems.join(root, INDEX_DIR, shard_id + INDEX_SUFFIX),
      json.dumps(index).encode(),
      tmp_dir,
  )
  return shard_path


def _read_index_file(path: str, root: str) -> list[IndexEntry]:
  """The entries of one index file; `CacheError` if it is not one `write_shard` wrote."""
  with FileSystems.open(path) as f:
    content = f.read()
  try:
    index = json.loads(content)
    shard = FileSystems.join(root, SHARDS_DIR, index["shard"])
    return [IndexEntry(shard=shard, **video) for video in index["videos"]]
  except (ValueError, KeyError, TypeError) as e:  # Not JSON, or not the schema.
    raise CacheError(f"{path}: not a valid index file ({type(e).__name__}: {e})") from e


def read_index(work_dir: str) -> dict[str, IndexEntry]:
  """Every committed video by id; the first shard by name wins for duplicates.

  An index file that cannot be parsed is skipped with a warning: its videos
  are then not cached as far as readers know, and get fetched again.
  """
  root = cache_dir(work_dir)
  pattern = FileSystems.join(root, INDEX_DIR, "*" + INDEX_SUFFIX)
  match = FileSystems.match([pattern])[0]
  entries: dict[str, IndexEntry] = {}
  for path in sorted(m.path for m in match.metadata_list):
    try:
      index_entries = _read_index_file(path, root)
    except CacheError as e:
      logging.warning("%s; skipped, its videos will be fetched again", e)
      continue
    for entry in index_entries:
      entries.setdefault(entry.video_id, entry)
  return entries


def discard_shard(shard_path: str) -> None:
  """Uncommits a damaged shard: deletes its index file, then the shard itself.

  Its videos are no longer cached (unless another shard holds them too), so
  the next run fetches them again. A file already gone is no error: another
  worker may have discarded the same shard.
  """
  shards_dir, shard_name = FileSystems.split(shard_path)
  index_path = FileSystems.join(
      FileSystems.split(shards_dir)[0],
      INDEX_DIR,
      shard_name.removesuffix(SHARD_SUFFIX) + INDEX_SUFFIX,
  )
  for path in (index_path, shard_path):
    try:
      FileSystems.delete([path])
    except IOError:
      if FileSystems.exists(path):
        raise


def read_shard(shard_path: str, video_ids: Iterable[str] | None = None) -> Iterator[CachedVideo]:
  """Yields the videos of a shard, only those in `video_ids` when given.

  Raises:
    CacheError: the shard is missing, truncated or corrupt.
  """
  if not FileSystems.exists(shard_path):
    raise CacheError(f"{shard_path}: the cache index lists this shard, it does not exist")
  wanted = None if video_ids is None else set(video_ids)
  for index, record in enumerate(tfrecord.iter_records(shard_path, error=CacheError)):
    try:
      video = from_sequence_example(record)
    except CacheError as e:
      raise CacheError(f"{shard_path}#{index}: {e}") from e
    if wanted is None or video.video_id in wanted:
      yield video
