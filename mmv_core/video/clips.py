"""Video preprocessing of the MMV evaluation protocol: JPEG frames to clips.

This stage turns a video stored as JPEG frames into the clips the networks
embed, following the published protocol (docs/protocol.md):

  sampling (test: W evenly spaced windows; train: one random clip, then a
  left-right flip with probability 1/2) -> resize so the smaller side is
  `min_resize` (bilinear, half-pixel centres, truncated back to uint8) ->
  crop (test: central; train: random) -> float32 / 255.

Pixel values equal the original pipeline's, which decoded and resized with
TensorFlow: JPEGs are decoded by libjpeg-turbo (through `simplejpeg`) with the
settings of `tf.io.decode_jpeg` (integer fast DCT, fancy upsampling), and the
resize repeats the float32 arithmetic of TensorFlow's bilinear kernel,
operation for operation, in a kernel that numba compiles, so both are
bit-identical to TensorFlow's without importing it (seconds of start-up per
process). A video's clips are cut from its
frames decoded and resized once; training clips are by default flipped after
the resize rather than before it (see `train_clips`), and `clips_from_jpegs`
leaves the scaling to float32 to the accelerator. All functions are pure:
numpy arrays in, numpy arrays out; randomness comes from an explicit
`numpy.random.Generator`.
"""

import hashlib
from typing import Callable, Sequence

import numba
import numpy as np

from mmv_core.video.frames import RGB_CHANNELS, check_frames, check_positive, decode_jpeg_frames
from mmv_core.video.frames import central_crop, draw_crop_offset, draw_flip, resize_frames
from mmv_core.video.frames import resize_to, to_float

DEFAULT_NUM_FRAMES = 32
DEFAULT_STRIDE = 2
DEFAULT_NUM_TEST_WINDOWS = 10
# One random training clip per video per epoch; the original trained 10 epochs.
DEFAULT_NUM_TRAIN_CLIPS = 10
DEFAULT_MIN_RESIZE = 224
DEFAULT_CROP_SIZE = 224


# Sampling.


def test_window_indices(
    num_video_frames: int,
    num_frames: int = DEFAULT_NUM_FRAMES,
    stride: int = DEFAULT_STRIDE,
    num_windows: int = DEFAULT_NUM_TEST_WINDOWS,
) -> np.ndarray:
  """Frame indices of the evenly spaced test windows of a video.

  Window offsets are `int32(linspace(0, float32(max(0, L - T*s)), W))`,
  computed in float32 and truncated exactly as `tf.linspace` followed by
  `tf.cast(..., tf.int32)`; window w takes frames `(offset_w + k*s) mod L`.

  Args:
    num_video_frames: L, the number of frames of the video.
    num_frames: T, frames per window.
    stride: s, step between sampled frames.
    num_windows: W, number of windows.

  Returns:
    int64 [W, T] frame indices in [0, L).
  """
  check_positive(
      num_video_frames=num_video_frames,
      num_frames=num_frames,
      stride=stride,
      num_windows=num_windows,
  )
  max_offset = np.float32(max(0, num_video_frames - num_frames * stride))
  # tf.linspace: start, then start + delta * i in float32, then stop itself.
  delta = max_offset / np.float32(max(num_windows - 1, 1))
  offsets = delta * np.arange(num_windows, dtype=np.float32)
  if num_windows > 1:
    offsets[-1] = max_offset
  offsets = offsets.astype(np.int64)  # Truncation, as tf.cast does.
  steps = np.arange(num_frames, dtype=np.int64) * stride
  return (offsets[:, None] + steps[None, :]) % num_video_frames


def train_clip_indices(
    num_video_frames: int, num_frames: int, stride: int, rng: np.random.Generator
) -> np.ndarray:
  """Frame indices of one random training clip.

  The offset is uniform in [0, M), M = L - (T-1)*s when L > (T-1)*s, else
  M = L; frame k is `(offset + k*s) mod L`, so short videos loop.

  Args:
    num_video_frames: L, the number of frames of the video.
    num_frames: T, frames per clip.
    stride: s, step between sampled frames.
    rng: source of the random offset.

  Returns:
    int64 [T] frame indices in [0, L).
  """
  check_positive(num_video_frames=num_video_frames, num_frames=num_frames, stride=stride)
  span = (num_frames - 1) * stride
  num_offsets = num_video_frames - span if num_video_frames > span else num_video_frames
  offset = rng.integers(0, num_offsets)
  return (offset + np.arange(num_frames, dtype=np.int64) * stride) % num_video_frames


def video_seed(video_id: str, base_seed: int) -> int:
  """A per-video seed, stable across processes and Python runs.

  Args:
    video_id: identifier of the video, e.g. its relative path.
    base_seed: global seed of the run (e.g. differs per epoch or experiment).

  Returns:
    A non-negative int below 2**63, suitable for `numpy.random.default_rng`.
  """
  digest = hashlib.sha256(f'{base_seed}:{video_id}'.encode('utf-8')).digest()
  return int.from_bytes(digest[:8], 'big') >> 1


# Clips.

# Maps sorted, unique frame indices to their frames; lets the same clip logic
# read decoded arrays or decode JPEGs.
_FrameGatherer = Callable[[np.ndarray], np.ndarray]


def _train_indices(
    num_video_frames: int, num_clips: int, num_frames: int, stride: int, rng: np.random.Generator
) -> np.ndarray:
  """int64 [num_clips, T] frame indices, one `train_clip_indices` draw per clip."""
  return np.stack(
      [train_clip_indices(num_video_frames, num_frames, stride, rng) for _ in range(num_clips)]
  )


def _cut_clips(
    sources: Sequence[np.ndarray],
    rows: np.ndarray,
    offsets: Sequence[tuple[int, int]],
    crop_size: int,
) -> np.ndarray:
  """Assembles clips from square crops of prepared frames.

  Args:
    sources: per clip, uint8 [F, H, W, 3] frames to crop from (shared arrays).
    rows: int [N, T], per clip the rows of its source that make its frames.
    offsets: per clip, (top, left) of its crop.
    crop_size: side of the crops.

  Returns:
    uint8 [N, T, crop_size, crop_size, 3], a new array (the crops are views
    of `sources` until here).
  """
  clips = np.empty((*rows.shape, crop_size, crop_size, RGB_CHANNELS), np.uint8)
  for clip, source, clip_rows, (top, left) in zip(clips, sources, rows, offsets):
    crops = source[:, top : top + crop_size, left : left + crop_size]
    # Frame by frame: indexing the whole clip would copy it twice.
    for frame, row in zip(clip, clip_rows):
      frame[...] = crops[row]
  return clips


def _test_clips_of(resized: np.ndarray, rows: np.ndarray, crop_size: int) -> np.ndarray:
  """uint8 [W, T, crop, crop, 3] central crops of `resized` [F, H, W, 3] at `rows` [W, T]."""
  height, width = resized.shape[1:3]
  if height < crop_size or width < crop_size:
    # Zero padding (min_resize < crop_size) needs padded frames to slice.
    resized = central_crop(resized, crop_size)
    height, width = crop_size, crop_size
  offset = ((height - crop_size) // 2, (width - crop_size) // 2)
  return _cut_clips([resized] * len(rows), rows, [offset] * len(rows), crop_size)


def _mirrored_frames(
    frames: np.ndarray, resized: np.ndarray, rows: np.ndarray, exact: bool
) -> np.ndarray:
  """uint8 [R, H, W, 3]: the frames at `rows` [R] flipped left-right and resized.

  Exact: `frames` (F decoded frames) flipped, then resized, as the protocol.
  Otherwise `resized` [F, H, W, 3] (the same frames resized) is mirrored,
  which differs from it by the resize's rounding only: bilinear resizing is
  not bit-exactly flip-equivariant.
  """
  if exact:
    return resize_to(frames[rows], resized.shape[1:3], mirrored=True)
  return _flip_left_right(resized[rows])


@numba.njit(cache=True, nogil=True, boundscheck=False)
def _flip_left_right(frames):
  """uint8 [N, H, W, C] `frames` mirrored left-right, a new array.

  Compiled: numpy copies a reversed axis of 3-byte pixels element by
  element, several times slower.
  """
  num, height, width, channels = frames.shape
  mirrored = np.empty_like(frames)
  for n in range(num):
    for y in range(height):
      for x in range(width):
        for c in range(channels):
          mirrored[n, y, x, c] = frames[n, y, width - 1 - x, c]
  return mirrored


def _train_clips_of(
    frames: np.ndarray,
    resized: np.ndarray,
    rows: np.ndarray,
    crop_size: int,
    rng: np.random.Generator,
    exact: bool,
) -> np.ndarray:
  """Training clips: per clip a flip, then a random crop, drawn from `rng`.

  Frames are prepared once per orientation and the clips cut from them, with
  the same draws from `rng` as flipping, resizing and cropping each clip in
  turn.

  Args:
    frames: uint8 [F, H, W, 3], the decoded frames the clips use.
    resized: uint8 [F, H', W', 3], `frames` resized.
    rows: int [N, T], per clip the rows of `frames` it takes.
    crop_size: side of the random crop.
    rng: source of the flips and crop offsets.
    exact: flip before resizing, bit-exactly as the protocol (see
      `_mirrored_frames`).

  Returns:
    uint8 [N, T, crop_size, crop_size, 3].
  """
  height, width = resized.shape[1:3]
  # A clip's flip is drawn before its crop offset, as the protocol's order
  # of operations draws them.
  draws = [(draw_flip(rng), draw_crop_offset(height, width, crop_size, rng)) for _ in rows]
  flipped = np.array([flip for flip, _ in draws])
  offsets = [offset for _, offset in draws]
  sources = [resized] * len(rows)
  source_rows = rows.copy()
  if flipped.any():
    mirrored_rows, rows_in_mirrored = np.unique(rows[flipped], return_inverse=True)
    mirrored = _mirrored_frames(frames, resized, mirrored_rows, exact)
    source_rows[flipped] = rows_in_mirrored.reshape(-1, rows.shape[1])
    sources = [mirrored if flip else source for flip, source in zip(flipped, sources)]
  return _cut_clips(sources, source_rows, offsets, crop_size)


def _clips(
    gather: _FrameGatherer,
    num_video_frames: int,
    *,
    num_train_clips: int,
    num_test_windows: int,
    num_frames: int,
    stride: int,
    min_resize: int,
    crop_size: int,
    seed: int,
    exact_train_clips: bool,
) -> tuple[np.ndarray, np.ndarray]:
  """(uint8 [N, T, crop, crop, 3] training clips, uint8 [W, T, crop, crop, 3] test clips).

  Every frame either kind needs is fetched and resized once. The training
  clips' start frames are all drawn first, then each clip's flip and crop
  offset (`_train_clips_of`).
  """
  rng = np.random.default_rng(seed)
  no_clips = np.zeros((0, num_frames), np.int64)
  train_indices = (
      _train_indices(num_video_frames, num_train_clips, num_frames, stride, rng)
      if num_train_clips
      else no_clips
  )
  test_indices = (
      test_window_indices(num_video_frames, num_frames, stride, num_test_windows)
      if num_test_windows
      else no_clips
  )
  needed, rows = np.unique(np.concatenate([train_indices, test_indices]), return_inverse=True)
  rows = rows.reshape(-1, num_frames)
  empty = np.zeros((0, num_frames, crop_size, crop_size, RGB_CHANNELS), np.uint8)
  if not len(needed):
    return empty, empty
  frames = gather(needed)
  resized = resize_frames(frames, min_resize)
  train_rows, test_rows = rows[:num_train_clips], rows[num_train_clips:]
  train = (
      _train_clips_of(frames, resized, train_rows, crop_size, rng, exact_train_clips)
      if num_train_clips
      else empty
  )
  test = _test_clips_of(resized, test_rows, crop_size) if num_test_windows else empty
  return train, test


def _jpeg_gatherer(jpegs: Sequence[bytes]) -> _FrameGatherer:
  return lambda needed: decode_jpeg_frames(jpegs, needed)


def _array_gatherer(frames: np.ndarray) -> _FrameGatherer:
  check_frames(frames)
  return lambda needed: frames[needed]


def _scaled_clips(
    gather: _FrameGatherer,
    num_video_frames: int,
    *,
    num_train_clips: int = 0,
    num_test_windows: int = 0,
    seed: int = 0,
    exact_train_clips: bool = False,
    **sampling,
) -> np.ndarray:
  """float32 [N, T, crop, crop, 3] in [0, 1]: one kind of clip, the other's count 0."""
  train, test = _clips(
      gather,
      num_video_frames,
      num_train_clips=num_train_clips,
      num_test_windows=num_test_windows,
      seed=seed,
      exact_train_clips=exact_train_clips,
      **sampling,
  )
  return to_float(train if num_train_clips else test)


def test_clips(
    frames: np.ndarray,
    *,
    num_windows: int = DEFAULT_NUM_TEST_WINDOWS,
    num_frames: int = DEFAULT_NUM_FRAMES,
    stride: int = DEFAULT_STRIDE,
    min_resize: int = DEFAULT_MIN_RESIZE,
    crop_size: int = DEFAULT_CROP_SIZE,
) -> np.ndarray:
  """The evaluation clips of a video: W windows, resized, centrally cropped.

  Args:
    frames: uint8 [L, H, W, 3], all frames of the video.
    num_windows: W.
    num_frames: T, frames per window.
    stride: s, step between sampled frames.
    min_resize: target size of the smaller side.
    crop_size: side of the central crop.

  Returns:
    float32 [W, T, crop_size, crop_size, 3] in [0, 1].
  """
  check_positive(num_windows=num_windows)
  return _scaled_clips(
      _array_gatherer(frames),
      len(frames),
      num_test_windows=num_windows,
      num_frames=num_frames,
      stride=stride,
      min_resize=min_resize,
      crop_size=crop_size,
  )


def test_clips_from_jpegs(
    jpegs: Sequence[bytes],
    *,
    num_windows: int = DEFAULT_NUM_TEST_WINDOWS,
    num_frames: int = DEFAULT_NUM_FRAMES,
    stride: int = DEFAULT_STRIDE,
    min_resize: int = DEFAULT_MIN_RESIZE,
    crop_size: int = DEFAULT_CROP_SIZE,
) -> np.ndarray:
  """`test_clips` of JPEG frames, decoding only the frames the windows use.

  Args:
    jpegs: the L encoded frames of the video, in order.
    (others): as in `test_clips`.

  Returns:
    float32 [W, T, crop_size, crop_size, 3] in [0, 1].
  """
  check_positive(num_windows=num_windows)
  return _scaled_clips(
      _jpeg_gatherer(jpegs),
      len(jpegs),
      num_test_windows=num_windows,
      num_frames=num_frames,
      stride=stride,
      min_resize=min_resize,
      crop_size=crop_size,
  )


def train_clips(
    frames: np.ndarray,
    *,
    num_clips: int,
    num_frames: int,
    stride: int,
    min_resize: int,
    crop_size: int,
    seed: int,
    exact_train_clips: bool = False,
) -> np.ndarray:
  """Random training clips of a video, reproducible from `seed`.

  Each clip: random offset, flip with probability 1/2, resize, random crop.
  By default the flip is applied after resizing (to frames resized once for
  all clips), with the crop drawn in the mirrored frame, which gives the
  same clips up to the resize's rounding; `exact_train_clips` flips first,
  as the protocol, at the cost of resizing flipped frames too.

  Args:
    frames: uint8 [L, H, W, 3], all frames of the video.
    num_clips: N, independent clips to draw (one per training epoch).
    num_frames: T, frames per clip.
    stride: s, step between sampled frames.
    min_resize: target size of the smaller side.
    crop_size: side of the random crop.
    seed: seed of `numpy.random.default_rng`, e.g. from `video_seed`.
    exact_train_clips: flip before resizing, bit-exactly as the protocol.

  Returns:
    float32 [N, T, crop_size, crop_size, 3] in [0, 1].
  """
  check_positive(num_clips=num_clips)
  return _scaled_clips(
      _array_gatherer(frames),
      len(frames),
      num_train_clips=num_clips,
      num_frames=num_frames,
      stride=stride,
      min_resize=min_resize,
      crop_size=crop_size,
      seed=seed,
      exact_train_clips=exact_train_clips,
  )


def train_clips_from_jpegs(
    jpegs: Sequence[bytes],
    *,
    num_clips: int,
    num_frames: int,
    stride: int,
    min_resize: int,
    crop_size: int,
    seed: int,
    exact_train_clips: bool = False,
) -> np.ndarray:
  """`train_clips` of JPEG frames, decoding only the frames the clips use.

  Gives the same clips as `train_clips` of the decoded frames for a seed.

  Args:
    jpegs: the L encoded frames of the video, in order.
    (others): as in `train_clips`.

  Returns:
    float32 [N, T, crop_size, crop_size, 3] in [0, 1].
  """
  check_positive(num_clips=num_clips)
  return _scaled_clips(
      _jpeg_gatherer(jpegs),
      len(jpegs),
      num_train_clips=num_clips,
      num_frames=num_frames,
      stride=stride,
      min_resize=min_resize,
      crop_size=crop_size,
      seed=seed,
      exact_train_clips=exact_train_clips,
  )


def clips_from_jpegs(
    jpegs: Sequence[bytes],
    *,
    num_train_clips: int,
    num_test_windows: int,
    num_frames: int,
    stride: int,
    min_resize: int,
    crop_size: int,
    seed: int,
    exact_train_clips: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
  """Both kinds of clip of one video, each needed frame decoded and resized once.

  The clips equal `train_clips_from_jpegs` and `test_clips_from_jpegs`
  before their scaling to [0, 1], which is left to the accelerator so that
  4x fewer bytes travel.

  Args:
    jpegs: the L encoded frames of the video, in order.
    num_train_clips: N; 0 gives an empty array.
    num_test_windows: W; 0 gives an empty array.
    (others): as in `train_clips`.

  Returns:
    (uint8 [N, T, crop, crop, 3] training clips,
     uint8 [W, T, crop, crop, 3] test clips).
  """
  return _clips(
      _jpeg_gatherer(jpegs),
      len(jpegs),
      num_train_clips=num_train_clips,
      num_test_windows=num_test_windows,
      num_frames=num_frames,
      stride=stride,
      min_resize=min_resize,
      crop_size=crop_size,
      seed=seed,
      exact_train_clips=exact_train_clips,
  )
