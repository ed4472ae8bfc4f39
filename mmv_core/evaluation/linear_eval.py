"""UCF101 linear evaluation: the protocol's logic, free of Beam.

One split's evaluation (`evaluate_split`): its features
(`mmv_core.evaluation.split_features`), the linear probe with its C
(`mmv_core.evaluation.classifier`), then the other protocols that ran (kNN and
retrieval, `neighbours`; few-shot, `fewshot`); `caveats` says which accuracies
mean little (trivial top-5, too few test videos); `summarise` averages the
splits.
"""

import collections
import dataclasses
import math
import time
import typing
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

# scikit-learn and the solver (scipy) are imported by the functions that fit:
# together they take a second to import, which the job's --help and its
# checks of the inputs should not wait for.
if typing.TYPE_CHECKING:
  pass
from mmv_core.evaluation.classifier import DEFAULT_SVM_C, DEFAULT_SVM_SETTINGS, NEWTON_TOL
from mmv_core.evaluation.classifier import ORIGINAL_SVM_SETTINGS, SOLVER_LIBLINEAR, SOLVER_NEWTON
from mmv_core.evaluation.classifier import SOLVERS, LinearClassifier, NotConvergedError, SvmSettings
from mmv_core.evaluation.classifier import accuracy, average_by_video, choose_c, confusion_matrix
from mmv_core.evaluation.classifier import fit_classifier, fit_classifiers, per_class_top1, sweep_c
from mmv_core.evaluation.classifier import validation_partition
from mmv_core.evaluation.split_features import IncompleteSplitError, InconsistentInputError
from mmv_core.evaluation.split_features import InputCheck, SplitFeatures, SplitLayout
from mmv_core.evaluation.split_features import check_splits, collect_split_features
from mmv_core.evaluation.split_features import require_complete

# Its own names, and those of the split features and the classifier that
# callers reach through it (the protocol's one public surface).
__all__ = [
    "ACCURACIES",
    "CAVEAT_METRICS",
    "DEFAULT_SVM_C",
    "DEFAULT_SVM_SETTINGS",
    "FEWSHOT",
    "FEWSHOT_TOP1",
    "KNN",
    "KNN_TOP1",
    "LINEAR",
    "MIN_TEST_VIDEOS",
    "NEWTON_TOL",
    "ORIGINAL_SVM_SETTINGS",
    "PROBE_PROTOCOLS",
    "PROTOCOLS",
    "RETRIEVAL",
    "RETRIEVAL_RECALL",
    "SOLVER_LIBLINEAR",
    "SOLVER_NEWTON",
    "SOLVERS",
    "TRIVIAL_TOP5_MAX_CLASSES",
    "accuracy",
    "average_by_video",
    "caveats",
    "check_splits",
    "choose_c",
    "collect_split_features",
    "confusion_matrix",
    "evaluate_split",
    "fit_classifier",
    "fit_classifiers",
    "IncompleteSplitError",
    "InconsistentInputError",
    "InputCheck",
    "LinearClassifier",
    "NotConvergedError",
    "per_class_top1",
    "require_complete",
    "split_svm_c",
    "SplitFeatures",
    "SplitLayout",
    "SplitResult",
    "summarise",
    "SvmSettings",
    "sweep_c",
    "validation_partition",
]

# The evaluation protocols (docs/protocol.md): the linear probe; kNN and
# retrieval (mmv_core/evaluation/neighbours.py); few-shot linear probes (mmv_core/evaluation/fewshot.py).
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
ACCURACIES = ("test_top1", "test_top5", "train_top1", "train_top5")
# Metrics that mean little (`caveats`): top-5 over this many classes or fewer
# counts every video as a hit, whatever the features;
TRIVIAL_TOP5_MAX_CLASSES = 5
# and a test accuracy over fewer videos than this is a coarse estimate: each
# video moves it by more than 3 points, and near 50% its 95% interval spans
# more than +-18 points.
MIN_TEST_VIDEOS = 30


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
  from mmv_core.evaluation import fewshot  # pylint: disable=import-outside-toplevel
  from mmv_core.evaluation import neighbours  # pylint: disable=import-outside-toplevel

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
