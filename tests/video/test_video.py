"""Tests of mmv_core.video: sampling, decoding, resizing, cropping and clips."""

import io
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest
from lazy_tensorflow import tf
from PIL import Image

from mmv_core.video import encode
from mmv_core.datasets import synthetic
from mmv_core import video
from mmv_core.video.frames import resize_to


def _random_frames(num: int, height: int, width: int, seed: int = 0) -> np.ndarray:
  return np.random.default_rng(seed).integers(0, 256, (num, height, width, 3), dtype=np.uint8)


def _encode_jpegs(frames: np.ndarray) -> list[bytes]:
  return [tf.io.encode_jpeg(frame, quality=95).numpy() for frame in frames]


def _bilinear_half_pixel(frames: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
  """Independent float32 bilinear resize with half-pixel centres, no antialias.

  Source coordinate of output pixel i is (i + 0.5) * in/out - 0.5; the two
  neighbours are floor/ceil of it clamped to the image, weighted by its
  fractional part; x is interpolated first, then y.
  """
  in_h, in_w = frames.shape[1:3]

  def taps(out_size, in_size):
    scale = np.float32(in_size) / np.float32(out_size)
    source = (np.arange(out_size, dtype=np.float32) + np.float32(0.5)) * scale
    source = source - np.float32(0.5)
    floor = np.floor(source)
    lower = np.maximum(floor, 0).astype(np.int64)
    upper = np.minimum(np.ceil(source), in_size - 1).astype(np.int64)
    return lower, upper, (source - floor).astype(np.float32)

  y0, y1, wy = taps(out_h, in_h)
  x0, x1, wx = taps(out_w, in_w)
  pixels = frames.astype(np.float32)
  wx = wx[None, None, :, None]
  top = pixels[:, y0][:, :, x0] + (pixels[:, y0][:, :, x1] - pixels[:, y0][:, :, x0]) * wx
  bottom = pixels[:, y1][:, :, x0] + (pixels[:, y1][:, :, x1] - pixels[:, y1][:, :, x0]) * wx
  return top + (bottom - top) * wy[None, :, None, None]


def _crop_or_pad_reference(frames: np.ndarray, crop: int) -> np.ndarray:
  """Crop or zero-pad each axis separately, centred with floor offsets."""
  out = frames
  for axis in (1, 2):
    size = out.shape[axis]
    if size >= crop:
      start = (size - crop) // 2
      out = np.take(out, np.arange(start, start + crop), axis=axis)
    else:
      before = (crop - size) // 2
      widths = [(0, 0)] * 4
      widths[axis] = (before, crop - size - before)
      out = np.pad(out, widths)
  return out


# Sampling.


@pytest.mark.parametrize('num_video_frames', [1, 5, 63, 64, 65, 100, 175, 333, 500])
@pytest.mark.parametrize(
    'num_frames,stride,num_windows', [(32, 2, 10), (32, 1, 10), (8, 3, 7), (16, 2, 1), (4, 1, 2)]
)
def test_test_window_offsets_match_tf_linspace_and_cast(
    num_video_frames, num_frames, stride, num_windows
):
  max_offset = max(0, num_video_frames - num_frames * stride)
  offsets = tf.cast(
      tf.linspace(0.0, tf.cast(max_offset, tf.float32), num_windows), tf.int32
  ).numpy()
  expected = (offsets[:, None] + np.arange(num_frames) * stride) % num_video_frames

  indices = video.test_window_indices(num_video_frames, num_frames, stride, num_windows)

  assert indices.dtype == np.int64
  np.testing.assert_array_equal(indices, expected)


def test_test_window_offsets_follow_float32_truncation_over_many_lengths():
  for num_video_frames in range(64, 2000, 7):
    max_offset = np.float32(num_video_frames - 64)
    tf_offsets = tf.cast(tf.linspace(0.0, max_offset, 10), tf.int32).numpy()
    indices = video.test_window_indices(num_video_frames)
    np.testing.assert_array_equal(indices[:, 0], tf_offsets, err_msg=str(num_video_frames))


def test_test_windows_follow_the_spec_formula():
  # L = 175 (7 s at 25 fps): max offset 111, offsets floor(111 * w / 9).
  indices = video.test_window_indices(175, num_frames=32, stride=2, num_windows=10)

  assert indices.shape == (10, 32)
  np.testing.assert_array_equal(indices[:, 0], [111 * w // 9 for w in range(10)])
  np.testing.assert_array_equal(np.diff(indices, axis=1), 2)
  # The maximum offset is L - T*s, not L - (T-1)*s: the last window stops one
  # stride short of the end.
  assert indices[-1, -1] == 175 - 2


def test_short_test_video_loops_from_the_start():
  indices = video.test_window_indices(20, num_frames=32, stride=2, num_windows=3)

  expected = (np.arange(32) * 2) % 20
  np.testing.assert_array_equal(indices, np.stack([expected] * 3))


def test_single_frame_video_repeats_its_frame():
  np.testing.assert_array_equal(video.test_window_indices(1), np.zeros((10, 32)))
  rng = np.random.default_rng(0)
  np.testing.assert_array_equal(video.train_clip_indices(1, 32, 2, rng), np.zeros(32))


@pytest.mark.parametrize(
    'num_video_frames,num_offsets',
    [
        (100, 100 - 31 * 2),  # Long enough: offsets keep the clip inside the video.
        (63, 1),  # L == (T-1)*s + 1: a single clip fits.
        (62, 62),  # L == (T-1)*s: does not fit, so any start, and the clip loops.
        (20, 20),  # Short video.
    ],
)
def test_train_offsets_cover_exactly_the_spec_range(num_video_frames, num_offsets):
  rng = np.random.default_rng(1)
  starts = set()
  for _ in range(3000):
    indices = video.train_clip_indices(num_video_frames, 32, 2, rng)
    assert indices.dtype == np.int64 and indices.shape == (32,)
    np.testing.assert_array_equal(indices, (indices[0] + np.arange(32) * 2) % num_video_frames)
    starts.add(int(indices[0]))
  assert starts == set(range(num_offsets))


@pytest.mark.parametrize(
    'kwargs',
    [
        dict(num_video_frames=0),
        dict(num_video_frames=-3),
        dict(num_frames=0),
        dict(stride=0),
        dict(num_windows=0),
    ],
)
def test_sampling_rejects_non_positive_sizes(kwargs):
  args = dict(num_video_frames=10, num_frames=4, stride=1, num_windows=2) | kwargs
  with pytest.raises(ValueError, match=next(iter(kwargs))):
    video.test_window_indices(**args)
  if 'num_windows' not in kwargs:
    del args['num_windows']
    with pytest.raises(ValueError, match=next(iter(kwargs))):
      video.train_clip_indices(**args, rng=np.random.default_rng(0))


def test_video_seed_is_stable_and_distinguishes_videos_and_seeds():
  seed = video.video_seed('ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01.avi', 0)

  assert seed == video.video_seed('ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01.avi', 0)
  assert seed != video.video_seed('ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c02.avi', 0)
  assert seed != video.video_seed('ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01.avi', 1)
  assert 0 <= seed < 2**63
  np.random.default_rng(seed)


def test_video_seed_is_the_same_in_another_python_process():
  # Another process with another string-hash seed must derive the same seed.
  code = 'from mmv_core import video; print(video.video_seed("v_Biking_g01_c03", 7))'
  result = subprocess.run(
      [sys.executable, '-c', code],
      capture_output=True,
      text=True,
      check=True,
      cwd=pathlib.Path(__file__).parents[2],
      env=dict(os.environ, PYTHONHASHSEED='12345'),
  )
  assert int(result.stdout.split()[-1]) == video.video_seed('v_Biking_g01_c03', 7)


# Decoding.


def test_decode_matches_tf_decoder_and_selects_frames():
  frames = _random_frames(5, 30, 40)
  jpegs = _encode_jpegs(frames)
  expected = np.stack([tf.io.decode_jpeg(j, channels=3).numpy() for j in jpegs])

  all_frames = video.decode_jpeg_frames(jpegs)
  some_frames = video.decode_jpeg_frames(jpegs, [3, 0, 3])

  assert all_frames.dtype == np.uint8 and all_frames.shape == (5, 30, 40, 3)
  np.testing.assert_array_equal(all_frames, expected)
  np.testing.assert_array_equal(some_frames, expected[[3, 0, 3]])


@pytest.mark.parametrize(
    'height,width,quality,subsampling,mode',
    [
        (240, 320, 90, 0, 'RGB'),
        (240, 320, 75, 2, 'RGB'),
        (101, 77, 50, 1, 'RGB'),
        (13, 17, 30, 2, 'RGB'),
        (256, 340, 95, 2, 'L'),
        (720, 1280, 85, 2, 'RGB'),
    ],
)
def test_decode_equals_tf_decoder_across_encodings(height, width, quality, subsampling, mode):
  # Smooth content, as in video frames, where decoders' choices (DCT, chroma
  # upsampling) show; TensorFlow's are the integer fast DCT and fancy
  # upsampling. Subsampling 0, 1, 2: 4:4:4, 4:2:2, 4:2:0.
  rows = np.linspace(0, 255, height)[:, None, None]
  cols = np.linspace(0, 255, width)[None, :, None]
  frame = ((rows + cols * np.array([1, -1, 0.5])) % 256).astype(np.uint8)
  buffer = io.BytesIO()
  Image.fromarray(frame).convert(mode).save(
      buffer, 'JPEG', quality=quality, subsampling=subsampling
  )

  decoded = video.decode_jpeg_frames([buffer.getvalue()])

  expected = tf.io.decode_jpeg(buffer.getvalue(), channels=3).numpy()
  assert decoded.shape == (1, height, width, 3)
  np.testing.assert_array_equal(decoded[0], expected)


def test_frames_too_large_to_decode_are_refused_before_decoding(monkeypatch):
  jpegs = _encode_jpegs(_random_frames(4, 30, 40))
  monkeypatch.setattr('mmv_core.video.frames.MAX_DECODED_BYTES', 3 * 30 * 40 * 3)

  assert video.decode_jpeg_frames(jpegs, [0, 1, 2]).shape == (3, 30, 40, 3)
  with pytest.raises(ValueError, match=r'4 frames of 40x30 would take .* GiB decoded, more than'):
    video.decode_jpeg_frames(jpegs)
  with pytest.raises(ValueError, match='more than'):
    video.clips_from_jpegs(
        jpegs,
        num_train_clips=0,
        num_test_windows=2,
        num_frames=2,
        stride=1,
        min_resize=30,
        crop_size=30,
        seed=0,
    )


def test_decode_skips_frames_not_asked_for():
  jpegs = _encode_jpegs(_random_frames(3, 8, 8))
  jpegs[1] = b'not a jpeg'

  assert video.decode_jpeg_frames(jpegs, [0, 2]).shape == (2, 8, 8, 3)


def test_decode_error_names_the_corrupt_frame():
  jpegs = _encode_jpegs(_random_frames(4, 8, 8))
  jpegs[2] = jpegs[2][:20]

  with pytest.raises(ValueError, match='Frame 2 '):
    video.decode_jpeg_frames(jpegs)


def test_decode_rejects_bad_indices_and_mixed_sizes():
  jpegs = _encode_jpegs(_random_frames(2, 8, 8)) + _encode_jpegs(_random_frames(1, 8, 6))
  with pytest.raises(ValueError, match='index 3'):
    video.decode_jpeg_frames(jpegs, [0, 3])
  with pytest.raises(ValueError, match='Frame 2 has shape'):
    video.decode_jpeg_frames(jpegs)
  with pytest.raises(ValueError, match='No frames'):
    video.decode_jpeg_frames([])


# Resizing.


@pytest.mark.parametrize(
    'height,width,min_resize,expected',
    [
        (240, 320, 224, (224, 298)),  # 320*224//240 = 298.67 -> 298.
        (320, 240, 224, (298, 224)),
        (240, 240, 224, (224, 224)),
        (30, 40, 16, (16, 21)),
        (100, 1000, 224, (224, 2240)),  # The formula only grows the long side.
        (240, 320, 240, (240, 320)),
    ],
)
def test_resized_size_follows_integer_formula(height, width, min_resize, expected):
  assert video.resized_size(height, width, min_resize) == expected


@pytest.mark.parametrize(
    'height,width,min_resize',
    [(30, 40, 16), (40, 30, 16), (30, 40, 45), (17, 23, 9), (9, 9, 20), (240, 320, 224)],
)
def test_resize_is_tf_bilinear_half_pixel_truncated(height, width, min_resize):
  frames = _random_frames(3, height, width, seed=height * width)
  out_h, out_w = video.resized_size(height, width, min_resize)

  resized = video.resize_frames(frames, min_resize)

  reference = _bilinear_half_pixel(frames, out_h, out_w)
  tf_default = tf.image.resize(frames, (out_h, out_w)).numpy()
  assert resized.dtype == np.uint8 and resized.shape == (3, out_h, out_w, 3)
  np.testing.assert_array_equal(resized, reference.astype(np.uint8))
  np.testing.assert_array_equal(resized, np.trunc(tf_default).astype(np.uint8))


def test_resize_equals_tf_for_every_width_and_target():
  # Each input size gives its own float32 source coordinates and weights:
  # sweep them on one row (the rows use the same arithmetic).
  rng = np.random.default_rng(1)
  for width in range(1, 400, 3):
    frames = rng.integers(0, 256, (1, 2, width, 3), dtype=np.uint8)
    for out_w in (1, 7, 112, 149, 224, 298, 299, 341):
      expected = tf.cast(tf.image.resize(frames, (2, out_w)), tf.uint8).numpy()
      np.testing.assert_array_equal(
          resize_to(frames, (2, out_w)), expected, err_msg=f'{width} -> {out_w}'
      )


def test_resize_truncates_rather_than_rounds():
  # Two columns 0 and 255 resized to 3 columns: the middle one is 127.5,
  # which rounds to 128 but truncates to 127.
  frames = np.zeros((1, 4, 2, 3), np.uint8)
  frames[:, :, 1] = 255
  resized = video.resize_frames(frames, min_resize=3)

  assert resized.shape == (1, 6, 3, 3)
  np.testing.assert_array_equal(resized[0, :, 1], 127)
  np.testing.assert_array_equal(resized[0, :, 0], 0)
  np.testing.assert_array_equal(resized[0, :, 2], 255)


def test_resize_leaves_frames_of_the_target_size_untouched():
  frames = _random_frames(2, 16, 21)
  assert video.resize_frames(frames, 16) is frames


def test_resize_rejects_non_uint8_rgb():
  with pytest.raises(ValueError, match='uint8'):
    video.resize_frames(np.zeros((1, 4, 4, 3), np.float32), 2)
  with pytest.raises(ValueError, match='shape'):
    video.resize_frames(np.zeros((4, 4, 3), np.uint8), 2)


# Cropping, flipping, scaling.


@pytest.mark.parametrize(
    'height,width,crop',
    [(16, 21, 16), (17, 23, 10), (16, 16, 16), (7, 9, 12), (5, 20, 10), (20, 5, 11)],
)
def test_central_crop_matches_tf_crop_or_pad(height, width, crop):
  frames = _random_frames(2, height, width)

  cropped = video.central_crop(frames, crop)

  expected = tf.image.resize_with_crop_or_pad(frames, crop, crop).numpy()
  assert cropped.dtype == np.uint8 and cropped.shape == (2, crop, crop, 3)
  np.testing.assert_array_equal(cropped, expected)
  np.testing.assert_array_equal(cropped, _crop_or_pad_reference(frames, crop))


def test_random_crop_is_uniform_and_the_same_for_all_frames():
  # Pixel value encodes position, so the crop's corner reveals its offset.
  rows, cols = np.meshgrid(np.arange(6), np.arange(8), indexing='ij')
  frame = (rows * 10 + cols).astype(np.uint8)[..., None]
  frames = np.stack([frame, frame + 100])
  rng = np.random.default_rng(3)

  corners = set()
  for _ in range(500):
    crop = video.random_crop(frames, 4, rng)
    assert crop.shape == (2, 4, 4, 1)
    np.testing.assert_array_equal(crop[1], crop[0] + 100)
    top, left = divmod(int(crop[0, 0, 0, 0]), 10)
    np.testing.assert_array_equal(crop[0], frame[top : top + 4, left : left + 4])
    corners.add((top, left))
  assert corners == {(t, l) for t in range(3) for l in range(5)}


def test_random_crop_rejects_frames_smaller_than_the_crop():
  with pytest.raises(ValueError, match='Cannot crop 10x10'):
    video.random_crop(np.zeros((1, 8, 12, 3), np.uint8), 10, np.random.default_rng(0))


def test_random_flip_flips_all_frames_together_about_half_the_time():
  frames = _random_frames(3, 4, 5)
  rng = np.random.default_rng(4)
  num_flipped = 0
  for _ in range(1000):
    out = video.random_flip_left_right(frames, rng)
    if np.array_equal(out, frames[:, :, ::-1]):
      num_flipped += 1
    else:
      np.testing.assert_array_equal(out, frames)
  assert 430 < num_flipped < 570


def test_to_float_divides_by_255_in_float32():
  frames = np.array([0, 1, 128, 255], np.uint8).reshape(1, 1, 4, 1)
  scaled = video.to_float(frames)
  assert scaled.dtype == np.float32
  np.testing.assert_array_equal(scaled, (tf.cast(frames, tf.float32) / 255.0).numpy())
  assert scaled.max() == 1.0


# Clips.


def _reference_test_clips(frames, num_windows, num_frames, stride, min_resize, crop):
  """Protocol order on every window separately: sample, resize, crop, scale."""
  max_offset = max(0, len(frames) - num_frames * stride)
  offsets = tf.cast(tf.linspace(0.0, float(max_offset), num_windows), tf.int32).numpy()
  clips = []
  for offset in offsets:
    clip = frames[(offset + np.arange(num_frames) * stride) % len(frames)]
    out_h, out_w = video.resized_size(*clip.shape[1:3], min_resize)
    clip = tf.cast(tf.image.resize(clip, (out_h, out_w)), tf.uint8)
    clip = tf.image.resize_with_crop_or_pad(clip, crop, crop)
    clips.append(tf.cast(clip, tf.float32).numpy() / np.float32(255))
  return np.stack(clips)


def test_test_clips_follow_the_protocol_end_to_end():
  frames = _random_frames(50, 30, 40)
  kwargs = dict(num_windows=4, num_frames=8, stride=3, min_resize=16, crop_size=14)

  clips = video.test_clips(frames, **kwargs)
  clips_from_jpegs = video.test_clips_from_jpegs(_encode_jpegs(frames), **kwargs)

  assert clips.dtype == np.float32 and clips.shape == (4, 8, 14, 14, 3)
  np.testing.assert_array_equal(clips, _reference_test_clips(frames, 4, 8, 3, 16, 14))
  decoded = video.decode_jpeg_frames(_encode_jpegs(frames))
  np.testing.assert_array_equal(clips_from_jpegs, video.test_clips(decoded, **kwargs))


def test_test_clips_of_a_short_video_loop():
  frames = _random_frames(5, 30, 40)
  clips = video.test_clips(
      frames, num_windows=2, num_frames=8, stride=2, min_resize=16, crop_size=16
  )
  # Frames 0, 2, 4, 1, 3, 0, ...: position 5 shows frame 0 again.
  np.testing.assert_array_equal(clips[:, 5], clips[:, 0])
  np.testing.assert_array_equal(clips[0], clips[1])


def test_test_clips_from_jpegs_decode_only_the_needed_frames():
  frames = _random_frames(30, 30, 40)
  jpegs = _encode_jpegs(frames)
  # stride 2 from offset 0 with 1 window: odd frames are never used.
  for odd in range(1, 30, 2):
    jpegs[odd] = b'corrupt'
  clips = video.test_clips_from_jpegs(
      jpegs, num_windows=1, num_frames=8, stride=2, min_resize=16, crop_size=16
  )
  assert clips.shape == (1, 8, 16, 16, 3)


_TRAIN_KWARGS = dict(num_clips=3, num_frames=6, stride=2, min_resize=16, crop_size=14)


def test_train_clips_are_reproducible_from_the_seed():
  frames = _random_frames(40, 30, 40)

  clips = video.train_clips(frames, **_TRAIN_KWARGS, seed=11)

  assert clips.dtype == np.float32 and clips.shape == (3, 6, 14, 14, 3)
  np.testing.assert_array_equal(clips, video.train_clips(frames, **_TRAIN_KWARGS, seed=11))
  assert not np.array_equal(clips, video.train_clips(frames, **_TRAIN_KWARGS, seed=12))
  assert not np.array_equal(clips[0], clips[1])


def test_train_clips_from_jpegs_equal_train_clips_of_decoded_frames():
  jpegs = _encode_jpegs(_random_frames(40, 30, 40))
  decoded = video.decode_jpeg_frames(jpegs)

  np.testing.assert_array_equal(
      video.train_clips_from_jpegs(jpegs, **_TRAIN_KWARGS, seed=5),
      video.train_clips(decoded, **_TRAIN_KWARGS, seed=5),
  )


def test_train_clips_are_strided_clips_flipped_about_half_the_time():
  # Frame f is f * 10 + column, the same in every row: a clip's rows reveal
  # which frames it holds, where it was cropped and whether it was flipped.
  # At 16x21 with min_resize 16 there is no resize.
  num_video_frames, height, width, crop, stride = 20, 16, 21, 16, 3
  columns = np.arange(width)
  frames = np.stack(
      [
          np.broadcast_to((f * 10 + columns)[None, :, None], (height, width, 3))
          for f in range(num_video_frames)
      ]
  ).astype(np.uint8)
  num_flipped = 0
  for seed in range(50):
    clips = video.train_clips(
        frames, num_clips=4, num_frames=5, stride=stride, min_resize=16, crop_size=crop, seed=seed
    )
    for clip in np.rint(clips * 255).astype(np.int64):
      rows = clip[:, 0, :, 0]  # [T, crop]
      frame_ids = rows.min(axis=1) // 10
      np.testing.assert_array_equal(
          frame_ids, (frame_ids[0] + stride * np.arange(5)) % num_video_frames
      )
      within_frame = rows - frame_ids[:, None] * 10
      np.testing.assert_array_equal(within_frame, np.broadcast_to(within_frame[0], rows.shape))
      np.testing.assert_array_equal(clip, np.broadcast_to(clip[:, :1, :, :1], clip.shape))
      steps = np.diff(within_frame[0])
      assert np.all(steps == 1) or np.all(steps == -1)
      num_flipped += steps[0] < 0
  assert 70 < num_flipped < 130, num_flipped


def test_exact_train_clips_flip_before_resizing():
  # Bilinear resizing and flipping do not commute bit-exactly, so the protocol's
  # order is observable. A one-frame square video makes every clip the resized,
  # possibly flipped frame (the crop then takes all of it).
  frame = _random_frames(1, 20, 20, seed=8)
  resized = video.resize_frames(frame, 12)
  flipped_then_resized = video.resize_frames(frame[:, :, ::-1], 12)
  assert not np.array_equal(flipped_then_resized, resized[:, :, ::-1])
  seen_flipped = seen_unflipped = False
  for seed in range(20):
    clips = video.train_clips(
        frame,
        num_clips=1,
        num_frames=2,
        stride=1,
        min_resize=12,
        crop_size=12,
        seed=seed,
        exact_train_clips=True,
    )
    pixels = np.rint(clips[0, 0] * 255).astype(np.uint8)
    if np.array_equal(pixels, flipped_then_resized[0]):
      seen_flipped = True
    else:
      np.testing.assert_array_equal(pixels, resized[0])
      seen_unflipped = True
  assert seen_flipped and seen_unflipped


def _reference_train_clips(
    frames, num_clips, num_frames, stride, min_resize, crop, seed, flip_after_resize=False
):
  """Protocol order on every clip separately, with the draws of the seed.

  All clip offsets are drawn first, then per clip the flip and the crop
  offset: the order of draws of the clip builders. Returns (uint8 clips,
  [(flipped, top, left)] per clip). `flip_after_resize` mirrors the resized
  clip instead of resizing the mirrored one.
  """
  rng = np.random.default_rng(seed)
  span = (num_frames - 1) * stride
  num_offsets = len(frames) - span if len(frames) > span else len(frames)
  starts = [rng.integers(0, num_offsets) for _ in range(num_clips)]
  clips, draws = [], []
  for start in starts:
    clip = frames[(start + np.arange(num_frames) * stride) % len(frames)]
    flipped = rng.random() < 0.5
    size = video.resized_size(*clip.shape[1:3], min_resize)
    if flipped and not flip_after_resize:
      clip = clip[:, :, ::-1]
    clip = tf.cast(tf.image.resize(clip, size), tf.uint8).numpy()
    if flipped and flip_after_resize:
      clip = clip[:, :, ::-1]
    top = rng.integers(0, size[0] - crop + 1)
    left = rng.integers(0, size[1] - crop + 1)
    clips.append(clip[:, top : top + crop, left : left + crop])
    draws.append((flipped, top, left))
  return np.stack(clips), draws


def _synthetic_video_jpegs(num_frames: int) -> list[bytes]:
  """A small video of the project's generator through the protocol's ffmpeg re-encoding."""
  frames = synthetic.render_frames(
      0, 3, np.random.default_rng(0), width=64, height=48, num_frames=num_frames, fps=25.0
  )
  return encode.encode_jpeg_frames(synthetic.encode_avi(frames, 25.0), name='v.avi')


_CLIPS_KWARGS = dict(
    num_train_clips=8, num_test_windows=5, num_frames=8, stride=2, min_resize=36, crop_size=32
)


def test_clips_from_jpegs_equal_the_protocol_on_a_reencoded_video():
  jpegs = _synthetic_video_jpegs(40)
  decoded = video.decode_jpeg_frames(jpegs)
  args = [_CLIPS_KWARGS[k] for k in ('num_frames', 'stride', 'min_resize', 'crop_size')]
  reference_test = _reference_test_clips(decoded, _CLIPS_KWARGS['num_test_windows'], *args)
  reference_train, draws = _reference_train_clips(
      decoded, _CLIPS_KWARGS['num_train_clips'], *args, seed=4
  )
  assert {flipped for flipped, _, _ in draws} == {False, True}

  _, fast_test = video.clips_from_jpegs(jpegs, **_CLIPS_KWARGS, seed=4)
  exact_train, exact_test = video.clips_from_jpegs(
      jpegs, **_CLIPS_KWARGS, seed=4, exact_train_clips=True
  )

  for test in (fast_test, exact_test):
    assert test.dtype == np.uint8 and test.shape == (5, 8, 32, 32, 3)
    np.testing.assert_array_equal(video.to_float(test), reference_test)
  assert exact_train.dtype == np.uint8 and exact_train.shape == (8, 8, 32, 32, 3)
  np.testing.assert_array_equal(exact_train, reference_train)


def test_exact_train_clips_equal_the_protocol_from_arrays_and_jpegs():
  frames = _random_frames(40, 30, 40, seed=2)
  jpegs = _encode_jpegs(frames)
  decoded = video.decode_jpeg_frames(jpegs)
  reference, draws = _reference_train_clips(decoded, 6, 6, 2, 16, 14, seed=9)
  assert {flipped for flipped, _, _ in draws} == {False, True}

  from_jpegs = video.train_clips_from_jpegs(
      jpegs,
      num_clips=6,
      num_frames=6,
      stride=2,
      min_resize=16,
      crop_size=14,
      seed=9,
      exact_train_clips=True,
  )
  from_arrays = video.train_clips(
      decoded,
      num_clips=6,
      num_frames=6,
      stride=2,
      min_resize=16,
      crop_size=14,
      seed=9,
      exact_train_clips=True,
  )

  np.testing.assert_array_equal(from_jpegs, video.to_float(reference))
  np.testing.assert_array_equal(from_arrays, video.to_float(reference))


@pytest.mark.parametrize(
    'height,width,min_resize,crop',
    [(30, 40, 16, 14), (17, 23, 9, 9), (48, 64, 56, 50), (240, 320, 224, 224)],
)
def test_fast_train_clips_mirror_resized_frames_with_the_same_draws(
    height, width, min_resize, crop
):
  # Random pixels make the resize's rounding show as often as it can.
  frames = _random_frames(12, height, width, seed=height)
  kwargs = dict(num_frames=4, stride=2, min_resize=min_resize, crop_size=crop)
  exact, draws = _reference_train_clips(frames, 6, *kwargs.values(), seed=3)
  mirrored_after, _ = _reference_train_clips(
      frames, 6, *kwargs.values(), seed=3, flip_after_resize=True
  )
  flipped = np.array([flip for flip, _, _ in draws])
  assert flipped.any() and not flipped.all()

  fast = video.train_clips(frames, num_clips=6, **kwargs, seed=3)
  fast = np.rint(fast * 255).astype(np.uint8)

  # The same frames, flips and crop offsets: unflipped clips are the exact
  # ones, flipped clips the resized clip mirrored at the mirrored offset.
  np.testing.assert_array_equal(fast, mirrored_after)
  np.testing.assert_array_equal(fast[~flipped], exact[~flipped])
  # Flipping after the resize moves a pixel by at most 1 grey level (measured:
  # 0.03% to 0.5% of the flipped clips' pixels differ, never by more).
  difference = np.abs(fast[flipped].astype(np.int16) - exact[flipped])
  assert difference.max() <= 1
  assert (difference > 0).mean() < 0.01
