"""The re-encoded video cache: TFRecord shards of `tf.train.SequenceExample`.

Stage: end of ingestion, start of feature extraction. Layout under
`<work_dir>/video_cache/`:

- `shards/<uuid>.tfrecord`: one `SequenceExample` per video; the JPEG frames
  are the feature list `FRAMES_KEY`, the context holds id, label, class name,
  frame count and the CRC-32 of the source video.
- `index/<uuid>.json`: the videos of the shard of the same name, in shard
  order, each with the byte range of its record (index files written before
  ranges were recorded lack them; `read_index(locate=True)` finds them from
  the shard's record headers). An index file is the shard's commit record:
  written last, and only after the shard is complete under its final name.
- `tmp/`: files being written; their final names appear by rename.

Jobs pass `VideoRef`s (a listed video and its `IndexEntry`) between their
stages, never frames: the step that needs a video's frames reads its one
record by byte range (`read_video`), so what a runner holds between stages
is a few hundred bytes per video whatever the videos weigh.

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
import threading
import uuid
from collections.abc import Iterable, Iterator, Sequence

from apache_beam.io.filesystems import FileSystems

from mmv_core.embeddings import example_proto
from mmv_core.video import sources
from mmv_core.embeddings import tfrecord

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
  """What the index records of one cached video, and where its record is.

  Attributes:
    video_id: the cache key the video was written under.
    label, label_name, num_frames, source_crc32: as in `CachedVideo`.
    shard: path of the shard holding it.
    offset, length: the byte range of its framed record in `shard`; None
      until located, for index files written before ranges were recorded.
    position: its record's place in the shard (0-based).
  """

  video_id: str
  label: int
  label_name: str
  num_frames: int
  source_crc32: int
  shard: str
  offset: int | None = None
  length: int | None = None
  position: int = 0


@dataclasses.dataclass(frozen=True)
class VideoRef:
  """A listed video and where its frames are cached: what crosses a job's stages.

  Attributes:
    video_id, label, label_name: as the current listing gives them (a cache
      filled under other lists cannot leak stale labels).
    entry: the cached record (`entry.video_id` is its cache key).
  """

  video_id: str
  label: int
  label_name: str
  entry: IndexEntry


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
  return example_proto.serialize(example)


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


class ShardWriter:
  """Writes one shard a video at a time, so a writer holds at most one video's frames.

  `add` appends a video's record to a file under `tmp/`; `commit` renames
  the file into `shards/` and writes its index, making every added video
  visible at once; `discard` drops an uncommitted shard. A writer that is
  never committed leaves at most a file in `tmp/`, which no reader sees.
  """

  def __init__(self, work_dir: str):
    self._root = cache_dir(work_dir)
    self._tmp_dir = FileSystems.join(self._root, TMP_DIR)
    self._tmp_path = None
    self._file = None
    self._entries: list[dict] = []
    self._offset = 0

  def __len__(self) -> int:
    return len(self._entries)

  def add(self, video: CachedVideo) -> None:
    if self._file is None:
      _ensure_dir(self._tmp_dir)
      self._tmp_path = FileSystems.join(self._tmp_dir, uuid.uuid4().hex)
      self._file = FileSystems.create(self._tmp_path)
    record = tfrecord.encode_record(to_sequence_example(video))
    self._file.write(record)
    self._entries.append(
        {
            "video_id": video.video_id,
            "label": video.label,
            "label_name": video.label_name,
            "num_frames": video.num_frames,
            "source_crc32": video.source_crc32,
            "offset": self._offset,
            "length": len(record),
        }
    )
    self._offset += len(record)

  def commit(self) -> list[IndexEntry]:
    """Commits the shard (none if nothing was added); returns its videos' index entries."""
    if self._file is None:
      return []
    self._file.close()
    shard_id = uuid.uuid4().hex
    shard_path = FileSystems.join(self._root, SHARDS_DIR, shard_id + SHARD_SUFFIX)
    _ensure_dir(FileSystems.split(shard_path)[0])
    FileSystems.rename([self._tmp_path], [shard_path])
    index = {"shard": shard_id + SHARD_SUFFIX, "videos": self._entries}
    _write_atomically(
        FileSystems.join(self._root, INDEX_DIR, shard_id + INDEX_SUFFIX),
        json.dumps(index).encode(),
        self._tmp_dir,
    )
    entries = [
        IndexEntry(shard=shard_path, position=position, **video)
        for position, video in enumerate(self._entries)
    ]
    self._file, self._entries, self._offset = None, [], 0
    return entries

  def discard(self) -> None:
    """Drops what was added and not committed."""
    if self._file is not None:
      self._file.close()
      FileSystems.delete([self._tmp_path])
      self._file, self._entries, self._offset = None, [], 0


def write_shard(work_dir: str, videos: Sequence[CachedVideo]) -> str:
  """Writes `videos` as one new shard and commits it; returns the shard's path."""
  if not videos:
    raise ValueError("a shard needs at least one video")
  writer = ShardWriter(work_dir)
  for video in videos:
    writer.add(video)
  return writer.commit()[0].shard


def _read_index_file(path: str, root: str) -> list[IndexEntry]:
  """The entries of one index file; `CacheError` if it is not one `ShardWriter` wrote."""
  with FileSystems.open(path) as f:
    content = f.read()
  try:
    index = json.loads(content)
    shard = FileSystems.join(root, SHARDS_DIR, index["shard"])
    return [
        IndexEntry(shard=shard, position=position, **video)
        for position, video in enumerate(index["videos"])
    ]
  except (ValueError, KeyError, TypeError) as e:  # Not JSON, or not the schema.
    raise CacheError(f"{path}: not a valid index file ({type(e).__name__}: {e})") from e


def _located(entries: list[IndexEntry]) -> list[IndexEntry]:
  """`entries` (of one shard) with their byte ranges, read from the shard's record headers
  where the index file did not record them; as they are if the shard cannot be scanned."""
  if not entries or entries[0].offset is not None:
    return entries
  try:
    spans = tfrecord.record_spans(entries[0].shard, error=CacheError)
  except Exception as e:  # Damaged or unreadable: reading the video will say so.
    logging.warning("%s: cannot locate its records (%s)", entries[0].shard, e)
    return entries
  return [
      dataclasses.replace(entry, offset=spans[entry.position][0], length=spans[entry.position][1])
      if entry.position < len(spans)
      else entry
      for entry in entries
  ]


def read_index(work_dir: str, locate: bool = False) -> dict[str, IndexEntry]:
  """Every committed video by id; the first shard by name wins for duplicates.

  An index file that cannot be parsed is skipped with a warning: its videos
  are then not cached as far as readers know, and get fetched again. With
  `locate`, entries of older index files without byte ranges get them from
  their shard's record headers (a seek per record).
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
    if locate:
      index_entries = _located(index_entries)
    for entry in index_entries:
      entries.setdefault(entry.video_id, entry)
  return entries


def _shard_damage(entry: IndexEntry) -> str | None:
  """What is wrong with the shard of `entry` if it is missing or too short for its record."""
  if not FileSystems.exists(entry.shard):
    return f"{entry.shard}: the cache index lists this shard, it does not exist"
  size = sources.size(entry.shard)
  if size < entry.offset + entry.length:
    return (
        f"{entry.shard}: truncated ({size} bytes; {entry.video_id}'s record ends at byte "
        f"{entry.offset + entry.length})"
    )
  return None


def read_video(entry: IndexEntry) -> CachedVideo:
  """The cached video of `entry`, read by its byte range (its whole shard if it has none).

  Raises:
    CacheError: the shard is missing, or the record at the range is
      truncated, corrupt or another video's.
    sources.SourceError: the shard cannot be read now (storage out of reach).
  """
  if entry.offset is None:
    for video in read_shard(entry.shard, [entry.video_id]):
      return video
    raise CacheError(f"{entry.shard}: the cache index lists {entry.video_id}, the shard lacks it")
  where = f"{entry.shard}@{entry.offset}"
  try:
    framed = sources.read_range(entry.shard, entry.offset, entry.length)
  except sources.SourceError as e:
    damage = _shard_damage(entry)
    if damage:
      raise CacheError(damage) from e
    raise
  video = from_sequence_example(tfrecord.decode_record(framed, where, error=CacheError))
  if video.video_id != entry.video_id:
    raise CacheError(f"{where}: holds {video.video_id}, the cache index says {entry.video_id}")
  return video


def _index_path(shard_path: str) -> str:
  """The index file that commits `shard_path`."""
  shards_dir, shard_name = FileSystems.split(shard_path)
  return FileSystems.join(
      FileSystems.split(shards_dir)[0],
      INDEX_DIR,
      shard_name.removesuffix(SHARD_SUFFIX) + INDEX_SUFFIX,
  )


def discard_shard(shard_path: str) -> None:
  """Uncommits a damaged shard: deletes its index file, then the shard itself.

  Its videos are no longer cached (unless another shard holds them too), so
  the next run fetches them again. A file already gone is no error: another
  worker may have discarded the same shard.
  """
  for path in (_index_path(shard_path), shard_path):
    try:
      FileSystems.delete([path])
    except IOError:
      if FileSystems.exists(path):
        raise


# Index rewrites in this process one at a time, so that none undoes another's.
_index_rewrite_lock = threading.Lock()


def discard_video(entry: IndexEntry) -> None:
  """Uncommits one video whose record is damaged; its shard's other videos stay cached.

  Its shard's index file is rewritten without it, every remaining video with
  its byte range (the shard goes with its index once no video is left, or if
  the others' ranges cannot be found; a missing shard goes whole), so the
  next run fetches it again. Two workers rewriting one index at the same
  moment may each keep the other's video: that one fails once more and goes
  then.
  """
  if not FileSystems.exists(entry.shard):
    discard_shard(entry.shard)
    return
  index_path = _index_path(entry.shard)
  root = FileSystems.split(FileSystems.split(index_path)[0])[0]
  with _index_rewrite_lock:
    try:
      entries = _located(_read_index_file(index_path, root))
    except Exception:  # Gone or unreadable: the video is not served as cached either way.
      return
    kept = [e for e in entries if e.video_id != entry.video_id]
    if len(kept) == len(entries):
      return
    if not kept or any(e.offset is None for e in kept):
      discard_shard(entry.shard)
      return
    videos = [
        {
            field.name: getattr(e, field.name)
            for field in dataclasses.fields(IndexEntry)
            if field.name not in ("shard", "position")
        }
        for e in kept
    ]
    index = {"shard": FileSystems.split(entry.shard)[1], "videos": videos}
    _write_atomically(index_path, json.dumps(index).encode(), FileSystems.join(root, TMP_DIR))


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
