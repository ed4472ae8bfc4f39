"""Video: from a dataset's files to the clips the networks embed.

Modules, in the order a video goes through them:
  `sources`            bytes from local paths, `gs://` objects and
                       `http(s)://` URLs (whole, sizes, byte ranges);
  `zip_index`          ZIP archives read member by member through ranges;
  `encoding_recipes`   how a dataset's videos become JPEG frames, as data;
  `encode`             re-encoding a video as JPEG frames with ffmpeg;
  `video_cache`        the re-encoded frames on disk (TFRecord shards of
                       `SequenceExample`, with an index);
  `frames`             per-frame operations: JPEG decoding, resize, crop, flip;
  `clips`              the protocol's sampling: test windows and training
                       clips cut from the frames;
  `video_file`         all of it for one file or URL (`mmv_core.load_video`).

The protocol's clip functions and defaults (`frames`, `clips`) are
re-exported here: `from mmv_core import video; video.test_clips(...)`.
"""

from mmv_core.video.clips import DEFAULT_CROP_SIZE, DEFAULT_MIN_RESIZE, DEFAULT_NUM_FRAMES
from mmv_core.video.clips import DEFAULT_NUM_TEST_WINDOWS, DEFAULT_NUM_TRAIN_CLIPS
from mmv_core.video.clips import DEFAULT_STRIDE, clips_from_jpegs, test_clips
from mmv_core.video.clips import test_clips_from_jpegs, test_window_indices, train_clip_indices
from mmv_core.video.clips import train_clips, train_clips_from_jpegs, video_seed
from mmv_core.video.frames import MAX_DECODED_BYTES, central_crop, decode_jpeg_frames
from mmv_core.video.frames import random_crop, random_flip_left_right, resize_frames
from mmv_core.video.frames import resized_size, to_float

__all__ = [
    "DEFAULT_CROP_SIZE",
    "DEFAULT_MIN_RESIZE",
    "DEFAULT_NUM_FRAMES",
    "DEFAULT_NUM_TEST_WINDOWS",
    "DEFAULT_NUM_TRAIN_CLIPS",
    "DEFAULT_STRIDE",
    "MAX_DECODED_BYTES",
    "central_crop",
    "clips_from_jpegs",
    "decode_jpeg_frames",
    "random_crop",
    "random_flip_left_right",
    "resize_frames",
    "resized_size",
    "test_clips",
    "test_clips_from_jpegs",
    "test_window_indices",
    "to_float",
    "train_clip_indices",
    "train_clips",
    "train_clips_from_jpegs",
    "video_seed",
]
