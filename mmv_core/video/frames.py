"""Per-frame operations of the MMV protocol: JPEG decoding, resize, crop, flip.

Pixel values equal the original pipeline's, which decoded and resized with
TensorFlow: JPEGs are decoded by libjpeg-turbo (through `simplejpeg`) with the
settings of `tf.io.decode_jpeg` (integer fast DCT, fancy upsampling), and the
resize repeats the float32 arithmetic of TensorFlow's bilinear kernel,
operation for operation, in a kernel that numba compiles, so both are
bit-identical to TensorFlow's without importing it (seconds of start-up per
process). Frames are uint8 [N, H, W, 3] numpy arrays; randomness comes from an
explicit `numpy.random.Generator`. `mmv_core.video.clips` cuts clips from them.
"""

from typing import Optional, Sequence

import numba
import numpy as np
import simplejpeg

# The most that one video's decoded frames may take. The protocol's videos
# are small (the clips of a 320x240 UCF101 video need about 40 MB); 2 GiB
# admits 1080p sources (about 1 GB for 20 clips' frames) and refuses 4K and
# beyond, whose frames would otherwise be decoded into many gigabytes.
MAX_DECODED_BYTES = 2 << 30

RGB_CHANNELS = 3
_MAX_PIXEL_VALUE = np.float32(255.0)


def check_positive(**values: int) -> None:
  for name, value in values.items():
    if value <= 0:
      raise ValueError(f'{name} must be positive, got {value}.')


def check_frames(frames: np.ndarray) -> None:
  if frames.ndim != 4 or frames.shape[-1] != RGB_CHANNELS:
    raise ValueError(f'Expected frames of shape [N, H, W, 3], got {frames.shape}.')
  if frames.dtype != np.uint8:
    raise ValueError(f'Expected uint8 frames, got {frames.dtype}.')


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
  decoded = len(indices) * height * width * RGB_CHANNELS
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
  check_positive(height=height, width=width, min_resize=min_resize)
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
  check_frames(frames)
  height, width = frames.shape[1:3]
  size = resized_size(height, width, min_resize)
  return frames if size == (height, width) else resize_to(frames, size)


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


def resize_to(frames: np.ndarray, size: tuple[int, int], mirrored: bool = False) -> np.ndarray:
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
  check_positive(crop_size=crop_size)
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


def draw_crop_offset(
    height: int, width: int, crop_size: int, rng: np.random.Generator
) -> tuple[int, int]:
  """(top, left) of a random `crop_size` square, uniform over valid positions."""
  check_positive(crop_size=crop_size)
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
  top, left = draw_crop_offset(*frames.shape[1:3], crop_size, rng)
  return frames[:, top : top + crop_size, left : left + crop_size]


def draw_flip(rng: np.random.Generator) -> bool:
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
  if draw_flip(rng):
    return frames[:, :, ::-1]
  return frames


def to_float(frames: np.ndarray) -> np.ndarray:
  """uint8 pixels to float32 in [0, 1] (division by 255 in float32)."""
  return frames.astype(np.float32) / _MAX_PIXEL_VALUE
