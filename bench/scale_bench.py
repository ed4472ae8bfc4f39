"""The full dataset on one machine: both jobs at growing sizes, up to UCF101's 13,320 videos.

For each size N, a synthetic UCF101 of N videos in the real archives' layout
and structure (101 classes of 25 groups, the official lists' test groups;
`mmv_core.datasets.synthetic.plan_ucf101_videos`): 320x240 MPEG-4 AVIs of
`--duration_s`, so that re-encoded frames weigh what real ones do (about
1.4 MB of JPEG per 4 s video). `--renders_per_class` rendered videos per class
are reused for its other members, which keeps generation to minutes; the
archives are stored, not deflated, and kept in OUT/data_nN for later runs.

Then, for each size, each job as its own process, as a user runs it:

- `fake`: the embedding job with tests/fake_model.py's handler, 1,024 floats
  per clip (a backbone's `vid_repr`), on a cold video cache: ingestion
  (fetch, ffmpeg), then reading, decoding and cutting every clip;
- `fake4096`: the same on the now warm cache with 4,096 floats and
  `--joint_embeddings` (TSM-ResNet-50x2's sizes);
- `s3d`: the embedding job with the real S3D-G (a random checkpoint in the
  released format) at 4x32x32 clips, on the warm cache;
- `eval`: `pipelines.linear_eval` on the `s3d` embeddings (splits 1-3).

Each run records wall seconds, CPU seconds of its whole process tree
(ffmpeg included), the peak memory of the tree (the sum of its processes'
proportional set sizes, sampled every 0.2 s; `tree_memory`), output bytes, and per-video and per-clip costs, one JSON line each
in OUT/runs.jsonl, as it finishes; `--report` prints the Markdown table of
that file. Every run's job must exit 0 and account for every video.

    .venv/bin/python bench/scale_bench.py --out bench/results/scale --sizes 1000,4000,13320
    .venv/bin/python bench/scale_bench.py --out bench/results/scale --report
"""

import argparse
import json
import os
import pathlib
import resource
import shutil
import subprocess
import sys
import threading
import time
import zipfile

import numpy as np
import psutil

from mmv_core import checkpoints
from mmv_core.datasets import synthetic

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
NUM_CLASSES = 101
CLIP_FLAGS = [
    "--num_frames=4",
    "--stride=2",
    "--min_resize=32",
    "--crop_size=32",
    "--batch_size=32",
]
FAKE_JOB = [sys.executable, str(REPO_ROOT / "tests" / "fake_model.py")]
EMBED_JOB = [sys.executable, "-m", "pipelines.embed"]
EVAL_JOB = [sys.executable, "-m", "pipelines.linear_eval"]
RUNS = ("fake", "fake4096", "s3d", "eval")


def render_videos(renders_per_class: int, duration_s: float) -> dict[tuple[int, int], bytes]:
  """(class, k) -> the k-th rendered AVI of the class, for every class."""
  rng = np.random.default_rng(0)
  return {
      (label, k): synthetic.video_bytes(
          label, NUM_CLASSES, rng, width=320, height=240, fps=25.0, duration_s=duration_s
      )
      for label in range(NUM_CLASSES)
      for k in range(renders_per_class)
  }


def write_dataset(data_dir: pathlib.Path, num_videos: int, renders: dict) -> dict:
  """The archive and split lists of `num_videos` videos (written once; kept across runs)."""
  video_zip = data_dir / synthetic.VIDEO_ZIP_NAME
  splits_zip = data_dir / synthetic.SPLITS_ZIP_NAME
  if not (video_zip.exists() and splits_zip.exists()):
    data_dir.mkdir(parents=True, exist_ok=True)
    names = synthetic.class_names(NUM_CLASSES, include_handstand_pushups=True)
    videos = synthetic.plan_ucf101_videos(names, num_videos)
    per_class = len(renders) // NUM_CLASSES
    members = {v.member_name: renders[(v.label, i % per_class)] for i, v in enumerate(videos)}
    synthetic.write_video_zip(str(video_zip) + ".partial", members, zipfile.ZIP_STORED)
    os.rename(str(video_zip) + ".partial", video_zip)
    splits_zip.write_bytes(synthetic.splits_zip_bytes(names, videos))
  return {"video_zip": str(video_zip), "splits_zip": str(splits_zip)}


def tree_memory(process: psutil.Process) -> int:
  """Bytes of memory the process and its children hold: the sum of their proportional set
  sizes (PSS), which counts a page shared by several of them once.

  A child caught between (v)fork and exec (its command line still its
  parent's) is left out: it runs in its parent's memory, which its sizes
  would count a second time.
  """
  total = 0
  for p in [process, *process.children(recursive=True)]:
    try:
      if p is not process and p.cmdline() == p.parent().cmdline():
        continue
      total += p.memory_full_info().pss
    except psutil.Error:  # Ended while we looked.
      pass
  return total


def measure(command: list[str], log_path: pathlib.Path, limit_mb: int | None = None) -> dict:
  """Runs `command`, its output to `log_path`; wall s, CPU s and peak memory of its process tree.

  A tree over `limit_mb` is killed (status -9), so that a runaway run cannot
  take the machine.
  """
  before = resource.getrusage(resource.RUSAGE_CHILDREN)
  started = time.monotonic()
  with open(log_path, "w") as log:
    job = subprocess.Popen(command, cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT)
    peak = 0
    process = psutil.Process(job.pid)
    stop = threading.Event()

    def sample():
      nonlocal peak
      while not stop.wait(0.2):
        peak = max(peak, tree_memory(process))
        if limit_mb and peak > limit_mb * 2**20:
          for p in [*process.children(recursive=True), process]:
            try:
              p.kill()
            except psutil.NoSuchProcess:
              pass
          return

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    status = job.wait()
    stop.set()
    sampler.join()
  after = resource.getrusage(resource.RUSAGE_CHILDREN)
  cpu_s = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
  return {
      "status": status,
      "wall_s": round(time.monotonic() - started, 1),
      "cpu_s": round(cpu_s, 1),
      "peak_memory_mb": round(peak / 2**20),
  }


def _bytes_under(path: pathlib.Path) -> int:
  return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def run_size(args, data: dict, checkpoint: pathlib.Path, size: int, results: pathlib.Path) -> None:
  """Each of `args.runs` on the dataset of `size` videos; appends a JSON line per run to `results`."""
  root = args.out / f"n{size}"
  shutil.rmtree(root, ignore_errors=True)
  root.mkdir(parents=True)
  work = root / "work"
  common = [
      f"--work_dir={work}",
      f"--video_zip={data['video_zip']}",
      f"--splits_zip={data['splits_zip']}",
      f"--checkpoint_path={checkpoint}",
      f"--jax_cache_dir={args.out / 'jax_cache'}",
      *CLIP_FLAGS,
  ]
  commands = {
      "fake": [*FAKE_JOB, "--dim=1024", f"--output_dir={root / 'fake'}", *common],
      "fake4096": [
          *FAKE_JOB,
          "--dim=4096",
          "--joint_embeddings",
          f"--output_dir={root / 'fake4096'}",
          *common,
      ],
      "s3d": [*EMBED_JOB, f"--output_dir={root / 's3d'}", *common],
      "eval": [
          *EVAL_JOB,
          f"--embeddings_dir={root / 's3d'}",
          f"--output_dir={root / 'eval'}",
      ],
  }
  for name in args.runs:
    output = root / name
    measured = measure(commands[name], root / f"{name}.log", args.limit_mb)
    if measured["status"] != 0:
      raise SystemExit(
          f"{name} at {size} videos exited {measured['status']} ({measured}): see "
          f"{root / name}.log"
      )
    record = {"run": name, "videos": size, **measured, "output_bytes": _bytes_under(output)}
    if name != "eval":
      counts = json.loads((output / "run.json").read_text())["counts"]
      clips = counts["clips_written_train"] + counts["clips_written_test"]
      record.update(
          videos_written=counts["videos_written"],
          videos_failed=counts["videos_failed"],
          videos_unaccounted=counts["videos_unaccounted"],
          clips=clips,
          cpu_ms_per_video=round(1000 * measured["cpu_s"] / size, 1),
          cpu_ms_per_clip=round(1000 * measured["cpu_s"] / max(1, clips), 2),
      )
    else:
      metrics = json.loads((output / "metrics.json").read_text())
      record["mean_top1"] = metrics["mean"]["test_top1"]
    with open(results, "a") as f:
      f.write(json.dumps(record, sort_keys=True) + "\n")
    print(json.dumps(record, sort_keys=True), flush=True)
    if name.startswith("fake"):  # Their embeddings are measured; the disk is better spent.
      shutil.rmtree(output / "embeddings")
  shutil.rmtree(work)


def report(results: pathlib.Path) -> str:
  """The Markdown table of `results` (one JSON line per run)."""
  rows = [json.loads(line) for line in results.read_text().splitlines() if line]
  lines = [
      "| run | videos | clips | wall s | CPU s | CPU ms / video | peak memory (MB) | output MB |",
      "|---|---|---|---|---|---|---|---|",
  ]
  for r in rows:
    clips = f"{r['clips']:,}" if "clips" in r else ""
    lines.append(
        f"| {r['run']} | {r['videos']:,} | {clips} | {r['wall_s']:,.0f} | "
        f"{r['cpu_s']:,.0f} | {r.get('cpu_ms_per_video', round(1000 * r['cpu_s'] / r['videos'], 1))}"
        f" | {r['peak_memory_mb']:,} | {r['output_bytes'] / 2**20:,.0f} |"
    )
  return "\n".join(lines)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
  parser.add_argument("--out", type=pathlib.Path, default=REPO_ROOT / "bench/results/scale")
  parser.add_argument("--sizes", default="1000,4000,13320")
  parser.add_argument("--runs", default=",".join(RUNS), help=f"among {', '.join(RUNS)}")
  parser.add_argument("--renders_per_class", type=int, default=2)
  parser.add_argument("--duration_s", type=float, default=4.0)
  parser.add_argument(
      "--limit_mb", type=int, default=16_000, help="kill a run whose process tree passes this"
  )
  parser.add_argument("--report", action="store_true", help="print the table of earlier runs")
  args = parser.parse_args()
  results = args.out / "runs.jsonl"
  if args.report:
    print(report(results))
    return
  args.runs = [r for r in args.runs.split(",") if r]
  args.out.mkdir(parents=True, exist_ok=True)
  renders = render_videos(args.renders_per_class, args.duration_s)
  checkpoint = args.out / "mmv_s3d.pkl"
  if not checkpoint.exists():
    checkpoints.write_random_checkpoint(checkpoint, *checkpoints.checkpoint_shapes("s3d"), seed=0)
  for size in (int(s) for s in args.sizes.split(",")):
    data = write_dataset(args.out / f"data_n{size}", size, renders)
    run_size(args, data, checkpoint, size, results)
  print(report(results))


if __name__ == "__main__":
  main()
