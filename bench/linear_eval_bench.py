"""Times one split's linear-evaluation fit for several LinearSVC settings.

Random features with class structure stand in for embeddings: each clip is its
class's mean, plus an offset shared by the clips of its video, plus noise, at
a difficulty where accuracy is below 100%. Each setting runs in a fresh
process so its peak memory (ru_maxrss) is its own.

  .venv/bin/python bench/linear_eval_bench.py                      # full size
  .venv/bin/python bench/linear_eval_bench.py --train_videos=2000 --dim=512

Full size is UCF101 split 1 with TSM-ResNet-50: 9,537 training videos x 10
clips = 95,370 clips x 2,048 features; 3,783 test videos x 10 windows.
"""

import argparse
import concurrent.futures
import dataclasses
import json
import multiprocessing
import pathlib
import resource
import time

import numpy as np

from mmv_core import linear_eval

SETTINGS = {
    "original": linear_eval.ORIGINAL_SVM_SETTINGS,
    "ours": linear_eval.DEFAULT_SVM_SETTINGS,
    "sklearn_1_9_default": linear_eval.SvmSettings(dual="auto", tol=1e-4),
    "primal_tol1e-3": linear_eval.SvmSettings(dual=False, tol=1e-3),
    "dual_tol1e-3": linear_eval.SvmSettings(dual=True, tol=1e-3),
}


@dataclasses.dataclass(frozen=True)
class Size:
  train_videos: int
  test_videos: int
  clips_per_video: int
  dim: int
  num_classes: int
  class_separation: float
  seed: int = 0


def make_data(size: Size):
  """float32 train [Vtr*c, D], int labels, float32 test [Vte*c, D], test video index, labels."""
  rng = np.random.default_rng(size.seed)
  # Class means `class_separation * sqrt(2)` apart on average, whatever the dim.
  means = (size.class_separation / np.sqrt(size.dim)
           * rng.standard_normal((size.num_classes, size.dim))).astype(np.float32)

  def clips(num_videos):
    labels = np.arange(num_videos) % size.num_classes
    video = np.repeat(np.arange(num_videos), size.clips_per_video)
    offsets = 0.5 * rng.standard_normal((num_videos, size.dim), dtype=np.float32)
    features = rng.standard_normal((len(video), size.dim), dtype=np.float32)
    features += means[labels[video]]
    features += offsets[video]
    return features, video, labels

  train_features, train_video, train_labels = clips(size.train_videos)
  test_features, test_video, test_labels = clips(size.test_videos)
  return train_features, train_labels[train_video], test_features, test_video, test_labels


def run_one(size: Size, settings: linear_eval.SvmSettings, svm_c: float,
            threads: int | None) -> dict:
  """Fits in this (fresh) process; returns time, accuracy and peak memory."""
  train_features, train_labels, test_features, test_video, test_labels = make_data(size)
  rss_before_fit = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
  start = time.perf_counter()
  threads = threads or linear_eval.fit_threads(train_features.size)
  classifier = linear_eval.fit_classifier(train_features, train_labels, size.num_classes,
                                          svm_c, settings, threads=threads)
  fit_seconds = time.perf_counter() - start
  scores, _ = linear_eval.average_by_video(classifier.decision_function(test_features),
                                           test_video, size.test_videos)
  return {"fit_seconds": round(fit_seconds, 1), "threads": threads,
          "test_top1": linear_eval.accuracy(scores, test_labels, 1),
          "test_top5": linear_eval.accuracy(scores, test_labels, 5),
          "rss_before_fit_gb": round(rss_before_fit / 2**20, 2),
          "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--train_videos", type=int, default=9537)
  parser.add_argument("--test_videos", type=int, default=3783)
  parser.add_argument("--clips_per_video", type=int, default=10)
  parser.add_argument("--dim", type=int, default=2048)
  parser.add_argument("--num_classes", type=int, default=101)
  parser.add_argument("--class_separation", type=float, default=3.0,
                      help="Class-mean distance over clip noise; sets the difficulty.")
  parser.add_argument("--svm_c", type=float, default=linear_eval.DEFAULT_SVM_C)
  parser.add_argument("--settings", default=",".join(SETTINGS),
                      help=f"Comma-separated, from {sorted(SETTINGS)}.")
  parser.add_argument("--threads", type=int, default=None,
                      help="classes fitted at once (default: as cores and memory allow)")
  parser.add_argument("--output", default="bench/results/linear_eval.json")
  args = parser.parse_args()
  size = Size(args.train_videos, args.test_videos, args.clips_per_video, args.dim,
              args.num_classes, args.class_separation)
  results = {"size": dataclasses.asdict(size), "svm_c": args.svm_c, "runs": {}}
  for name in args.settings.split(","):
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(1, mp_context=context) as pool:
      run = pool.submit(run_one, size, SETTINGS[name], args.svm_c, args.threads).result()
    results["runs"][name] = run | {"settings": dataclasses.asdict(SETTINGS[name])}
    print(name, json.dumps(run), flush=True)
  output = pathlib.Path(args.output)
  output.parent.mkdir(parents=True, exist_ok=True)
  output.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
  main()
