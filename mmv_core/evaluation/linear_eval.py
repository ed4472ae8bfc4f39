"""UCF101 linear evaluation: the protocol's logic, free of Beam.

Stages, each a plain function or small class:
  1. `SplitLayout` says which clips one split needs; `collect_split_features`
     streams parsed examples into preallocated arrays, keeping only those
     clips and recording what is missing, duplicated or unexpected
     (`InputCheck`); `check_splits` records the same for several splits
     from the clips' headers alone, before any split is loaded.
  2. `fit_classifiers`: `StandardScaler` then one-vs-rest linear SVMs
     (LinearSVC's problem) on every training clip, kept as plain arrays
     (`LinearClassifier`, saved as `.npz`). The default solver fits every
     class at once by matrix products (`mmv_core.svm_solver`); `liblinear`
     runs scikit-learn's LinearSVC, one class at a time, as the original did.
  3. Scoring: decision values averaged over a video's windows
     (`average_by_video`), top-k accuracy, per-class accuracy, confusion;
     `caveats` says which accuracies mean little (trivial top-5, too few
     test videos).
  4. C selection: a held-out part of the training videos, split by UCF101
     group so one group's clips never sit on both sides
     (`validation_partition`, `sweep_c`, `choose_c`).

Memory of one fit, for N training clips of D features: with the default
solver, the float32 features (4 N D bytes), a float32 standardised copy
(4 N D) and O(N K + D^2): 1.9 GB for 95,000 x 2,048, 3.6 GB for x 4,096.
With liblinear, a standardised float64 copy (8 N D) and, per class fitted at
once, liblinear's own copy (16 N D: an int index and a double per value).
"""

import collections
import dataclasses
import io
import math
import os
import time
import typing
from concurrent import futures
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from apache_beam.io.filesystems import FileSystems
import numpy as np
import psutil

from mmv_core import embedding_schema as schema
from mmv_core import ucf101

# scikit-learn and the solver (scipy) are imported by the functions that fit:
# together they take a second to import, which the job's --help and its
# checks of the inputs should not wait for.
if typing.TYPE_CHECKING:
  from sklearn import preprocessing

# The evaluation protocols (docs/protocol.md): the linear probe; kNN and
# retrieval (mmv_core/neighbours.py); few-shot linear probes (mmv_core/fewshot.py).
LINEAR = "linear"
KNN = "knn"
RETRIEVAL = "retrieval"
FEWSHOT = "fewshot"
PROTOCOLS = (LINEAR, KNN, RETRIEVAL, FEWSHOT)
# The protocols that fit linear probes, with the split's C.
PROBE_PROTOCOLS = (LINEAR, FEWSHOT)
# Each protocol's metrics in a split's metrics: {name: {str(k or n): value}}.
KNN_TOP1 = "knn_top1"
RETRIEVAL_RECALL = "retrieval_recall"
FEWSHOT_TOP1 = "fewshot_top1"

DEFAULT_SVM_C = 0.001
VALIDATION_FRACTION = 0.2
VALIDATION_SEED = 0
ACCURACIES = ("test_top1", "test_top5", "train_top1", "train_top5")
# Metrics that mean little (`caveats`): top-5 over this many classes or fewer
# counts every video as a hit, whatever the features;
TRIVIAL_TOP5_MAX_CLASSES = 5
# and a test accuracy over fewer videos than this is a coarse estimate: each
# video moves it by more than 3 points, and near 50% its 95% interval spans
# more than +-18 points.
MIN_TEST_VIDEOS = 30
# Rows standardised or scored at a time: bounds the temporary copies.
_BLOCK_ROWS = 8192
# liblinear's copy of the training data: an int index and a double per value.
_LIBLINEAR_BYTES_PER_VALUE = 16


SOLVER_NEWTON = "newton"
SOLVER_LIBLINEAR = "liblinear"
SOLVERS = (SOLVER_NEWTON, SOLVER_LIBLINEAR)
# Newton at 10x liblinear's default tolerance: objectives within 1e-6 of
# liblinear's run to 1e-8 (tests/test_svm_solver.py) for about one more
# Newton iteration; float32 products still resolve it at full size.
NEWTON_TOL = 1e-5


@dataclasses.dataclass(frozen=True)
class SvmSettings:
  """How the one-vs-rest linear SVMs are fitted (see bench/README.md).

  Attributes:
    solver: `newton`, every class at once by Newton's method on matrix
      products (`mmv_core.svm_solver`), or `liblinear`, scikit-learn's
      LinearSVC, one class at a time. Both minimise the same objective.
    tol: newton: a class stops when its gradient norm is `tol` times its
      gradient norm at zero; liblinear: LinearSVC's `tol`.
    max_iter: Newton iterations, or LinearSVC's `max_iter`.
    dual: LinearSVC's `dual` (liblinear only).
  """

  solver: str = SOLVER_NEWTON
  tol: float = NEWTON_TOL
  max_iter: int = 1000
  dual: bool | str = True


# `LinearSVC(C=0.001)` as the original evaluation ran it (scikit-learn of
# 2020, when the default solver was the dual one; 1.9's default is "auto").
ORIGINAL_SVM_SETTINGS = SvmSettings(solver=SOLVER_LIBLINEAR, dual=True, tol=1e-4, max_iter=1000)
# The same optimum by matrix products (bench/README.md: same predictions,
# tens of times faster).
DEFAULT_SVM_SETTINGS = SvmSettings()


class NotConvergedError(RuntimeError):
  """The Newton solver stopped before its tolerance; no result is reported."""


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


@dataclasses.dataclass
class LinearClassifier:
  """A fitted scaler + linear SVM, as plain arrays.

  Attributes:
    mean: float64 [D], the scaler's mean.
    scale: float64 [D], the scaler's standard deviation (1 where it is 0).
    coef: float64 [K, D], one row per class of `class_names`.
    intercept: float64 [K]; -inf for a class absent from the training clips.
    svm_c: the SVM's C.
    iterations: int64 [K], Newton iterations per class (0 for an absent
      class); None from liblinear.
    relative_gradient_norm: float64 [K], each class's final gradient norm
      over its norm at zero (NaN for an absent class); None from liblinear.
  """

  mean: np.ndarray
  scale: np.ndarray
  coef: np.ndarray
  intercept: np.ndarray
  svm_c: float
  iterations: np.ndarray | None = None
  relative_gradient_norm: np.ndarray | None = None

  def decision_function(self, features: np.ndarray, rows: np.ndarray | None = None) -> np.ndarray:
    """float [N, D] -> float64 [n, K], as `LinearSVC` after the scaler gives it.

    `rows` (int [n]) scores only those rows (default all). Computed in
    float64 like scikit-learn, a block of rows at a time, so no standardised,
    float64 or gathered copy of all of `features` is made.
    """
    weights = (self.coef / self.scale).T
    bias = self.intercept - (self.mean / self.scale) @ self.coef.T
    rows = np.arange(len(features)) if rows is None else rows
    scores = np.empty((len(rows), len(bias)), np.float64)
    for out, block in _row_blocks(rows):
      scores[out] = features[block].astype(np.float64) @ weights + bias
    return scores

  def convergence(self) -> dict[str, Any] | None:
    """JSON-ready iterations and relative gradient norms per class (None: absent class)."""
    if self.iterations is None:
      return None
    present = np.isfinite(self.intercept)
    return {
        "iterations": [int(n) if p else None for n, p in zip(self.iterations, present)],
        "relative_gradient_norm": [
            float(g) if p else None for g, p in zip(self.relative_gradient_norm, present)
        ],
    }

  def save(self, path: str) -> None:
    """Writes an `.npz` (no pickle) to a local path or gs://."""
    buffer = io.BytesIO()
    np.savez(
        buffer,
        mean=self.mean,
        scale=self.scale,
        coef=self.coef,
        intercept=self.intercept,
        svm_c=np.float64(self.svm_c),
    )
    with FileSystems.create(path) as f:
      f.write(buffer.getvalue())

  @classmethod
  def load(cls, path: str) -> "LinearClassifier":
    with FileSystems.open(path) as f:
      arrays = np.load(io.BytesIO(f.read()), allow_pickle=False)
      return cls(
          mean=arrays["mean"],
          scale=arrays["scale"],
          coef=arrays["coef"],
          intercept=arrays["intercept"],
          svm_c=float(arrays["svm_c"]),
      )


def fit_threads(num_values: int) -> int:
  """Concurrent liblinear class fits that the cores and the available memory allow."""
  by_memory = int(psutil.virtual_memory().available * 0.8) // (
      _LIBLINEAR_BYTES_PER_VALUE * num_values
  )
  return max(1, min(os.cpu_count() or 1, by_memory))


def _row_blocks(rows: np.ndarray) -> Iterable[tuple[slice, np.ndarray]]:
  """(slice of `rows`, the row indices in it), `_BLOCK_ROWS` at a time."""
  for start in range(0, len(rows), _BLOCK_ROWS):
    yield slice(start, start + _BLOCK_ROWS), rows[start : start + _BLOCK_ROWS]


def standardise(
    features: np.ndarray, rows: np.ndarray
) -> tuple["preprocessing.StandardScaler", np.ndarray]:
  """`StandardScaler` fitted on `features[rows]`, and those rows standardised.

  Gathers and scales a block of rows at a time, so memory is the float32
  result ([n, D]) and no float64 or gathered copy of all of it.
  """
  from sklearn import preprocessing

  scaler = preprocessing.StandardScaler()
  for _, block in _row_blocks(rows):
    scaler.partial_fit(features[block])
  standardised = np.empty((len(rows), features.shape[1]), np.float32)
  scale = scaler.scale_.astype(np.float32)
  for out, block in _row_blocks(rows):
    np.subtract(features[block], scaler.mean_, out=standardised[out], casting="same_kind")
    standardised[out] /= scale
  return scaler, standardised


def _fit_liblinear(
    features: np.ndarray,
    labels: np.ndarray,
    present: np.ndarray,
    svm_c: float,
    settings: SvmSettings,
    threads: int | None,
) -> tuple["preprocessing.StandardScaler", np.ndarray, np.ndarray]:
  """LinearSVC per present class; (scaler, coef [k, D], intercept [k])."""
  from sklearn import preprocessing
  from sklearn import svm

  scaler = preprocessing.StandardScaler().fit(features)
  # LinearSVC fits in float64 anyway; standardising straight into float64
  # avoids a third copy of the features.
  standardised = np.subtract(features, scaler.mean_, dtype=np.float64)
  standardised /= scaler.scale_

  def fit_one_vs_rest(k: int) -> tuple[np.ndarray, float]:
    # The same binary problem liblinear solves for class k in its own
    # one-vs-rest loop; a fixed seed keeps the dual solver's order reproducible.
    model = svm.LinearSVC(
        C=svm_c, dual=settings.dual, tol=settings.tol, max_iter=settings.max_iter, random_state=0
    )
    model.fit(standardised, labels == k)
    return model.coef_[0], model.intercept_[0]

  # liblinear releases the GIL, so classes fit in parallel on threads, each
  # with its own 16-bytes-per-value copy of the data: as many as memory allows.
  threads = threads or fit_threads(standardised.size)
  with futures.ThreadPoolExecutor(threads) as pool:
    fitted = list(pool.map(fit_one_vs_rest, present))
  return scaler, np.array([w for w, _ in fitted]), np.array([b for _, b in fitted])


def fit_classifiers(
    features: np.ndarray,
    labels: np.ndarray,
    num_classes: int,
    svm_cs: Sequence[float],
    settings: SvmSettings = DEFAULT_SVM_SETTINGS,
    *,
    rows: np.ndarray | None = None,
    threads: int | None = None,
) -> list[LinearClassifier]:
  """`StandardScaler` then one-vs-rest linear SVMs, for each C.

  With the newton solver the features are standardised, and their Gram
  matrix computed, once for all C values, so a sweep costs far less than
  separate fits.

  Args:
    features: float32 [N, D].
    labels: int [n], the labels of `rows`, in [0, num_classes).
    num_classes: K, the number of classes of the split lists.
    svm_cs: the SVM's C values.
    settings: the solver and its stopping rules.
    rows: int [n], the training rows of `features` (default all).
    threads: liblinear only: classes fitted at once; default `fit_threads`.

  Returns:
    One classifier per C, in `svm_cs`' order.

  Raises:
    NotConvergedError: a class did not reach the newton solver's tolerance.
  """
  rows = np.arange(len(features)) if rows is None else np.asarray(rows)
  present = np.unique(labels)
  classifiers = []
  if settings.solver == SOLVER_LIBLINEAR:
    for svm_c in svm_cs:
      scaler, coef, intercept = _fit_liblinear(
          features[rows], labels, present, svm_c, settings, threads
      )
      classifiers.append(_classifier(scaler, num_classes, present, coef, intercept, svm_c))
    return classifiers
  from mmv_core import svm_solver

  scaler, standardised = standardise(features, rows)
  gram_matrix = svm_solver.gram(standardised)
  solver_settings = svm_solver.SolverSettings(tol=settings.tol, max_iter=settings.max_iter)
  for svm_c in svm_cs:
    fit = svm_solver.solve(
        standardised, labels, present, svm_c, gram_matrix=gram_matrix, settings=solver_settings
    )
    if not fit.converged.all():
      raise NotConvergedError(
          f"C={svm_c:g}: {int((~fit.converged).sum())} of {len(present)} classes did not "
          f"converge (largest relative gradient norm {fit.relative_gradient_norm.max():.2e} "
          f"after {fit.iterations.max()} of at most {settings.max_iter} Newton iterations, "
          f"tolerance {settings.tol:g}); raise --svm_max_iter, or --svm_tol if the "
          "iterations stopped short of the limit"
      )
    classifier = _classifier(scaler, num_classes, present, fit.coef, fit.intercept, svm_c)
    classifier.iterations = np.zeros(num_classes, np.int64)
    classifier.iterations[present] = fit.iterations
    classifier.relative_gradient_norm = np.full(num_classes, np.nan)
    classifier.relative_gradient_norm[present] = fit.relative_gradient_norm
    classifiers.append(classifier)
  return classifiers


def _classifier(
    scaler: "preprocessing.StandardScaler",
    num_classes: int,
    present: np.ndarray,
    coef: np.ndarray,
    intercept: np.ndarray,
    svm_c: float,
) -> LinearClassifier:
  """A classifier over all `num_classes`, from the fits of the `present` ones."""
  full_coef = np.zeros((num_classes, len(scaler.mean_)))
  full_intercept = np.full(num_classes, -np.inf)  # Classes without training clips never win.
  full_coef[present] = coef
  full_intercept[present] = intercept
  return LinearClassifier(
      mean=scaler.mean_, scale=scaler.scale_, coef=full_coef, intercept=full_intercept, svm_c=svm_c
  )


def fit_classifier(
    features: np.ndarray,
    labels: np.ndarray,
    num_classes: int,
    svm_c: float,
    settings: SvmSettings = DEFAULT_SVM_SETTINGS,
    **kwargs,
) -> LinearClassifier:
  """`fit_classifiers` for one C."""
  return fit_classifiers(features, labels, num_classes, (svm_c,), settings, **kwargs)[0]


def average_by_video(
    scores: np.ndarray, video: np.ndarray, num_videos: int
) -> tuple[np.ndarray, np.ndarray]:
  """Mean score of each video over its clips.

  Args:
    scores: float [M, K], one row per clip.
    video: int [M], the clip's video index in [0, num_videos).
    num_videos: V.

  Returns:
    float64 [V, K] means (NaN rows for videos without clips) and int64 [V]
    clip counts.
  """
  counts = np.bincount(video, minlength=num_videos)
  sums = np.zeros((num_videos, scores.shape[1]), np.float64)
  np.add.at(sums, video, scores)
  with np.errstate(invalid="ignore", divide="ignore"):
    return sums / counts[:, None], counts


def top_k_correct(scores: np.ndarray, labels: np.ndarray, k: int) -> np.ndarray:
  """bool [N]: whether the label is among the k highest of float [N, K] scores.

  A tie at the k-th score counts against the label (strictly fewer than k
  classes must score higher, and ties with the label are counted as higher).
  """
  label_scores = scores[np.arange(len(labels)), labels]
  others_at_least = (scores >= label_scores[:, None]).sum(axis=1) - 1
  return others_at_least < k


def accuracy(scores: np.ndarray, labels: np.ndarray, k: int) -> float:
  """Top-k accuracy in [0, 1]; NaN for no examples."""
  return float(top_k_correct(scores, labels, k).mean()) if len(labels) else float("nan")


def per_class_top1(
    scores: np.ndarray, labels: np.ndarray, num_classes: int
) -> tuple[np.ndarray, np.ndarray]:
  """(float64 [K] top-1 accuracy per true class, NaN where none; int64 [K] counts)."""
  correct = top_k_correct(scores, labels, 1)
  counts = np.bincount(labels, minlength=num_classes)
  hits = np.bincount(labels, weights=correct, minlength=num_classes)
  with np.errstate(invalid="ignore", divide="ignore"):
    return hits / counts, counts


def confusion_matrix(scores: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
  """int64 [K, K]: row = true class, column = highest-scoring class."""
  matrix = np.zeros((num_classes, num_classes), np.int64)
  np.add.at(matrix, (labels, scores.argmax(axis=1)), 1)
  return matrix


def validation_partition(
    groups: np.ndarray, fraction: float = VALIDATION_FRACTION, seed: int = VALIDATION_SEED
) -> tuple[np.ndarray, np.ndarray]:
  """Splits training clips into (fit, held-out) row indices by UCF101 group.

  The groups (gGG) number actors and scenes alike across classes, as the
  official splits use them, so a held-out group holds out those people in
  every class, and no group has clips on both sides. Deterministic in
  `groups` and `seed`, so every C of a sweep sees the same partition.
  """
  from sklearn import model_selection

  splitter = model_selection.GroupShuffleSplit(n_splits=1, test_size=fraction, random_state=seed)
  fit_rows, held_out_rows = next(splitter.split(groups, groups=groups))
  return np.sort(fit_rows), np.sort(held_out_rows)


def sweep_c(
    features: SplitFeatures, svm_cs: Sequence[float], settings: SvmSettings = DEFAULT_SVM_SETTINGS
) -> dict[float, float]:
  """{C: top-1 on held-out training videos} (clip scores averaged per video).

  Every C is fitted on the same held-in part of the training clips
  (`validation_partition`), in one `fit_classifiers` call.
  """
  fit_rows, held_out_rows = validation_partition(features.train_groups)
  classifiers = fit_classifiers(
      features.train_features,
      features.train_labels[fit_rows],
      len(features.layout.class_names),
      svm_cs,
      settings,
      rows=fit_rows,
  )
  videos, video_index = np.unique(features.train_video[held_out_rows], return_inverse=True)
  video_labels = np.array([features.layout.train_videos[v].label for v in videos])
  scores = {}
  for svm_c, classifier in zip(svm_cs, classifiers):
    video_scores, _ = average_by_video(
        classifier.decision_function(features.train_features, held_out_rows),
        video_index,
        len(videos),
    )
    scores[svm_c] = accuracy(video_scores, video_labels, 1)
  return scores


def choose_c(validation_scores: Mapping[float, float]) -> float:
  """The C with the best validation top-1; among equals, the smallest C."""
  return max(sorted(validation_scores), key=lambda c: validation_scores[c])


@dataclasses.dataclass
class SplitResult:
  """Everything one split's final evaluation produced.

  Attributes:
    metrics: JSON-ready numbers (accuracies in [0, 1], counts, C, seconds),
      with each protocol's that ran.
    per_class_accuracy: float64 [K] test top-1 per class (NaN: no test video);
      None without the linear probe, as are the next three.
    per_class_videos: int64 [K] test videos per class that were scored.
    confusion: int64 [K, K] test confusion matrix.
    classifier: the classifier trained on every training clip.
    check: what the split's embeddings lacked.
  """

  split: int
  metrics: dict[str, Any]
  per_class_accuracy: np.ndarray | None
  per_class_videos: np.ndarray | None
  confusion: np.ndarray | None
  check: InputCheck
  classifier: LinearClassifier | None


def split_svm_c(
    features: SplitFeatures, svm_cs: Sequence[float], settings: SvmSettings
) -> tuple[float, dict[float, float], float]:
  """(the split's C, {C: validation top-1} of a sweep, seconds it took).

  One C is used as given; of several, each is scored on held-out training
  groups (`sweep_c`) and the best chosen (`choose_c`).

  Raises:
    NotConvergedError: naming the split and C.
  """
  start = time.perf_counter()
  if len(svm_cs) == 1:
    return svm_cs[0], {}, 0.0
  try:
    validation_scores = sweep_c(features, svm_cs, settings)
  except NotConvergedError as e:
    raise NotConvergedError(f"split {features.layout.split}, {e}") from None
  return choose_c(validation_scores), validation_scores, time.perf_counter() - start


def evaluate_split(
    features: SplitFeatures,
    check: InputCheck,
    svm_cs: Sequence[float],
    settings: SvmSettings = DEFAULT_SVM_SETTINGS,
    *,
    load_seconds: float = 0.0,
    protocols: Sequence[str] = (LINEAR,),
) -> SplitResult:
  """Runs the `protocols` on one split's features.

  The linear probe: chooses C (`split_svm_c`), trains on every training
  clip, scores training clips and test videos. kNN and retrieval compare
  video features (`neighbours`); few-shot probes train the linear probe on
  a few videos per class with the same C (`fewshot`). `load_seconds` goes
  into the metrics' time taken.

  Raises:
    NotConvergedError: naming the split and C.
  """
  from mmv_core import fewshot  # pylint: disable=import-outside-toplevel
  from mmv_core import neighbours  # pylint: disable=import-outside-toplevel

  layout = features.layout
  num_classes = len(layout.class_names)
  start = time.perf_counter()
  metrics = {
      "num_train_videos": int(len(np.unique(features.train_video))),
      "num_train_clips": int(len(features.train_labels)),
      "num_test_clips": int(len(features.test_video)),
      "num_classes": int(len(np.unique(features.train_labels))),
      "embedding_size": int(features.train_features.shape[1]),
      "protocols": [p for p in PROTOCOLS if p in protocols],
      "input_complete": check.complete,
  }
  seconds = {"load": round(load_seconds, 3)}
  linear = SplitResult(layout.split, metrics, None, None, None, check, None)
  if set(PROBE_PROTOCOLS) & set(protocols):
    svm_c, validation_scores, seconds["c_sweep"] = split_svm_c(features, svm_cs, settings)
    metrics |= {
        "svm_c": svm_c,
        "validation_top1": {repr(c): s for c, s in sorted(validation_scores.items())},
        "svm_settings": dataclasses.asdict(settings),
    }
  if LINEAR in protocols:
    linear, seconds["fit"] = _linear_probe(features, check, svm_c, settings, metrics)
  if KNN in protocols or RETRIEVAL in protocols:
    protocol_start = time.perf_counter()
    train = neighbours.video_features(
        features.train_features, features.train_video, len(layout.train_videos)
    )
    test = neighbours.video_features(
        features.test_features, features.test_video, len(layout.test_videos)
    )
    with_clips = np.unique(features.train_video)
    scored = np.bincount(features.test_video, minlength=len(layout.test_videos)) > 0
    train_labels = np.array([v.label for v in layout.train_videos], np.int64)[with_clips]
    train, test, test_labels = train[with_clips], test[scored], features.test_labels[scored]
    ks = (neighbours.KNN_KS if KNN in protocols else ()) + (
        neighbours.RETRIEVAL_KS if RETRIEVAL in protocols else ()
    )
    indices, similarities = neighbours.nearest(test, train, max(ks))
    if KNN in protocols:
      top1 = neighbours.knn_top1(train_labels[indices], similarities, test_labels, num_classes)
      metrics[KNN_TOP1] = {str(k): v for k, v in top1.items()}
    if RETRIEVAL in protocols:
      recall = neighbours.recall_at_k(train_labels[indices], test_labels)
      metrics[RETRIEVAL_RECALL] = {str(k): v for k, v in recall.items()}
    metrics["num_test_videos"] = int(scored.sum())
    seconds["neighbours"] = round(time.perf_counter() - protocol_start, 3)
  if FEWSHOT in protocols:
    protocol_start = time.perf_counter()
    try:
      metrics[FEWSHOT_TOP1] = fewshot.fewshot_top1(features, svm_c, settings)
    except NotConvergedError as e:
      raise NotConvergedError(f"split {layout.split}, few-shot, {e}") from None
    seconds["fewshot"] = round(time.perf_counter() - protocol_start, 3)
  metrics.setdefault("num_test_videos", int(len(np.unique(features.test_video))))
  metrics["seconds"] = {k: round(v, 3) for k, v in seconds.items()} | {
      "total": round(load_seconds + time.perf_counter() - start, 3)
  }
  metrics["caveats"] = caveats(metrics)
  return linear


def _linear_probe(
    features: SplitFeatures,
    check: InputCheck,
    svm_c: float,
    settings: SvmSettings,
    metrics: dict[str, Any],
) -> tuple[SplitResult, float]:
  """Trains on every training clip with `svm_c`, scores; adds to `metrics`. (result, fit s)"""
  layout = features.layout
  num_classes = len(layout.class_names)
  start = time.perf_counter()
  try:
    classifier = fit_classifier(
        features.train_features, features.train_labels, num_classes, svm_c, settings
    )
  except NotConvergedError as e:
    raise NotConvergedError(f"split {layout.split}, {e}") from None
  fit_seconds = time.perf_counter() - start
  train_scores = classifier.decision_function(features.train_features)
  window_scores = classifier.decision_function(features.test_features)
  video_scores, windows = average_by_video(
      window_scores, features.test_video, len(layout.test_videos)
  )
  scored = windows > 0
  test_scores, test_labels = video_scores[scored], features.test_labels[scored]
  per_class, per_class_videos = per_class_top1(test_scores, test_labels, num_classes)
  metrics |= {
      "train_top1": accuracy(train_scores, features.train_labels, 1),
      "train_top5": accuracy(train_scores, features.train_labels, 5),
      "test_top1": accuracy(test_scores, test_labels, 1),
      "test_top5": accuracy(test_scores, test_labels, 5),
      "num_test_videos": int(scored.sum()),
      "convergence": classifier.convergence(),
  }
  result = SplitResult(
      split=layout.split,
      metrics=metrics,
      per_class_accuracy=per_class,
      per_class_videos=per_class_videos,
      confusion=confusion_matrix(test_scores, test_labels, num_classes),
      check=check,
      classifier=classifier,
  )
  return result, fit_seconds


# The metrics `caveats` may mark: the linear probe's, then the other protocols'.
CAVEAT_METRICS = (*ACCURACIES, KNN_TOP1, RETRIEVAL_RECALL, FEWSHOT_TOP1)


def caveats(metrics: Mapping[str, Any]) -> dict[str, str]:
  """Which of one split's accuracies mean little, and why: {metric name: reason}.

  Args:
    metrics: the split's metrics, with `num_classes` (classes with training
      clips) and `num_test_videos`; an accuracy over no videos (NaN), or of
      a protocol that did not run, has no caveat, as it has no value.
  """
  reasons = collections.defaultdict(list)
  if metrics["num_classes"] <= TRIVIAL_TOP5_MAX_CLASSES:
    for name in ("train_top5", "test_top5"):
      reasons[name].append(f"trivially 100% with {TRIVIAL_TOP5_MAX_CLASSES} classes or fewer")
  if metrics["num_test_videos"] < MIN_TEST_VIDEOS:
    for name in ("test_top1", "test_top5", KNN_TOP1, RETRIEVAL_RECALL, FEWSHOT_TOP1):
      reasons[name].append(f"fewer than {MIN_TEST_VIDEOS} test videos, a coarse estimate")
  return {
      name: "; ".join(reasons[name])
      for name in CAVEAT_METRICS
      if reasons[name]
      and name in metrics
      and not (isinstance(metrics[name], float) and math.isnan(metrics[name]))
  }


def _mean_caveats(results: Sequence[SplitResult]) -> dict[str, str]:
  """{metric name: "split(s) S: reason; ..."}, over the splits where it means little."""
  mean_caveats = {}
  for name in CAVEAT_METRICS:
    splits_by_reason = collections.defaultdict(list)
    for r in results:
      if name in r.metrics["caveats"]:
        splits_by_reason[r.metrics["caveats"][name]].append(str(r.split))
    if splits_by_reason:
      mean_caveats[name] = "; ".join(
          f"split{'s' if len(splits) > 1 else ''} {', '.join(splits)}: {reason}"
          for reason, splits in splits_by_reason.items()
      )
  return mean_caveats


def _mean_of(values: Sequence[Any]) -> Any:
  """The mean of splits' values: numbers, or dicts of them (key by key, nested)."""
  if isinstance(values[0], Mapping):
    return {key: _mean_of([v[key] for v in values]) for key in values[0] if key != "draws"}
  return float(np.mean(values))


def summarise(results: Sequence[SplitResult]) -> dict[str, Any]:
  """`metrics.json`'s content: each split's metrics and the mean over splits.

  The mean holds each accuracy of every protocol that ran (few-shot: the
  mean over splits of each split's mean and standard deviation over its
  draws). Its `caveats` name each metric that means little in some split,
  with the splits and the reason.
  """
  ordered = sorted(results, key=lambda r: r.split)
  means = {
      name: _mean_of([r.metrics[name] for r in ordered])
      for name in (*ACCURACIES, KNN_TOP1, RETRIEVAL_RECALL, FEWSHOT_TOP1)
      if name in ordered[0].metrics
  }
  return {
      "splits": {str(r.split): r.metrics | {"input_check": r.check.to_json()} for r in ordered},
      "mean": means
      | {
          "splits": [r.split for r in ordered],
          "protocols": ordered[0].metrics["protocols"],
          "caveats": _mean_caveats(ordered),
      },
  }
