"""The video cache: SequenceExample schema, TFRecord framing, atomic shards, de-dup."""

import json
import os

import pytest
from lazy_tensorflow import tf

from mmv_core.video import video_cache

VIDEOS = [
    video_cache.CachedVideo(
        video_id=f"v_Synth_g0{i}_c01",
        label=i,
        label_name="Synth",
        frames=tuple(b"\xff\xd8" + bytes([i, j]) + b"\xff\xd9" for j in range(i + 1)),
        source_crc32=1000 + i,
    )
    for i in range(3)
]


def test_shards_are_tfrecords_of_sequence_examples(tmp_path):
  shard = video_cache.write_shard(str(tmp_path), VIDEOS)

  records = [r.numpy() for r in tf.data.TFRecordDataset(shard)]
  parsed_context, parsed_lists = tf.io.parse_single_sequence_example(
      records[1],
      context_features={
          video_cache.VIDEO_ID_KEY: tf.io.FixedLenFeature([], tf.string),
          video_cache.LABEL_KEY: tf.io.FixedLenFeature([], tf.int64),
          video_cache.NUM_FRAMES_KEY: tf.io.FixedLenFeature([], tf.int64),
      },
      sequence_features={video_cache.FRAMES_KEY: tf.io.FixedLenSequenceFeature([], tf.string)},
  )
  assert parsed_context[video_cache.VIDEO_ID_KEY].numpy().decode() == VIDEOS[1].video_id
  assert parsed_context[video_cache.LABEL_KEY].numpy() == 1
  assert parsed_context[video_cache.NUM_FRAMES_KEY].numpy() == 2
  assert tuple(parsed_lists[video_cache.FRAMES_KEY].numpy()) == VIDEOS[1].frames
  assert list(video_cache.read_shard(shard)) == VIDEOS


def test_corrupt_shard_is_an_error(tmp_path):
  shard = video_cache.write_shard(str(tmp_path), VIDEOS)
  data = bytearray(open(shard, "rb").read())
  data[40] ^= 0xFF
  open(shard, "wb").write(bytes(data))
  with pytest.raises(video_cache.CacheError, match="CRC|corrupt"):
    list(video_cache.read_shard(shard))


def test_retried_writes_and_crashed_writes_are_invisible_twice(tmp_path):
  work_dir = str(tmp_path)
  video_cache.write_shard(work_dir, VIDEOS[:2])
  video_cache.write_shard(work_dir, VIDEOS[1:])  # A retried bundle commits VIDEOS[1] again.
  # A worker that died mid-write: a partial temp file and a shard without its index.
  root = video_cache.cache_dir(work_dir)
  open(os.path.join(root, video_cache.TMP_DIR, "deadbeef"), "wb").write(b"partial")
  open(os.path.join(root, video_cache.SHARDS_DIR, "orphan.tfrecord"), "wb").write(b"junk")

  assert sorted(video_cache.read_index(work_dir)) == [v.video_id for v in VIDEOS]
  for video in VIDEOS:
    assert video_cache.read_video(video_cache.read_index(work_dir)[video.video_id]) == video


def _drop_byte_ranges(work_dir: str) -> None:
  """Rewrites every index file as releases before byte ranges wrote them."""
  index_dir = os.path.join(video_cache.cache_dir(work_dir), video_cache.INDEX_DIR)
  for name in os.listdir(index_dir):
    path = os.path.join(index_dir, name)
    index = json.loads(open(path).read())
    for video in index["videos"]:
      del video["offset"], video["length"]
    open(path, "w").write(json.dumps(index))


def test_each_video_is_read_by_its_byte_range_also_from_an_older_index(tmp_path):
  work_dir = str(tmp_path)
  video_cache.write_shard(work_dir, VIDEOS)
  _drop_byte_ranges(work_dir)
  assert {e.offset for e in video_cache.read_index(work_dir).values()} == {None}
  located = video_cache.read_index(work_dir, locate=True)
  for video in VIDEOS:
    entry = located[video.video_id]
    assert entry.offset is not None
    assert video_cache.read_video(entry) == video


def test_a_damaged_video_is_uncommitted_alone_also_from_an_older_index(tmp_path):
  work_dir = str(tmp_path)
  video_cache.write_shard(work_dir, VIDEOS)
  _drop_byte_ranges(work_dir)
  entries = video_cache.read_index(work_dir, locate=True)
  video_cache.discard_video(entries[VIDEOS[0].video_id])
  # The others keep their records: their byte ranges are recorded now.
  left = video_cache.read_index(work_dir)
  assert sorted(left) == [v.video_id for v in VIDEOS[1:]]
  for video in VIDEOS[1:]:
    assert video_cache.read_video(left[video.video_id]) == video
