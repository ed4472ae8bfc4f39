"""The quick-start demo: the whole system on an embedded default, offline.

    bash launch/demo_local.sh            # or: python -m launch.demo [--out DIR]
    python -m launch.demo --dataset=hmdb51   # the same on an HMDB51-layout folder

1. writes a small synthetic dataset: UCF101 in the real archives' layout, or
   HMDB51's extracted `<class>/<video>.avi` tree and split folder, with the
   awkward file names real HMDB51 has (MPEG-4 AVIs at 320x240; each class a
   shape moving its own way);
2. writes a random MMV S3D-G checkpoint in the released pickle format;
3. runs `pipelines.embed` (ingestion, re-encoding, clip sampling, JAX
   embeddings) on the local runner, both cores, with small clips;
4. runs `pipelines.linear_eval` on every split of the dataset (the three of
   each) with every protocol (linear probe, kNN, retrieval, few-shot), which
   prints the metrics;
5. prints where everything went.
"""

import argparse
import logging
import pathlib
import shutil
import time

from mmv_core import checkpoints
from mmv_core.datasets import synthetic
from mmv_core.datasets import synthetic_hmdb51
from mmv_core.models.names import S3D

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO_ROOT / "demo_output"
# Enough videos for three splits (three groups per class), small enough for minutes on 2 cores.
DATASET = dict(
    num_classes=8,
    videos_per_class=6,
    clips_per_group=2,
    width=320,
    height=240,
    fps=25.0,
    duration_s=3.0,
    include_handstand_pushups=True,
)
# The same classes, videos and sizes in HMDB51's layout (which has no groups).
HMDB51_DATASET = {
    name: DATASET[name]
    for name in ("num_classes", "videos_per_class", "width", "height", "fps", "duration_s")
}
# The protocol's sampling with small clips: 8 frames at 64x64 instead of 32 at 224x224.
CLIP_FLAGS = [
    "--num_frames=8",
    "--stride=2",
    "--min_resize=64",
    "--crop_size=64",
    "--num_train_clips=10",
    "--num_test_windows=10",
    "--batch_size=8",
]

_WHY_MODEST = """\
The checkpoint holds random weights, so the features are random projections of
the clips: a linear classifier finds some of the classes' motion in them
(chance is {chance:.0%}), far from what trained weights give. For the published
numbers, run the same two jobs on a released checkpoint (README: "Reproducing
the published numbers")."""


def _stage(message: str) -> None:
  print(f"[demo {time.strftime('%H:%M:%S')}] {message}", flush=True)


def write_dataset(name: str, data_dir: pathlib.Path) -> list[str]:
  """Writes the synthetic dataset `name`; returns the embedding job's dataset flags."""
  if name == "hmdb51":
    hmdb = synthetic_hmdb51.write_dataset(str(data_dir), **HMDB51_DATASET)
    return [
        "--dataset=hmdb51",
        f"--splits_dir={hmdb.splits_dir}",
        f"--video_root={hmdb.video_root}",
    ]
  ucf = synthetic.write_dataset(str(data_dir), **DATASET)
  return [f"--video_zip={ucf.video_zip}", f"--splits_zip={ucf.splits_zip}"]


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(
      allow_abbrev=False, prog="bash launch/demo_local.sh", description=__doc__.split("\n", 1)[0]
  )
  parser.add_argument("--out", default=str(DEFAULT_OUT), help="where everything goes")
  parser.add_argument(
      "--dataset",
      choices=("ucf101", "hmdb51"),
      default="ucf101",
      help="the synthetic dataset's layout",
  )
  args = parser.parse_args(argv)
  # Log lines relayed from every worker would bury the demo's progress lines
  # (which workers print themselves); errors still show.
  logging.basicConfig(level=logging.ERROR, format="%(message)s")
  out = pathlib.Path(args.out)
  # Each dataset's videos and results apart; the video cache and checkpoint shared.
  dataset_dir, work_dir, checkpoint = out / args.dataset, out / "work", out / "mmv_s3d.pkl"
  data_dir = dataset_dir / "videos"
  embeddings_dir, eval_dir = dataset_dir / "embed", dataset_dir / "linear_eval"
  started = time.monotonic()
  # A new run replaces the demo's results; the video cache and checkpoint stay,
  # so a second run shows that nothing is fetched or re-encoded again.
  for previous in (embeddings_dir, eval_dir):
    shutil.rmtree(previous, ignore_errors=True)

  _stage(
      f"writing a synthetic {args.dataset.upper()} ({DATASET['num_classes']} classes x "
      f"{DATASET['videos_per_class']} videos, 320x240 AVI) to {data_dir}"
  )
  dataset_flags = write_dataset(args.dataset, data_dir)
  if not checkpoint.exists():
    _stage(f"writing a random S3D-G checkpoint in the released format to {checkpoint}")
    checkpoints.write_random_checkpoint(checkpoint, *checkpoints.checkpoint_shapes(S3D), seed=0)

  from mmv_core.evaluation import linear_eval as linear_eval_lib  # pylint: disable=import-outside-toplevel
  from pipelines import embed, linear_eval  # pylint: disable=import-outside-toplevel

  _stage("running pipelines.embed on the local runner (fetch, re-encode, sample, embed)")
  # It ends by printing what it embedded and where.
  embed.main(
      [
          f"--checkpoint_path={checkpoint}",
          f"--work_dir={work_dir}",
          f"--output_dir={embeddings_dir}",
          *dataset_flags,
          *CLIP_FLAGS,
      ]
  )

  _stage("running pipelines.linear_eval on splits 1, 2, 3 (linear, kNN, retrieval, few-shot)")
  # No dataset flags: the job evaluates every split of the dataset that the
  # embeddings' run.json records. It ends by printing the metrics tables.
  linear_eval.main(
      [
          f"--embeddings_dir={embeddings_dir}",
          f"--output_dir={eval_dir}",
          f"--protocols={','.join(linear_eval_lib.PROTOCOLS)}",
      ]
  )

  print()
  print(_WHY_MODEST.format(chance=1 / DATASET["num_classes"]))
  print()
  print(f"synthetic {args.dataset.upper()}:   {data_dir}")
  print(f"video cache:        {work_dir}")
  print(f"embeddings:         {embeddings_dir}/embeddings/*.tfrecord, run.json, failures/")
  print(f"linear evaluation:  {eval_dir}/metrics.json, report.md")
  print(f"done in {time.monotonic() - started:.0f} s")


if __name__ == "__main__":
  main()
