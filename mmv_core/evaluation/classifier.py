"""The linear probe's classifiers: fitting, scoring and choosing C.

`fit_classifiers`: `StandardScaler` then one-vs-rest linear SVMs (LinearSVC's
problem) on every training clip, kept as plain arrays (`LinearClassifier`,
saved as `.npz`). The default solver fits every class at once by matrix
products (`mmv_core.evaluation.svm_solver`); `liblinear` runs scikit-learn's
LinearSVC, one class at a time, as the original did. Scoring: decision values
averaged over a video's windows (`average_by_video`), top-k accuracy,
per-class accuracy, confusion. C selection: a held-out part of the training
videos, split by UCF101 group so one group's clips never sit on both sides
(`validation_partition`, `sweep_c`, `choose_c`).

Memory of one fit, for N training clips of D features: with the default
solver, the float32 features (4 N D bytes), a float32 standardised copy
(4 N D) and O(N K + D^2): 1.9 GB for 95,000 x 2,048, 3.6 GB for x 4,096.
With liblinear, a standardised float64 copy (8 N D) and, per class fitted at
once, liblinear's own copy (16 N D: an int index and a double per value).
"""

import dataclasses
import io
import os
import typing
from concurrent import futures
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from apache_beam.io.filesystems import FileSystems
import numpy as np
import psutil

from mmv_core.evaluation.split_features import SplitFeatures

# scikit-learn and the solver (scipy) are imported by the functions that fit:
# together they take a second to import, which the job's --help and its
# checks of the inputs should not wait for.
if typing.TYPE_CHECKING:
  from sklearn import preprocessing

DEFAULT_SVM_C = 0.001
VALIDATION_FRACTION = 0.2
VALIDATION_SEED = 0
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
      products (`mmv_core.evaluation.svm_solver`), or `liblinear`, scikit-learn's
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
  from mmv_core.evaluation import svm_solver

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
