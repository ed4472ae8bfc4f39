"""Soak: the embedding job's threaded configurations, many runs at once on a loaded machine.

Each run embeds the quick-start demo's dataset (48 videos, 320x240, launch/demo.py)
at the demo's clip size on a cold video cache of its own, with
tests/fake_model.py's handler in place of the model (1,024 floats per clip,
as S3D-G's: the runner's paths are what is soaked, and the model's CPU time
would only stretch each run), and must write every video exactly once
(checked from its shards, and by the job's own reconciliation in run.json).
Configurations:

- `default`: the job's local default (one process, in memory), as the
  baseline of peak memory;
- `local_gpu`: the README's "On one local GPU machine" command, in memory
  with the job's own threads: `--prefetch_videos=8 --batch_size=16`;
- `dataflow_threads`: the Dataflow GPU profile's 8 harness threads sharing one
  SDK process and one model. Dataflow's harness cannot run here, so its data
  path is stood in for by Beam's local threaded runner (SDK harnesses on
  threads, gRPC data channels) with its output flushed by size, as
  Dataflow's harness flushes by default (this script sets
  `worker_handlers.DATA_BUFFER_TIME_LIMIT_MS = 0`; the jobs refuse that runner
  otherwise, docs/reliability.md).
- `beam_threads` (not run unless asked, `--configs=beam_threads`): the same
  threads as Beam 2.77 runs them, with its timed flush: the lossy
  configuration the jobs now refuse, for comparison.

`--runs` runs of each, `--parallel` at once, beside `--burners` busy loops.
One JSON line per run (status, videos written once, peak memory and wall
time of its process tree; CPU time is not told apart between runs at once),
appended to OUT/soak.jsonl, then a summary per configuration of this
invocation's runs.

    .venv/bin/python -m bench.soak_threaded --out /tmp/soak --runs 20
"""

import argparse
import collections
import json
import pathlib
import shutil
import statistics
import subprocess
import sys

from bench.scale_bench import measure
from launch import demo
from mmv_core import checkpoints
from mmv_core.embeddings import schema
from mmv_core.datasets import synthetic
from mmv_core.models.names import S3D

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
FAKE_MODEL = REPO_ROOT / "tests" / "fake_model.py"
EMBEDDING_DIM = 1024
CONFIGS = {
    "default": [],
    "local_gpu": ["--prefetch_videos=8", "--batch_size=16"],  # The README's GPU command.
    "dataflow_threads": ["--batch_size=16"],
    "beam_threads": ["--batch_size=16"],
}
DEFAULT_CONFIGS = ("default", "local_gpu", "dataflow_threads")
DATAFLOW_THREADS = ["--direct_running_mode=multi_threading", "--direct_num_workers=8"]


def job_command(config: str, data: synthetic.SyntheticDataset, checkpoint, run_dir) -> list[str]:
  flags = [
      f"--checkpoint_path={checkpoint}",
      f"--work_dir={run_dir / 'work'}",
      f"--output_dir={run_dir / 'out'}",
      f"--video_zip={data.video_zip}",
      f"--splits_zip={data.splits_zip}",
      f"--jax_cache_dir={run_dir.parent / 'jax_cache'}",
      *demo.CLIP_FLAGS,
      *CONFIGS[config],
  ]
  if config in ("dataflow_threads", "beam_threads"):
    flush = "size" if config == "dataflow_threads" else "timed"
    return [sys.executable, "-m", "bench.soak_threaded", f"--threads_job={flush}", *flags]
  return [sys.executable, str(FAKE_MODEL), f"--dim={EMBEDDING_DIM}", *flags]


def run_threads_job(flush: str, argv: list[str]) -> None:
  """The embedding job on 8 threads of Beam's local runner, flushing by `size` or `timed`."""
  from apache_beam.runners.portability.fn_api_runner import worker_handlers  # pylint: disable=import-outside-toplevel

  from pipelines import embed  # pylint: disable=import-outside-toplevel

  sys.path.insert(0, str(FAKE_MODEL.parent))
  import fake_model  # pylint: disable=import-outside-toplevel

  if flush == "size":
    worker_handlers.DATA_BUFFER_TIME_LIMIT_MS = 0
  config, beam_args = embed.parse_args(argv)
  handler = fake_model.PixelStatsHandler(dim=EMBEDDING_DIM)
  embed.start(config, [*beam_args, *DATAFLOW_THREADS], handler).wait_until_finish()


def written_once(output_dir: pathlib.Path, data: synthetic.SyntheticDataset) -> int:
  """How many videos have every clip written exactly once (the shards read back)."""
  copies = collections.Counter(
      (clip[schema.VIDEO_ID], clip[schema.CLIP_TYPE], clip[schema.CLIP_INDEX])
      for _, record in schema.embedding_records(str(output_dir))
      for clip in [schema.parse_example(record, include_floats=False)]
  )
  clips = {"train": 10, "test": 10}  # demo.CLIP_FLAGS
  return sum(
      all(copies[(v.video_id, t, i)] == 1 for t, n in clips.items() for i in range(n))
      for v in data.videos
  )


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
  parser.add_argument("--out", type=pathlib.Path, default=pathlib.Path("/tmp/mmv_soak"))
  parser.add_argument("--configs", default=",".join(DEFAULT_CONFIGS), help=", ".join(CONFIGS))
  parser.add_argument("--runs", type=int, default=20)
  parser.add_argument("--parallel", type=int, default=3)
  parser.add_argument("--burners", type=int, default=3)
  parser.add_argument(
      "--limit_mb", type=int, default=4000, help="a run whose tree holds more is killed"
  )
  parser.add_argument("--threads_job", choices=("size", "timed"), help=argparse.SUPPRESS)
  args, job_argv = parser.parse_known_args()
  if args.threads_job:
    run_threads_job(args.threads_job, job_argv)
    return
  args.out.mkdir(parents=True, exist_ok=True)
  data = synthetic.write_dataset(str(args.out / "data"), **demo.DATASET)
  checkpoint = args.out / "mmv_s3d.pkl"
  if not checkpoint.exists():
    checkpoints.write_random_checkpoint(checkpoint, *checkpoints.checkpoint_shapes(S3D), seed=0)
  results = args.out / "soak.jsonl"
  records = []
  burners = [
      subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(args.burners)
  ]
  try:
    for config in args.configs.split(","):
      for first in range(0, args.runs, args.parallel):
        batch = range(first, min(args.runs, first + args.parallel))
        run_dirs = [args.out / f"{config}-{i:02d}" for i in batch]
        for run_dir in run_dirs:
          shutil.rmtree(run_dir, ignore_errors=True)
          run_dir.mkdir()
        measured = _measure_all(
            [job_command(config, data, checkpoint, d) for d in run_dirs],
            [d / "job.log" for d in run_dirs],
            args.limit_mb,
        )
        for run_dir, m in zip(run_dirs, measured):
          out = run_dir / "out"
          finished = m["status"] == 0 and (out / "run.json").exists()
          counts = json.loads((out / "run.json").read_text())["counts"] if finished else {}
          del m["cpu_s"]  # The children's CPU time, of all the runs at once.
          record = {
              "config": config,
              "run": run_dir.name,
              **m,
              "videos": len(data.videos),
              "written_once": written_once(out, data) if finished else 0,
              "job_counts": counts,
          }
          with open(results, "a") as f:
            f.write(json.dumps(record, sort_keys=True) + "\n")
          print(json.dumps(record, sort_keys=True), flush=True)
          records.append(record)
          shutil.rmtree(run_dir / "work")
  finally:
    for burner in burners:
      burner.kill()
  print(summary(records))


def _measure_all(commands: list[list[str]], logs: list[pathlib.Path], limit_mb: int) -> list[dict]:
  """`measure` of each command, all at once."""
  import concurrent.futures  # pylint: disable=import-outside-toplevel

  with concurrent.futures.ThreadPoolExecutor(len(commands)) as pool:
    return list(pool.map(measure, commands, logs, [limit_mb] * len(commands)))


def summary(records: list[dict]) -> str:
  """Per configuration: runs, runs that wrote every video once, peak memory min/median/max."""
  by_config = collections.defaultdict(list)
  for record in records:
    by_config[record["config"]].append(record)
  lines = [
      "| configuration | runs | every video written once | peak memory MB (min / median / max) |",
      "|---|---|---|---|",
  ]
  for config, records in by_config.items():
    peaks = [r["peak_memory_mb"] for r in records]
    good = sum(r["status"] == 0 and r["written_once"] == r["videos"] for r in records)
    lines.append(
        f"| {config} | {len(records)} | {good} | {min(peaks)} / "
        f"{statistics.median(peaks):.0f} / {max(peaks)} |"
    )
  return "\n".join(lines)


if __name__ == "__main__":
  main()
