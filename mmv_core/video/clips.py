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
from typing import Callable, Optional, Sequence

import numba
import numpy as np
import simplejpeg

DEFAULT_NUM_FRAMES = 32
DEFAULT_STRIDE = 2
DEFAULT_NUM_TEST_WINDOWS = 10
# One random training clip per video per epoch; the original trained 10 epochs.
DEFAULT_NUM_TRAIN_CLIPS = 10
DEFAULT_MIN_RESIZE = 224
DEFAULT_CROP_SIZE = 224
# The most that one video's decoded frames may take. The protocol's videos
# are small (the clips of a 320x240 UCF101 video need about 40 MB); 2 GiB
# admits 1080p sources (about 1 GB for 20 clips' frames) and refuses 4K and
# beyond, whose frames would otherwise be decoded into many gigabytes.
MAX_DECODED_BYTES = 2 << 30

_RGB_CHANNELS = 3
_MAX_PIXEL_VALUE = np.float32(255.0)


def _check_positive(**values: int) -> None:
  for name, value in values.items():
    if value <= 0:
      raise ValueError(f'{name} must be positive, got {value}.')


def _check_frames(frames: np.ndarray) -> None:
  if frames.ndim != 4 or frames.shape[-1] != _RGB_CHANNELS:
    raise ValueError(f'Expected frames of shape [N, H, W, 3], got {frames.shape}.')
  if frames.dtype != np.uint8:
    raise ValueError(f'Expected uint8 frames, got {frames.dtype}.')


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
  _check_positive(
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
  _check_positive(num_video_frames=num_video_frames, num_frames=num_frames, stride=stride)
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


# Decoding.


def decode_jpeg_frames(
    jpegs: Sequence[bytes], indices: Optional[Sequence[int]] = None
) -> np.ndarray:
  """Decodes JPEG frames to exactly the pixels of `tf.io.decode_jpeg(channels=3)`.

  libjpeg-turbo with TensorFlow's default settings: the integer fast DCT and
  fancy (smooth) chroma upsampling; greyscale frames come out as RGB.

  Args:
    jpegs: the encoded frames of one video, in order.
    indices: which frames to decode, in the order wanted; all when None.

  Returns:
    uint8 [N, H, W, 3] RGB frames, N = len(indices) (or len(jpegs)).

  Raises:
    ValueError: if there is nothing to decode, a JPEG is corrupt or truncated
      (the error names the frame index), an index is out of range, the
      frames differ in size, or all of them would take more than
      `MAX_DECODED_BYTES` (checked from the first frame's header, before
      any frame is decoded).
  """
  if indices is None:
    indices = range(len(jpegs))
  if len(indices) == 0:
    raise ValueError('No frames to decode.')
  _check_decoded_size(jpegs, indices)
  frames = None
  for position, index in enumerate(indices):
    if not 0 <= index < len(jpegs):
      raise ValueError(
          f'Frame index {index} is out of range for a video of ' f'{len(jpegs)} frames.'
      )
    try:
      frame = simplejpeg.decode_jpeg(
          jpegs[index], colorspace='RGB', fastdct=True, fastupsample=False
      )
    except ValueError as error:
      raise ValueError(f'Frame {index} is not a valid JPEG: {error}') from error
    if frames is None:
      frames = np.empty((len(indices), *frame.shape), np.uint8)
    elif frame.shape != frames.shape[1:]:
      raise ValueError(
          f'Frame {index} has shape {frame.shape}, unlike frame '
          f'{indices[0]} with shape {frames.shape[1:]}.'
      )
    frames[position] = frame
  return frames


def _check_decoded_size(jpegs: Sequence[bytes], indices: Sequence[int]) -> None:
  """Raises ValueError if the frames at `indices` would decode to more than MAX_DECODED_BYTES."""
  first = indices[0]
  if not 0 <= first < len(jpegs):
    return  # The decoding loop names the bad index.
  try:
    height, width, _, _ = simplejpeg.decode_jpeg_header(jpegs[first])
  except ValueError:
    return  # The decoding loop names the corrupt frame.
  decoded = len(indices) * height * width * _RGB_CHANNELS
  if decoded > MAX_DECODED_BYTES:
    raise ValueError(
        f'{len(indices)} frames of {width}x{height} would take {decoded / 2**30:.1f} GiB '
        f'decoded, more than the {MAX_DECODED_BYTES / 2**30:.0f} GiB a video may use; '
        're-encode the video at a lower resolution'
    )


# Spatial processing.


def resized_size(height: int, width: int, min_resize: int) -> tuple[int, int]:
  """Output (height, width) that makes the smaller side `min_resize`.

  Integer formula of the protocol: `out_h = max(min_resize, h*min_resize // w)`
  and `out_w = max(min_resize, w*min_resize // h)`.
  """
  _check_positive(height=height, width=width, min_resize=min_resize)
  return (
      max(min_resize, (height * min_resize) // width),
      max(min_resize, (width * min_resize) // height),
  )


def resize_frames(frames: np.ndarray, min_resize: int) -> np.ndarray:
  """Resizes frames so the smaller side is `min_resize`.

  Frames already of the target size are returned as they are. Otherwise the
  resize is `tf.image.resize`'s default bilinear one (half-pixel centres, no
  antialiasing) and the float result is truncated back to uint8 by `tf.cast`.

  Args:
    frames: uint8 [N, H, W, 3].
    min_resize: target size of the smaller side.

  Returns:
    uint8 [N, out_h, out_w, 3], sizes from `resized_size`.
  """
  _check_frames(frames)
  height, width = frames.shape[1:3]
  size = resized_size(height, width, min_resize)
  return frames if size == (height, width) else _resize_to(frames, size)


def _bilinear_taps(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Per output pixel of one axis: (low source index, high source index, float32 weight of high).

  TensorFlow's half-pixel bilinear weights: source coordinate
  `(i + 0.5) * (in / out) - 0.5` in float32, indices clamped to the input.
  """
  scale = np.float32(in_size) / np.float32(out_size)
  source = (np.arange(out_size, dtype=np.float32) + np.float32(0.5)) * scale - np.float32(0.5)
  floor = np.floor(source)
  low = np.maximum(floor, 0).astype(np.intp)
  high = np.minimum(np.ceil(source), in_size - 1).astype(np.intp)
  return low, high, source - floor


def _resize_to(frames: np.ndarray, size: tuple[int, int], mirrored: bool = False) -> np.ndarray:
  """uint8 [N, out_h, out_w, 3]: `frames` resized to `size` (out_h, out_w), mirrored if asked.

  Mirroring only reverses which source columns are read, so flipped frames
  are never materialised.
  """
  num, height, width, channels = frames.shape
  out_h, out_w = size
  row_low, row_high, row_weight = _bilinear_taps(height, out_h)
  col_low, col_high, col_weight = _bilinear_taps(width, out_w)
  if mirrored:
    col_low, col_high = width - 1 - col_low, width - 1 - col_high
  # Columns of the [H, W*3] view of a frame, so one index serves all channels.
  channel = np.arange(channels)
  out = np.empty((num, out_h, out_w * channels), np.uint8)
  _bilinear_kernel(
      np.ascontiguousarray(frames).reshape(num, height, width * channels),
      row_low,
      row_high,
      row_weight,
      (col_low[:, None] * channels + channel).ravel(),
      (col_high[:, None] * channels + channel).ravel(),
      np.repeat(col_weight, channels),
      out,
  )
  return out.reshape(num, out_h, out_w, channels)


@numba.njit(cache=True, nogil=True, boundscheck=False)
def _bilinear_kernel(frames, row_low, row_high, row_weight, left_cols, right_cols, col_weight, out):
  """TensorFlow's bilinear kernel, operation for operation, in float32.

  Each output row interpolates two source rows, each first interpolated
  along x as `left + (right - left) * weight`; the result is truncated to
  uint8. numba compiles this without fast-math, so there is no reordering
  and no fused multiply-add: the bits are TensorFlow's. It releases the GIL,
  so clips are cut while another thread runs the model.

  Args:
    frames: uint8 [N, H, W*C], the frames' rows with their channels interleaved.
    row_low, row_high: int [out_h], the source rows of each output row.
    row_weight: float32 [out_h], the weight of `row_high`.
    left_cols, right_cols: int [out_w*C], the source columns of each output column.
    col_weight: float32 [out_w*C], the weight of `right_cols`.
    out: uint8 [N, out_h, out_w*C], written.
  """
  num, height, _ = frames.shape
  out_columns = out.shape[2]
  across = np.empty((height, out_columns), np.float32)
  for n in range(num):
    source = frames[n]
    for y in range(height):
      row = source[y]
      for j in range(out_columns):
        left = np.float32(row[left_cols[j]])
        across[y, j] = left + (np.float32(row[right_cols[j]]) - left) * col_weight[j]
    for y in range(out.shape[1]):
      top, bottom, weight = across[row_low[y]], across[row_high[y]], row_weight[y]
      for j in range(out_columns):
        out[n, y, j] = np.uint8(top[j] + (bottom[j] - top[j]) * weight)


def central_crop(frames: np.ndarray, crop_size: int) -> np.ndarray:
  """Central `crop_size` square, as `tf.image.resize_with_crop_or_pad`.

  A side longer than the crop is cropped from offset `(size - crop) // 2`; a
  shorter side is zero-padded, placed at offset `(crop - size) // 2`.

  Args:
    frames: [N, H, W, C] of any dtype.
    crop_size: side of the output square.

  Returns:
    [N, crop_size, crop_size, C], the dtype of `frames`.
  """
  _check_positive(crop_size=crop_size)
  if frames.ndim != 4:
    raise ValueError(f'Expected frames of shape [N, H, W, C], got {frames.shape}.')
  num, height, width, channels = frames.shape
  out = np.zeros((num, crop_size, crop_size, channels), frames.dtype)
  crop_y, crop_x = max(0, (height - crop_size) // 2), max(0, (width - crop_size) // 2)
  pad_y, pad_x = max(0, (crop_size - height) // 2), max(0, (crop_size - width) // 2)
  kept_h, kept_w = min(height, crop_size), min(width, crop_size)
  out[:, pad_y : pad_y + kept_h, pad_x : pad_x + kept_w] = frames[
      :, crop_y : crop_y + kept_h, crop_x : crop_x + kept_w
  ]
  return out


def _draw_crop_offset(
    height: int, width: int, crop_size: int, rng: np.random.Generator
) -> tuple[int, int]:
  """(top, left) of a random `crop_size` square, uniform over valid positions."""
  _check_positive(crop_size=crop_size)
  if height < crop_size or width < crop_size:
    raise ValueError(
        f'Cannot crop {crop_size}x{crop_size} from frames of size ' f'{height}x{width}.'
    )
  top = int(rng.integers(0, height - crop_size + 1))
  left = int(rng.integers(0, width - crop_size + 1))
  return top, left


def random_crop(frames: np.ndarray, crop_size: int, rng: np.random.Generator) -> np.ndarray:
  """Random `crop_size` square, at the same place in every frame.

  Args:
    frames: [N, H, W, C] of any dtype, H and W at least `crop_size`.
    crop_size: side of the output square.
    rng: source of the offsets, each uniform over the valid positions.

  Returns:
    [N, crop_size, crop_size, C], the dtype of `frames`; a view of it.
  """
  top, left = _draw_crop_offset(*frames.shape[1:3], crop_size, rng)
  return frames[:, top : top + crop_size, left : left + crop_size]


def _draw_flip(rng: np.random.Generator) -> bool:
  """Whether a clip is flipped left-right: True with probability 1/2."""
  return bool(rng.random() < 0.5)


def random_flip_left_right(frames: np.ndarray, rng: np.random.Generator) -> np.ndarray:
  """All frames flipped left-right together, with probability 1/2.

  Args:
    frames: [N, H, W, C] of any dtype.
    rng: source of the coin flip.

  Returns:
    `frames` or its mirror image (a view), same shape and dtype.
  """
  if _draw_flip(rng):
    return frames[:, :, ::-1]
  return frames


def to_float(frames: np.ndarray) -> np.ndarray:
  """uint8 pixels to float32 in [0, 1] (division by 255 in float32)."""
  return frames.astype(np.float32) / _MAX_PIXEL_VALUE


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
  clips = np.empty((*rows.shape, crop_size, crop_size, _RGB_CHANNELS), np.uint8)
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
    return _resize_to(frames[rows], resized.shape[1:3], mirrored=True)
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
  draws = [(_draw_flip(rng), _draw_crop_offset(height, width, crop_size, rng)) for _ in rows]
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
  empty = np.zeros((0, num_frames, crop_size, crop_size, _RGB_CHANNELS), np.uint8)
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
  _check_frames(frames)
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
  _check_positive(num_windows=num_windows)
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
  _check_positive(num_windows=num_windows)
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
  _check_positive(num_clips=num_clips)
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
  _check_positive(num_clips=num_clips)
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
