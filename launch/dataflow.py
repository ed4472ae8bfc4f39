"""Launches the MMV jobs on Google Cloud Dataflow.

    # Embeddings, CPU workers for ingestion and L4 GPU workers for the model:
    python -m launch.dataflow embed --accelerator gpu --project P --region us-central1 \
        --bucket gs://B --image REGION-docker.pkg.dev/P/mmv/worker:gpu \
        --checkpoint_path gs://B/checkpoints/mmv_s3d.pkl
    # The same on single-host TPU v5e workers (image built with JAX_EXTRA=tpu):
    python -m launch.dataflow embed --accelerator tpu ... --image ...:tpu
    # Linear evaluation of those embeddings (CPU workers):
    python -m launch.dataflow linear_eval --project P --region us-central1 \
        --bucket gs://B --image ...:cpu --backbone s3d

Add `--dry_run` to build the job offline without submitting it (nothing is
read from the cloud); any further flags go to the job itself (e.g.
`--max_num_workers=50`, `--classes=Archery`). Work, output and temp paths
default to folders of `--bucket`.
"""

import argparse
import dataclasses
import pathlib
import sys
from collections.abc import Sequence

from mmv_core import checkpoints
from mmv_core.models import mmv

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]


@dataclasses.dataclass(frozen=True)
class AcceleratorProfile:
  """Where the embedding step runs, as Dataflow wants it said."""
  worker_options: tuple[str, ...]
  job_flags: tuple[str, ...] = ()


# Right fitting (GPU): only the embedding step asks for a GPU through a
# resource hint; ingestion runs on the default CPU workers. A GPU VM runs one
# SDK process whose harness threads cut clips and share one in-process model
# (bench/README.md, "GPU workers"): sending a batch to a model process shared
# across SDK processes costs more host time per clip than cutting the clip
# and than the GPU's compute, and one JAX client per SDK process would split
# the GPU's memory and compile once per process. 32 GB with an L4 is a
# g2-standard-8: 8 vCPUs, one harness thread each.
GPU_ACCELERATOR = "type:nvidia-l4;count:1;install-nvidia-driver"
GPU_HOST_THREADS = 8
# TPUs cannot be right-fitted and only one process may open a TPU.
TPU_ACCELERATOR = "type:tpu-v5-lite-podslice;topology:1x1"
PROFILES = {
    "gpu": AcceleratorProfile(
        worker_options=("--machine_type=n2-standard-8",
                        "--experiments=no_use_multiple_sdk_containers",
                        f"--number_of_worker_harness_threads={GPU_HOST_THREADS}"),
        job_flags=(f"--embed_accelerator={GPU_ACCELERATOR}", "--embed_min_ram=32GB",
                   "--batch_size=16")),
    "tpu": AcceleratorProfile(
        worker_options=(f"--dataflow_service_options=worker_accelerator={TPU_ACCELERATOR}",
                        "--worker_machine_type=ct5lp-hightpu-1t",
                        "--experiments=no_use_multiple_sdk_containers"),
        job_flags=("--batch_size=32",)),
    "cpu": AcceleratorProfile(worker_options=("--machine_type=n2-standard-8",)),
}


def dataflow_options(project: str, region: str, bucket: str, image: str, job_name: str,
                     dry_run: bool) -> list[str]:
  """Options every job of ours needs on Dataflow."""
  options = [
      "--runner=DataflowRunner", f"--project={project}", f"--region={region}",
      f"--job_name={job_name}", f"--temp_location={bucket}/tmp",
      f"--staging_location={bucket}/staging", f"--sdk_container_image={image}",
      "--sdk_location=container", "--experiments=use_runner_v2",
      f"--setup_file={REPO_ROOT / 'setup.py'}",
  ]
  if dry_run:
    options.append("--dry_run=True")
  return options


def embed_argv(args: argparse.Namespace, extra: Sequence[str]) -> list[str]:
  backbone = args.backbone or checkpoints.infer_backbone(args.checkpoint_path)
  profile = PROFILES[args.accelerator]
  return [
      *dataflow_options(args.project, args.region, args.bucket, args.image,
                        f"mmv-embed-{backbone.replace('_', '-')}-{args.accelerator}", args.dry_run),
      *profile.worker_options,
      f"--checkpoint_path={args.checkpoint_path}", f"--backbone={backbone}",
      f"--work_dir={args.bucket}/work", f"--output_dir={args.bucket}/embeddings/{backbone}",
      *profile.job_flags, *extra]


def linear_eval_argv(args: argparse.Namespace, extra: Sequence[str]) -> list[str]:
  return [
      *dataflow_options(args.project, args.region, args.bucket, args.image,
                        f"mmv-linear-eval-{args.backbone.replace('_', '-')}", args.dry_run),
      # One split per VM at a time: its solver's matrix products use every
      # core, and it needs about twice the split's features in memory (4 GB
      # for TSM-ResNet-50x2's 95,370 x 4,096; bench/README.md).
      "--machine_type=n2-standard-8", "--experiments=no_use_multiple_sdk_containers",
      "--number_of_worker_harness_threads=1",
      f"--embeddings_dir={args.bucket}/embeddings/{args.backbone}",
      f"--output_dir={args.bucket}/linear_eval/{args.backbone}", *extra]


def parse_args(argv: Sequence[str]) -> tuple[argparse.Namespace, list[str]]:
  parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
  jobs = parser.add_subparsers(dest="job", required=True)
  for name in ("embed", "linear_eval"):
    job = jobs.add_parser(name)
    job.add_argument("--project", required=True)
    job.add_argument("--region", required=True)
    job.add_argument("--bucket", required=True, help="gs://BUCKET[/prefix] for work, output and temp")
    job.add_argument("--image", required=True, help="worker image built from the Dockerfile")
    job.add_argument("--dry_run", action="store_true", help="build the job, do not submit it")
  jobs.choices["embed"].add_argument("--accelerator", choices=sorted(PROFILES), default="gpu")
  jobs.choices["embed"].add_argument("--checkpoint_path", required=True)
  jobs.choices["embed"].add_argument("--backbone", default=None)
  jobs.choices["linear_eval"].add_argument("--backbone", required=True,
                                           choices=mmv.BACKBONES)
  args, extra = parser.parse_known_args(argv)
  if not args.bucket.startswith("gs://"):
    parser.error(f"--bucket must be a gs:// path, not {args.bucket!r}")
  return args, extra


def main(argv: Sequence[str] | None = None):
  """Builds the job's flags and runs it; returns Beam's result (dry runs: the unsent job)."""
  args, extra = parse_args(sys.argv[1:] if argv is None else argv)
  if args.job == "embed":
    from pipelines import embed  # pylint: disable=import-outside-toplevel
    return embed.run(embed_argv(args, extra))
  from pipelines import linear_eval  # pylint: disable=import-outside-toplevel
  return linear_eval.run(linear_eval_argv(args, extra))


if __name__ == "__main__":
  result = main()
  if getattr(result, "job", None) is not None:
    print(f"dry run: built job {result.job.proto.name!r}, nothing submitted")
