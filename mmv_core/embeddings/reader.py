"""An embedding job's output read into numpy arrays, for notebooks.

`load_embeddings(OUT)` reads every clip of `OUT/embeddings/*.tfrecord` (the
schema of `embedding_schema`, local or `gs://`) into one `Embeddings` table:
a row per clip, rows sorted by (video_id, clip_type, clip_index) so the same
output reads the same however its shards were split.
"""

import dataclasses
from typing import Any

import numpy as np

from mmv_core.embeddings import schema


@dataclasses.dataclass(frozen=True)
class Embeddings:
  """The clips of an embedding job, one row each.

  Attributes:
    X: float32 [N, D], one embedding per clip (`vid_repr` by default).
    label: int64 [N], 0-based class index in `classInd.txt` order.
    label_name: str [N], e.g. `ApplyEyeMakeup`.
    video_id: str [N], e.g. `v_ApplyEyeMakeup_g08_c01`.
    clip_type: str [N], `train` (random training clip) or `test` (test window).
    clip_index: int64 [N], 0-based within the video and clip type.
    run_config: the job's `run.json` (backbone, sampling settings, counts).
  """

  X: np.ndarray  # pylint: disable=invalid-name  (the usual name of a design matrix)
  label: np.ndarray
  label_name: np.ndarray
  video_id: np.ndarray
  clip_type: np.ndarray
  clip_index: np.ndarray
  run_config: dict[str, Any]

  def __len__(self) -> int:
    return len(self.X)

  def to_pandas(self):
    """A `pandas.DataFrame`, one row per clip.

    Columns `video_id`, `label`, `label_name`, `clip_type`, `clip_index` and
    `X`, whose cells are the float32 [D] embeddings (one column rather than D
    keeps the table readable; `np.stack(frame["X"])` gives back [N, D]).

    Raises:
      ImportError: pandas is not installed (it is not a dependency).
    """
    try:
      import pandas  # pylint: disable=import-outside-toplevel
    except ImportError as e:
      raise ImportError(
          "Embeddings.to_pandas needs pandas, which mmv_core does "
          "not install: pip install pandas"
      ) from e
    return pandas.DataFrame(
        {
            schema.VIDEO_ID: self.video_id,
            schema.LABEL: self.label,
            schema.LABEL_NAME: self.label_name,
            schema.CLIP_TYPE: self.clip_type,
            schema.CLIP_INDEX: self.clip_index,
            "X": list(self.X),
        }
    )


def load_embeddings(
    output_dir: str, *, clip_type: str | None = None, feature: str = schema.EMBEDDING
) -> Embeddings:
  """Reads an embedding job's output.

  Args:
    output_dir: the job's `--output_dir`, local or `gs://`.
    clip_type: `train` or `test` to keep only those clips; None keeps both.
    feature: the float feature that becomes `X`: `embedding` (`vid_repr`), or
      `video_audio` / `video_text` of a job run with `--joint_embeddings`.

  Returns:
    The clips, sorted by (video_id, clip_type, clip_index).

  Raises:
    ValueError: `clip_type` is not `train`, `test` or None.
    embedding_schema.EmbeddingFormatError: no shards or no `run.json`, a
      corrupt record, a clip without `feature`, or embeddings of different
      sizes; the message names the file and record.
  """
  if clip_type is not None and clip_type not in schema.CLIP_TYPES:
    raise ValueError(f"clip_type must be one of {schema.CLIP_TYPES} or None, got {clip_type!r}")
  run_config = schema.read_run_config(output_dir)
  rows = []
  for source, record in schema.embedding_records(output_dir):
    parsed = schema.parse_example(record, source=source)
    if clip_type is not None and parsed[schema.CLIP_TYPE] != clip_type:
      continue
    if feature not in parsed:
      raise schema.EmbeddingFormatError(f"{source}: no float feature {feature!r}")
    if rows and parsed[feature].size != rows[0][feature].size:
      raise schema.EmbeddingFormatError(
          f"{source}: {feature!r} has {parsed[feature].size} values, earlier "
          f"clips {rows[0][feature].size}"
      )
    rows.append(parsed)
  order = sorted(
      range(len(rows)),
      key=lambda i: (
          rows[i][schema.VIDEO_ID],
          rows[i][schema.CLIP_TYPE],
          rows[i][schema.CLIP_INDEX],
      ),
  )

  def column(name: str, dtype: type) -> np.ndarray:
    return np.array([rows[i][name] for i in order], dtype=dtype)

  return Embeddings(
      X=(np.stack([rows[i][feature] for i in order]) if rows else np.zeros((0, 0), np.float32)),
      label=column(schema.LABEL, np.int64),
      label_name=column(schema.LABEL_NAME, str),
      video_id=column(schema.VIDEO_ID, str),
      clip_type=column(schema.CLIP_TYPE, str),
      clip_index=column(schema.CLIP_INDEX, np.int64),
      run_config=run_config,
  )
