"""Linear evaluation: the job from its command line against the original classifier.

Writes an embedding job's output of synthetic, class-structured features
(101 classes; each clip is its class's mean, plus an offset shared by the
clips of its video, plus a shared low-rank part, as network features are
correlated, plus noise) and the split lists, in the real layouts. Then, on
the same features:

  job       `python -m pipelines.linear_eval` in a subprocess, wall time from
            the command to the metrics (start-up, reading the TFRecords,
            standardising, fitting, scoring, writing the report), peak RSS.
  original  the original evaluation's classifier, `StandardScaler` +
            `LinearSVC(C=0.001)` with liblinear's dual solver, one-vs-rest in
            one process, on split 1's features already in memory: fit and
            scoring time, peak RSS (a fresh process).

  .venv/bin/python bench/linear_eval_bench.py                  # 20k x 1,024, split 1, both
  .venv/bin/python bench/linear_eval_bench.py --videos_per_class 142 --dim 2048 \
      --splits 1,2,3 --svm_c 0.0001,0.0003,0.001 --runs job  # full size, 3 splits, sweep
  .venv/bin/python bench/linear_eval_bench.py --videos_per_class 142 --dim 2048 \
      --splits 1,2,3 --runs neighbours_job  # kNN and retrieval at full size

Videos are named as the synthetic UCF101 names them, one clip per group, so
in split N the groups g with (g - 1) % 3 == N - 1 are test videos: 30 videos
per class give 20 training and 10 test videos per class in every split
(20,200 training clips); 142 give 94 and 48 (94,940 clips, UCF101 split 1
has 95,370).
"""

import argparse
import json
import os
import pathlib
import resource
import shutil
import subprocess
import sys
import time

import numpy as np

from mmv_core.embeddings import schema
from mmv_core.evaluation import linear_eval
from mmv_core.datasets import synthetic
from mmv_core.embeddings import tfrecord
from mmv_core.datasets import ucf101

NUM_CLASSES = 101
CLIPS_PER_VIDEO = 10
_SHARED_RANK = 16
_NUM_SHARDS = 16
REPO = pathlib.Path(__file__).resolve().parents[1]


def write_data(
    out: pathlib.Path, videos_per_class: int, dim: int, class_separation: float, seed: int = 0
) -> tuple[pathlib.Path, pathlib.Path]:
  """(embeddings dir, split-list zip), written once per size."""
  embeddings, splits_zip = out / "embeddings", out / "splits.zip"
  if (embeddings / schema.RUN_CONFIG_FILE).exists():
    return embeddings, splits_zip
  rng = np.random.default_rng(seed)
  names = synthetic.class_names(NUM_CLASSES)
  videos = synthetic.plan_videos(names, videos_per_class, clips_per_group=1)
  out.mkdir(parents=True, exist_ok=True)
  splits_zip.write_bytes(synthetic.splits_zip_bytes(names, videos))
  (embeddings / schema.SHARDS_DIR).mkdir(parents=True, exist_ok=True)
  means = class_separation / np.sqrt(dim) * rng.standard_normal((NUM_CLASSES, dim))
  basis = rng.standard_normal((_SHARED_RANK, dim)) / np.sqrt(_SHARED_RANK)
  shards = [
      open(embeddings / schema.SHARDS_DIR / f"part-{i:05d}{schema.SHARD_SUFFIX}", "wb")
      for i in range(_NUM_SHARDS)
  ]
  for number, video in enumerate(videos):
    offset = 0.5 * rng.standard_normal(dim)
    for clip_type in schema.CLIP_TYPES:
      clips = (
          means[video.label]
          + offset
          + rng.standard_normal((CLIPS_PER_VIDEO, dim))
          + rng.standard_normal((CLIPS_PER_VIDEO, _SHARED_RANK)) @ basis
      )
      for index, embedding in enumerate(clips.astype(np.float32)):
        example = schema.make_example(
            video_id=video.video_id,
            label=video.label,
            label_name=video.label_name,
            clip_type=clip_type,
            clip_index=index,
            embedding=embedding,
        )
        shards[number % _NUM_SHARDS].write(tfrecord.encode_record(example.SerializeToString()))
  for shard in shards:
    shard.close()
  (embeddings / schema.RUN_CONFIG_FILE).write_text(
      json.dumps(
          {schema.NUM_TRAIN_CLIPS: CLIPS_PER_VIDEO, schema.NUM_TEST_WINDOWS: CLIPS_PER_VIDEO}
      )
  )
  return embeddings, splits_zip


def run_job(
    embeddings: pathlib.Path,
    splits_zip: pathlib.Path,
    out: pathlib.Path,
    splits: str,
    svm_c: str,
    solver: str,
    protocols: str = linear_eval.LINEAR,
) -> dict:
  """The job as a user runs it; wall time from the command to the metrics."""
  shutil.rmtree(out, ignore_errors=True)  # The job refuses a directory that holds metrics.
  start = time.perf_counter()
  subprocess.run(
      [
          sys.executable,
          "-m",
          "pipelines.linear_eval",
          f"--embeddings_dir={embeddings}",
          f"--output_dir={out}",
          f"--splits_zip={splits_zip}",
          f"--splits={splits}",
          f"--svm_c={svm_c}",
          f"--solver={solver}",
          f"--protocols={protocols}",
      ],
      cwd=REPO,
      check=True,
      capture_output=True,
  )
  wall = time.perf_counter() - start
  metrics = json.loads((out / "metrics.json").read_text())
  per_split = {
      s: {
          "test_top1": m.get("test_top1"),
          linear_eval.KNN_TOP1: m.get(linear_eval.KNN_TOP1),
          linear_eval.RETRIEVAL_RECALL: m.get(linear_eval.RETRIEVAL_RECALL),
          "svm_c": m.get("svm_c"),
          "num_train_clips": m["num_train_clips"],
          "seconds": m["seconds"],
          "max_newton_iterations": max(
              (n for n in (m.get("convergence") or {}).get("iterations", []) if n), default=None
          ),
      }
      for s, m in metrics["splits"].items()
  }
  return {
      "wall_seconds": round(wall, 1),
      "mean_test_top1": metrics["mean"].get("test_top1"),
      "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20, 2),
      "splits": per_split,
  }


def run_original(embeddings: pathlib.Path, splits_zip: pathlib.Path, svm_c: float) -> dict:
  """Split 1 by the original classifier, features in memory (run in a fresh process)."""
  from sklearn import preprocessing, svm  # pylint: disable=import-outside-toplevel

  layout = linear_eval.SplitLayout.from_lists(
      ucf101.load_split_lists(str(splits_zip)),
      1,
      num_train_clips=CLIPS_PER_VIDEO,
      num_test_windows=CLIPS_PER_VIDEO,
  )
  features, _ = linear_eval.collect_split_features(
      schema.embedding_records(str(embeddings)), layout
  )
  start, start_cpu = time.perf_counter(), time.process_time()
  scaler = preprocessing.StandardScaler().fit(features.train_features)
  model = svm.LinearSVC(C=svm_c, dual=True).fit(
      scaler.transform(features.train_features), features.train_labels
  )
  fit_seconds = time.perf_counter() - start
  # liblinear runs on one thread: its CPU time is its time on an idle core.
  fit_cpu_seconds = time.process_time() - start_cpu
  scores, _ = linear_eval.average_by_video(
      model.decision_function(scaler.transform(features.test_features)),
      features.test_video,
      len(layout.test_videos),
  )
  return {
      "fit_and_score_seconds": round(time.perf_counter() - start, 1),
      "fit_seconds": round(fit_seconds, 1),
      "fit_cpu_seconds": round(fit_cpu_seconds, 1),
      "test_top1": linear_eval.accuracy(scores, features.test_labels, 1),
      "num_train_clips": len(features.train_labels),
      "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
  }


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--videos_per_class", type=int, default=30)
  parser.add_argument("--dim", type=int, default=1024)
  parser.add_argument(
      "--class_separation",
      type=float,
      default=3.0,
      help="Class-mean distance over clip noise; sets the difficulty.",
  )
  parser.add_argument("--splits", default="1")
  parser.add_argument("--svm_c", default="0.001", help="The job's --svm_c (a list: a sweep).")
  parser.add_argument(
      "--runs",
      default="job,original",
      help="Comma-separated, from job, liblinear_job, neighbours_job (kNN and retrieval "
      "only), original.",
  )
  parser.add_argument("--data_dir", default="bench/results/linear_eval_data")
  parser.add_argument("--output", default="bench/results/linear_eval.json")
  parser.add_argument("--original_in_process", action="store_true", help=argparse.SUPPRESS)
  args = parser.parse_args()
  data = pathlib.Path(args.data_dir) / f"v{args.videos_per_class}_d{args.dim}"
  embeddings, splits_zip = write_data(data, args.videos_per_class, args.dim, args.class_separation)
  if args.original_in_process:
    print(json.dumps(run_original(embeddings, splits_zip, linear_eval.DEFAULT_SVM_C)))
    return
  results = {
      "videos_per_class": args.videos_per_class,
      "dim": args.dim,
      "splits": args.splits,
      "svm_c": args.svm_c,
      "cpus": os.cpu_count(),
      "load_average": os.getloadavg(),
      "runs": {},
  }
  for name in args.runs.split(","):
    if name == "original":
      line = subprocess.run(
          [sys.executable, *sys.argv, "--original_in_process"],
          check=True,
          capture_output=True,
          text=True,
      ).stdout.splitlines()[-1]
      run = json.loads(line)
    else:
      solver = (
          linear_eval.SOLVER_LIBLINEAR if name == "liblinear_job" else linear_eval.SOLVER_NEWTON
      )
      protocols = (
          f"{linear_eval.KNN},{linear_eval.RETRIEVAL}"
          if name == "neighbours_job"
          else linear_eval.LINEAR
      )
      run = run_job(
          embeddings, splits_zip, data / f"out_{name}", args.splits, args.svm_c, solver, protocols
      )
    results["runs"][name] = run
    print(name, json.dumps(run), flush=True)
  output = pathlib.Path(args.output)
  output.parent.mkdir(parents=True, exist_ok=True)
  output.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
  main()
