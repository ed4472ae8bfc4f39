"""Few-shot linear probes: the protocol's classifier trained on a few videos per class.

Stage: evaluation, beside the linear probe, from the same clip embeddings
(docs/protocol.md). For each n in `SHOTS`, `DRAWS` draws (seeded 0 to
DRAWS - 1) each pick n training videos of every class, uniformly without
replacement (all of a class's videos where it has n or fewer); the linear
probe of the protocol (`classifier.fit_classifier`: standardisation, then
the one-vs-rest linear SVM, with the split's C) is trained on every clip of
the picked videos and scored on all test videos, window scores averaged per
video. Reported: each draw's test top-1, their mean and standard deviation.
"""

from typing import Any

import numpy as np

from mmv_core.evaluation import classifier
from mmv_core.evaluation.split_features import SplitFeatures

SHOTS = (1, 5, 10)
DRAWS = 10


def draw_videos(video_labels: np.ndarray, shots: int, seed: int) -> np.ndarray:
  """int64 [<= shots x classes]: sorted indices of `shots` videos per class.

  Args:
    video_labels: int [V], each training video's class.
    shots: videos per class.
    seed: the draw's seed; the same seed draws the same videos.
  """
  rng = np.random.default_rng(seed)
  picked = []
  for label in np.unique(video_labels):
    videos = np.flatnonzero(video_labels == label)
    picked.append(rng.choice(videos, size=min(shots, len(videos)), replace=False))
  return np.sort(np.concatenate(picked))


def fewshot_top1(
    features: SplitFeatures,
    svm_c: float,
    settings: classifier.SvmSettings = classifier.DEFAULT_SVM_SETTINGS,
    shots=SHOTS,
    draws: int = DRAWS,
) -> dict[str, dict[str, Any]]:
  """{str(n): {"mean", "std", "draws": [top-1 of each draw]}}, accuracies in [0, 1]."""
  layout = features.layout
  num_classes = len(layout.class_names)
  video_labels = np.array([v.label for v in layout.train_videos], np.int64)
  with_clips = np.unique(features.train_video)
  results = {}
  for n in shots:
    scores = []
    for seed in range(draws):
      videos = with_clips[draw_videos(video_labels[with_clips], n, seed)]
      rows = np.flatnonzero(np.isin(features.train_video, videos))
      probe = classifier.fit_classifier(
          features.train_features,
          features.train_labels[rows],
          num_classes,
          svm_c,
          settings,
          rows=rows,
      )
      video_scores, windows = classifier.average_by_video(
          probe.decision_function(features.test_features),
          features.test_video,
          len(layout.test_videos),
      )
      scored = windows > 0
      scores.append(classifier.accuracy(video_scores[scored], features.test_labels[scored], 1))
    results[str(n)] = {
        "mean": float(np.mean(scores)),
        "std": float(np.std(scores)),
        "draws": scores,
    }
  return results
