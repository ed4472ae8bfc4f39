"""The clips one split needs, gathered from an embedding job's examples.

`SplitLayout` says which clips a split needs; `collect_split_features` streams
parsed examples into preallocated arrays, keeping only those clips and
recording what is missing, duplicated or unexpected (`InputCheck`);
`check_splits` records the same for several splits from the clips' headers
alone, before any split is loaded.
"""

import dataclasses
import typing
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from mmv_core.embeddings import schema
from mmv_core.datasets import ucf101

# scikit-learn and the solver (scipy) are imported by the functions that fit:
# together they take a second to import, which the job's --help and its
# checks of the inputs should not wait for.
if typing.TYPE_CHECKING:
  pass


class IncompleteSplitError(ValueError):
  """A split's embeddings are incomplete and --allow_missing was not given."""


class InconsistentInputError(ValueError):
  """Embeddings disagree with the split lists (labels, embedding sizes)."""


@dataclasses.dataclass(frozen=True)
class SplitLayout:
  """The clips one split needs: every listed video with all of its clips.

  Training clip `i` of training video `v` is row `v * num_train_clips + i`
  of the training arrays; test windows are laid out the same way.
  """

  split: int
  class_names: tuple[str, ...]
  train_videos: tuple[ucf101.VideoRecord, ...]
  test_videos: tuple[ucf101.VideoRecord, ...]
  num_train_clips: int
  num_test_windows: int

  @classmethod
  def from_lists(
      cls, lists: ucf101.SplitLists, split: int, *, num_train_clips: int, num_test_windows: int
  ) -> "SplitLayout":
    return cls(
        split=split,
        class_names=lists.class_names,
        train_videos=tuple(lists.videos_in(split, ucf101.TRAIN)),
        test_videos=tuple(lists.videos_in(split, ucf101.TEST)),
        num_train_clips=num_train_clips,
        num_test_windows=num_test_windows,
    )

  def videos(self, clip_type: str) -> tuple[ucf101.VideoRecord, ...]:
    return self.train_videos if clip_type == schema.CLIP_TYPE_TRAIN else self.test_videos

  def clips_per_video(self, clip_type: str) -> int:
    return self.num_train_clips if clip_type == schema.CLIP_TYPE_TRAIN else self.num_test_windows


@dataclasses.dataclass(frozen=True)
class InputCheck:
  """What one split's embeddings hold, lack or hold twice; clip ids `video/type/index`."""

  split: int
  num_train_clips: int
  num_test_clips: int
  missing_videos: tuple[str, ...]
  missing_clips: tuple[str, ...]
  duplicate_clips: tuple[str, ...]
  unexpected_clips: tuple[str, ...]
  num_ignored_clips: int

  @property
  def complete(self) -> bool:
    return not (self.missing_clips or self.duplicate_clips or self.unexpected_clips)

  def problems(self, max_ids: int = 10) -> list[str]:
    """One line per kind of problem, naming the first `max_ids` ids."""

    def line(what, ids):
      shown = ", ".join(ids[:max_ids]) + (", ..." if len(ids) > max_ids else "")
      return f"split {self.split}: {len(ids)} {what}: {shown}"

    kinds = (
        ("videos without any clip", self.missing_videos),
        ("missing clips", self.missing_clips),
        ("duplicated clips (first copy kept)", self.duplicate_clips),
        ("clips with an index beyond the expected count", self.unexpected_clips),
    )
    return [line(what, ids) for what, ids in kinds if ids]

  def summary(self, max_ids: int = 10) -> str:
    return "\n".join(self.problems(max_ids)) or f"split {self.split}: complete"

  def to_json(self) -> dict[str, Any]:
    return dataclasses.asdict(self) | {"complete": self.complete}


@dataclasses.dataclass
class SplitFeatures:
  """The clips of one split that were found.

  Attributes:
    train_features: float32 [N, D], one row per training clip.
    train_labels: int64 [N].
    train_video: int64 [N], index of the clip's video in `layout.train_videos`.
    test_features: float32 [M, D], one row per test window.
    test_video: int64 [M], index of the window's video in `layout.test_videos`.
  """

  layout: SplitLayout
  train_features: np.ndarray
  train_labels: np.ndarray
  train_video: np.ndarray
  test_features: np.ndarray
  test_video: np.ndarray

  @property
  def train_groups(self) -> np.ndarray:
    """[N], the group of each training clip: a string (`ListedVideo.group`, such as
    UCF101's zero-padded gGG, so string order is numeric order), or UCF101's
    int for a layout of `ucf101.VideoRecord`s."""
    groups = np.array([v.group for v in self.layout.train_videos])
    return groups[self.train_video]

  @property
  def test_labels(self) -> np.ndarray:
    """int64 [V], label of every test video."""
    return np.array([v.label for v in self.layout.test_videos], dtype=np.int64)


class _ClipTable:
  """Rows of one clip type: which are filled (`_SplitInventory.place`), and their features.

  The features are allocated at their final size by the first `put`.
  """

  def __init__(self, layout: SplitLayout, clip_type: str):
    self.clip_type = clip_type
    self.videos = layout.videos(clip_type)
    self.per_video = layout.clips_per_video(clip_type)
    self.row_of_video = {v.video_id: i * self.per_video for i, v in enumerate(self.videos)}
    self.filled = np.zeros(len(self.videos) * self.per_video, dtype=bool)
    self.features: np.ndarray | None = None
    self.duplicates: list[str] = []

  def put(self, row: int, embedding: np.ndarray, source: str) -> None:
    """Stores the embedding of a row that `_SplitInventory.place` filled."""
    if self.features is None:
      self.features = np.zeros((len(self.filled), embedding.shape[0]), np.float32)
    if embedding.shape[0] != self.features.shape[1]:
      raise InconsistentInputError(
          f"{source}: embedding has {embedding.shape[0]} values, earlier clips "
          f"have {self.features.shape[1]}"
      )
    self.features[row] = embedding

  def missing(self) -> tuple[list[str], list[str]]:
    """Ids of videos without any clip, and of every missing clip."""
    by_video = ~self.filled.reshape(len(self.videos), self.per_video)
    videos = [v.video_id for v, row in zip(self.videos, by_video) if row.all()]
    clips = [
        f"{self.videos[r // self.per_video].video_id}/{self.clip_type}/{r % self.per_video}"
        for r in np.flatnonzero(~self.filled)
    ]
    return videos, clips

  def found(self, embedding_size: int) -> tuple[np.ndarray, np.ndarray]:
    """(float32 [n, D] features, int64 [n] video index) of the filled rows."""
    rows = np.flatnonzero(self.filled)
    if self.features is None:
      return np.zeros((0, embedding_size), np.float32), rows
    features = self.features if len(rows) == len(self.filled) else self.features[rows]
    return features, rows // self.per_video


class _SplitInventory:
  """Which clips of one split have been seen, from their headers, and what did not fit."""

  def __init__(self, layout: SplitLayout):
    self.layout = layout
    self.tables = {t: _ClipTable(layout, t) for t in schema.CLIP_TYPES}
    self._expected_label = {v.video_id: v.label for v in layout.train_videos + layout.test_videos}
    self._unexpected: list[str] = []
    self._ignored = 0

  def place(self, header: Mapping[str, Any], source: str) -> tuple[_ClipTable, int] | None:
    """Marks a clip seen; its table and row if the split needs it and had no copy yet.

    Raises:
      InconsistentInputError: the clip's label disagrees with the split lists.
    """
    video_id, clip_type, index = (
        header[schema.VIDEO_ID],
        header[schema.CLIP_TYPE],
        header[schema.CLIP_INDEX],
    )
    table = self.tables[clip_type]
    if video_id not in table.row_of_video:
      self._ignored += 1
      return None
    if header[schema.LABEL] != self._expected_label[video_id]:
      expected = self._expected_label[video_id]
      raise InconsistentInputError(
          f"{source}: {video_id} has label {header[schema.LABEL]}, the split "
          f"lists give {expected} ({self.layout.class_names[expected]})"
      )
    clip_id = f"{video_id}/{clip_type}/{index}"
    if not 0 <= index < table.per_video:
      self._unexpected.append(clip_id)
      return None
    row = table.row_of_video[video_id] + index
    if table.filled[row]:
      table.duplicates.append(clip_id)
      return None
    table.filled[row] = True
    return table, row

  def check(self) -> InputCheck:
    missing_videos, missing_clips, duplicates = [], [], []
    for table in self.tables.values():
      videos, clips = table.missing()
      missing_videos += videos
      missing_clips += clips
      duplicates += table.duplicates
    return InputCheck(
        split=self.layout.split,
        num_train_clips=int(self.tables[schema.CLIP_TYPE_TRAIN].filled.sum()),
        num_test_clips=int(self.tables[schema.CLIP_TYPE_TEST].filled.sum()),
        missing_videos=tuple(missing_videos),
        missing_clips=tuple(missing_clips),
        duplicate_clips=tuple(duplicates),
        unexpected_clips=tuple(self._unexpected),
        num_ignored_clips=self._ignored,
    )


def check_splits(
    records: Iterable[tuple[str, bytes]], layouts: Sequence[SplitLayout]
) -> list[InputCheck]:
  """What each split's embeddings lack or hold twice, in one pass over the clips.

  Only the clips' headers are decoded, not their embeddings, so the pass costs
  a fraction of loading a split: the job runs it to refuse incomplete inputs
  before any split is loaded.

  Args:
    records: (source, serialized `tf.train.Example`) pairs, as for
      `collect_split_features`.
    layouts: the splits to check.

  Returns:
    One `InputCheck` per layout, in order.

  Raises:
    InconsistentInputError: a clip's label disagrees with the split lists.
  """
  inventories = [_SplitInventory(layout) for layout in layouts]
  for source, serialized in records:
    header = schema.parse_example(serialized, include_floats=False, source=source)
    for inventory in inventories:
      inventory.place(header, source)
  return [inventory.check() for inventory in inventories]


def collect_split_features(
    records: Iterable[tuple[str, bytes]], layout: SplitLayout
) -> tuple[SplitFeatures, InputCheck]:
  """Keeps the clips of one split from a stream of serialized examples.

  Only clips of the split's videos are decoded; the arrays are allocated once
  at their final size, so memory is that of the split's features.

  Args:
    records: (source, serialized `tf.train.Example`) pairs; `source` names the
      record in errors.
    layout: the split's videos and clip counts.

  Returns:
    The clips found, and what is missing, duplicated or unexpected.

  Raises:
    InconsistentInputError: a clip's label disagrees with the split lists, or
      embedding sizes differ.
  """
  inventory = _SplitInventory(layout)
  for source, serialized in records:
    placed = inventory.place(
        schema.parse_example(serialized, include_floats=False, source=source), source
    )
    if placed:
      table, row = placed
      table.put(row, schema.parse_example(serialized, source=source)[schema.EMBEDDING], source)

  tables = inventory.tables
  sizes = {t.features.shape[1] for t in tables.values() if t.features is not None}
  if len(sizes) > 1:
    raise InconsistentInputError(
        f"split {layout.split}: train and test embeddings differ in size {sorted(sizes)}"
    )
  if not sizes:
    raise IncompleteSplitError(f"split {layout.split}: no clip of the split was found")
  embedding_size = sizes.pop()

  train, test = tables[schema.CLIP_TYPE_TRAIN], tables[schema.CLIP_TYPE_TEST]
  train_features, train_video = train.found(embedding_size)
  test_features, test_video = test.found(embedding_size)
  train_labels = np.array([v.label for v in layout.train_videos], np.int64)[train_video]
  features = SplitFeatures(
      layout=layout,
      train_features=train_features,
      train_labels=train_labels,
      train_video=train_video,
      test_features=test_features,
      test_video=test_video,
  )
  return features, inventory.check()


def require_complete(check: InputCheck, allow_missing: bool) -> None:
  """Refuses an incomplete split unless the user allowed it."""
  if not check.complete and not allow_missing:
    raise IncompleteSplitError(
        f"{check.summary()}\nRefusing to score an incomplete split; pass "
        "--allow_missing to score what is there (the report lists what was missing)."
    )
