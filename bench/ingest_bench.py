"""Ingestion throughput on synthetic UCF101: Beam Ingest (1 and 2 workers, threads) vs serial.

The serial baseline reads the whole video ZIP, then extracts and re-encodes
one video at a time and writes one cache shard, as a script without Beam
would. `Ingest` runs with one worker, with a worker process per core (as
`python -m pipelines.ingest` does), and in one process re-encoding one
video per core at once in threads (as the embedding job's ingestion does).
All read the local ZIP (the HTTP and GCS paths are tested, not timed).
Throughput is videos/s and MB/s of source video (uncompressed AVI
bytes). Every run starts from an empty work directory.

    python bench/ingest_bench.py --classes 3 --videos_per_class 4 --duration_s 3

Writes bench/results/ingest_bench.json.
"""

import argparse
import io
import json
import os
import tempfile
import time
import zipfile

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions

from mmv_core.video import encode
from mmv_core.video import sources
from mmv_core.datasets import synthetic
from mmv_core.datasets import ucf101
from mmv_core.video import video_cache
from pipelines import ingest

_RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "ingest_bench.json")


def serial_baseline(dataset: synthetic.SyntheticDataset, work_dir: str) -> int:
  """Whole-ZIP download, then ffmpeg one video at a time; returns videos cached."""
  archive = zipfile.ZipFile(io.BytesIO(sources.read_bytes(dataset.video_zip)))
  videos = []
  for record in ucf101.load_split_lists(dataset.splits_zip).videos:
    info = archive.getinfo(record.member_name)
    frames = encode.encode_jpeg_frames(archive.read(info), info.filename)
    videos.append(
        video_cache.CachedVideo(
            record.video_id, record.label, record.label_name, tuple(frames), info.CRC
        )
    )
  video_cache.write_shard(work_dir, videos)
  return len(videos)


def beam_ingest(
    dataset: synthetic.SyntheticDataset, work_dir: str, workers: int, threads: int = 1
) -> int:
  """Runs `Ingest` on the FnApiRunner, `threads` videos at once per worker; returns videos cached."""
  args = ["--runner=FnApiRunner", f"--direct_num_workers={workers}"]
  if workers > 1:
    args.append("--direct_running_mode=multi_processing")
  pipeline = beam.Pipeline(options=PipelineOptions(args))
  _ = pipeline | ingest.Ingest(
      dataset.video_zip,
      dataset.splits_zip,
      work_dir,
      expected_split_counts=None,
      read_cached_videos=False,
      videos_per_shard=8,
      parallelism=threads,
  )
  result = pipeline.run()
  result.wait_until_finish()
  return ingest.counters(result).get("videos_cached", 0)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
  parser.add_argument("--classes", type=int, default=3)
  parser.add_argument("--videos_per_class", type=int, default=4)
  parser.add_argument("--duration_s", type=float, default=3.0)
  parser.add_argument("--width", type=int, default=320)
  parser.add_argument("--height", type=int, default=240)
  args = parser.parse_args()
  with tempfile.TemporaryDirectory(prefix="mmv_ingest_bench_") as tmp:
    dataset = synthetic.write_dataset(
        os.path.join(tmp, "data"),
        num_classes=args.classes,
        videos_per_class=args.videos_per_class,
        width=args.width,
        height=args.height,
        duration_s=args.duration_s,
    )
    with zipfile.ZipFile(dataset.video_zip) as archive:
      source_mb = sum(i.file_size for i in archive.infolist()) / 1e6
    runs = {
        "serial baseline": lambda d: serial_baseline(dataset, d),
        "beam, 1 worker": lambda d: beam_ingest(dataset, d, 1),
        "beam, 2 workers": lambda d: beam_ingest(dataset, d, 2),
        "beam, 1 worker, 2 threads": lambda d: beam_ingest(dataset, d, 1, threads=2),
    }
    results = []
    for name, run in runs.items():
      start = time.perf_counter()
      cached = run(os.path.join(tmp, name.replace(" ", "_").replace(",", "")))
      seconds = time.perf_counter() - start
      results.append(
          {
              "run": name,
              "videos": cached,
              "seconds": round(seconds, 2),
              "videos_per_s": round(cached / seconds, 2),
              "source_mb_per_s": round(source_mb / seconds, 2),
          }
      )

  report = {
      "setup": {
          **vars(args),
          "videos": len(dataset.videos),
          "source_mb": round(source_mb, 2),
          "cpus": os.cpu_count(),
      },
      "results": results,
  }
  os.makedirs(os.path.dirname(_RESULTS), exist_ok=True)
  with open(_RESULTS, "w") as f:
    json.dump(report, f, indent=2)
  print(f"{'run':<27}{'videos':>7}{'s':>8}{'videos/s':>10}{'MB/s':>8}")
  for r in results:
    print(
        f"{r['run']:<27}{r['videos']:>7}{r['seconds']:>8}{r['videos_per_s']:>10}"
        f"{r['source_mb_per_s']:>8}"
    )


if __name__ == "__main__":
  main()
