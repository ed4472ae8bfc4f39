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

Add `--dry_run` to build the job offline and print the options it would run
with, submitting nothing and contacting no Google Cloud service. Add
`--wait` to wait for the job's end and report it as a local run does: its
summary, and exit status 1 if the job failed or, for the embedding job, its
reconciliation found videos unaccounted for (pipelines/reconcile.py) or too
many failed. Any further flag goes to the job itself (e.g. `--classes=Archery`) or to Beam (e.g.
`--max_num_workers=50`); a flag that neither takes is an error. Work,
output, staging and temp paths are folders of `--bucket`.
"""

import argparse
import dataclasses
import pathlib
import re
import sys
import time
from collections.abc import Sequence

from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.runners.runner import PipelineState

from mmv_core import checkpoints
from mmv_core import datasets
from mmv_core.models.names import BACKBONES
from pipelines import common
from pipelines import dataset_flags

PROG = "python -m launch.dataflow"
REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
# A bucket name as Cloud Storage allows it. Beam answers an invalid one by
# looking for a default bucket in the cloud, which a dry run must not do.
_BUCKET_PATH = re.compile(r"gs://[a-z0-9][-_.a-z0-9]{1,220}[a-z0-9](/.*)?")
_JOBS = {
    "embed": "Videos of a dataset in, clip embeddings out (pipelines.embed)",
    "linear_eval": "Linear evaluation of the embeddings (pipelines.linear_eval)",
}


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
        worker_options=(
            "--machine_type=n2-standard-8",
            "--experiments=no_use_multiple_sdk_containers",
            f"--number_of_worker_harness_threads={GPU_HOST_THREADS}",
        ),
        job_flags=(
            f"--embed_accelerator={GPU_ACCELERATOR}",
            "--embed_min_ram=32GB",
            "--batch_size=16",
        ),
    ),
    "tpu": AcceleratorProfile(
        worker_options=(
            f"--dataflow_service_options=worker_accelerator={TPU_ACCELERATOR}",
            "--worker_machine_type=ct5lp-hightpu-1t",
            "--experiments=no_use_multiple_sdk_containers",
        ),
        job_flags=("--batch_size=32",),
    ),
    "cpu": AcceleratorProfile(worker_options=("--machine_type=n2-standard-8",)),
}


def dataflow_options(
    project: str, region: str, bucket: str, image: str, job_name: str, dry_run: bool
) -> list[str]:
  """Options every job of ours needs on Dataflow."""
  options = [
      "--runner=DataflowRunner",
      f"--project={project}",
      f"--region={region}",
      f"--job_name={job_name}",
      f"--temp_location={bucket}/tmp",
      f"--staging_location={bucket}/staging",
      f"--sdk_container_image={image}",
      "--sdk_location=container",
      "--experiments=use_runner_v2",
      f"--setup_file={REPO_ROOT / 'setup.py'}",
  ]
  if dry_run:
    options.append("--dry_run=True")
  return options


def _backbone(args: argparse.Namespace) -> str:
  """--backbone, checked, or the one the checkpoint's file name says."""
  if args.backbone is None:
    try:
      return checkpoints.infer_backbone(args.checkpoint_path)
    except checkpoints.CheckpointError as e:
      raise common.UsageError(f"{e}; pass --backbone") from e
  if args.backbone not in BACKBONES:
    raise common.UsageError(
        f"--backbone: no backbone {args.backbone!r}; there are {', '.join(BACKBONES)}"
    )
  return args.backbone


def embed_argv(args: argparse.Namespace, extra: Sequence[str]) -> list[str]:
  backbone = _backbone(args)
  profile = PROFILES[args.accelerator]
  return [
      *dataflow_options(
          args.project,
          args.region,
          args.bucket,
          args.image,
          f"mmv-embed-{args.dataset}-{backbone.replace('_', '-')}-{args.accelerator}",
          args.dry_run,
      ),
      *profile.worker_options,
      f"--checkpoint_path={args.checkpoint_path}",
      f"--backbone={backbone}",
      f"--work_dir={args.bucket}/work",
      f"--dataset={args.dataset}",
      f"--output_dir={results_dir(args, 'embeddings')}",
      *profile.job_flags,
      *extra,
  ]


def linear_eval_argv(args: argparse.Namespace, extra: Sequence[str]) -> list[str]:
  backbone = _backbone(args)
  return [
      *dataflow_options(
          args.project,
          args.region,
          args.bucket,
          args.image,
          f"mmv-linear-eval-{args.dataset}-{backbone.replace('_', '-')}",
          args.dry_run,
      ),
      # One split per VM at a time: its solver's matrix products use every
      # core, and it needs about twice the split's features in memory (4 GB
      # for TSM-ResNet-50x2's 95,370 x 4,096; bench/README.md).
      "--machine_type=n2-standard-8",
      "--experiments=no_use_multiple_sdk_containers",
      "--number_of_worker_harness_threads=1",
      f"--embeddings_dir={results_dir(args, 'embeddings')}",
      f"--output_dir={results_dir(args, 'linear_eval')}",
      *extra,
  ]


def results_dir(args: argparse.Namespace, kind: str) -> str:
  """`BUCKET/KIND/BACKBONE` for UCF101 (as it always was), `BUCKET/KIND/DATASET/BACKBONE` else."""
  dataset = "" if args.dataset == datasets.UCF101.name else f"{args.dataset}/"
  return f"{args.bucket}/{kind}/{dataset}{_backbone(args)}"


def parse_args(argv: Sequence[str]) -> tuple[argparse.Namespace, list[str]]:
  """Flags -> (the launcher's settings, the flags it passes on to the job and Beam).

  Raises:
    common.UsageError: --bucket is not a gs:// path to a valid bucket name.
  """
  parser = common.JobArgumentParser(
      prog=PROG,
      description=__doc__.split("\n", 1)[0],
      epilog="JOB --help lists the job's launch flags.",
  )
  jobs = parser.add_subparsers(dest="job", required=True, metavar="JOB")
  for name, description in _JOBS.items():
    job = jobs.add_parser(
        name,
        help=description,
        description=f"{description}.",
        epilog=f"Further flags go to the job (python -m pipelines.{name} --help) or to "
        "Beam (e.g. --max_num_workers); a flag that neither takes is an error.",
    )
    common.add_required_flag(job, "--project", "Google Cloud project ID")
    common.add_required_flag(job, "--region", "Dataflow region, e.g. us-central1")
    common.add_required_flag(
        job, "--bucket", "gs://BUCKET[/prefix] for work, output, staging and temp files"
    )
    common.add_required_flag(job, "--image", "worker container image built from the Dockerfile")
    job.add_argument(
        "--dry_run",
        action="store_true",
        help="build the job and print the options it would run with; submit "
        "nothing, contact no Google Cloud service",
    )
    job.add_argument(
        "--wait",
        action="store_true",
        help="wait for the job to end, then report it as a local run does (exit "
        "status 1 if it failed or, for embed, lost or failed too many videos)",
    )
  embed, linear_eval = jobs.choices["embed"], jobs.choices["linear_eval"]
  embed.add_argument(
      "--accelerator",
      choices=sorted(PROFILES),
      default="gpu",
      help="gpu: L4 workers for the embedding step only; tpu: TPU v5e "
      "workers for the whole job; cpu: no accelerator",
  )
  common.add_required_flag(
      embed, "--checkpoint_path", "MMV checkpoint, e.g. gs://BUCKET/checkpoints/mmv_s3d.pkl"
  )
  embed.add_argument(
      "--backbone", default=None, help="the checkpoint's backbone; None: read from its file name"
  )
  for job in (embed, linear_eval):
    job.add_argument(
        "--dataset",
        choices=sorted(datasets.DATASETS),
        default=datasets.UCF101.name,
        help="the dataset; results go under BUCKET/embeddings/DATASET/ and "
        "BUCKET/linear_eval/DATASET/ (UCF101's directly under embeddings/ and "
        "linear_eval/); the embedding job takes its locations: "
        + ", ".join(f"--{flag}" for flag in dataset_flags.LOCATION_FLAGS),
    )
  common.add_required_flag(
      linear_eval,
      "--backbone",
      "backbone of the embeddings to evaluate (gs://BUCKET/embeddings/BACKBONE)",
  )
  args, extra = parser.parse_known_args(argv)
  if not _BUCKET_PATH.fullmatch(args.bucket):
    raise common.UsageError(
        f"--bucket must be gs://BUCKET[/prefix] with a valid bucket name, not {args.bucket!r}"
    )
  return args, extra


def _job_paths(job: str, config) -> dict[str, str]:
  """The inputs and outputs of a job's config (`pipelines.JOB.parse_args`)."""
  if job == "embed":
    return {
        "checkpoint": f"{config.checkpoint_path} ({config.resolved_backbone})",
        "videos": config.videos_location,
        "split lists": config.splits_location,
        "video cache": config.work_dir,
        "output": config.output_dir,
    }
  return {
      "embeddings": config.embeddings_dir,
      "split lists": config.splits_location or "those the embedding job used (its run.json)",
      "output": config.output_dir,
  }


def _accelerator(job: str, config, dataflow_service_options: Sequence[str]) -> str:
  """The accelerator of a job's workers, and which workers have it."""
  if job == "embed" and config.embed_accelerator:
    return (
        f"{config.embed_accelerator}, for the embedding step only "
        f"(min RAM {config.embed_min_ram})"
    )
  for option in dataflow_service_options:
    if option.startswith("worker_accelerator="):
      return f"{option.removeprefix('worker_accelerator=')}, on every worker"
  return "none"


def resolved_options(job: str, config, pipeline_options: PipelineOptions) -> dict[str, str]:
  """What a job runs with, by label: where, on what, and its paths.

  Args:
    job: `embed` or `linear_eval`.
    config: the job's settings (`pipelines.JOB.parse_args`).
    pipeline_options: the built job's options, as the runner resolved them.
  """
  options = pipeline_options.get_all_options()
  experiments = options["experiments"] or []
  unset = "Dataflow's default"
  return {
      "runner": options["runner"] + (" (runner v2)" if "use_runner_v2" in experiments else ""),
      "project": options["project"],
      "region": options["region"],
      "machine type": options["machine_type"] or unset,
      "workers at start": str(options["num_workers"] or unset),
      "workers at most": str(options["max_num_workers"] or unset),
      "SDK processes": (
          "one per VM" if "no_use_multiple_sdk_containers" in experiments else "one per vCPU"
      ),
      "harness threads": (
          f"{options['number_of_worker_harness_threads']} per SDK process"
          if options["number_of_worker_harness_threads"]
          else unset
      ),
      "accelerator": _accelerator(job, config, options["dataflow_service_options"] or []),
      "container image": options["sdk_container_image"],
      "staging": options["staging_location"],
      "temp": options["temp_location"],
      **_job_paths(job, config),
  }


def main(argv: Sequence[str] | None = None):
  """Builds the job's flags, checks them and runs the job.

  Returns:
    Beam's result; for a dry run, the job built but not sent (`.job`),
    whose resolved options are printed.

  Raises:
    common.UsageError: a flag that neither the launcher, the job nor Beam
      takes, or a bad value.
  """
  args, extra = parse_args(sys.argv[1:] if argv is None else argv)
  # Imported once the flags are parsed: the embedding job imports JAX.
  if args.job == "embed":
    from pipelines import embed as job
    from pipelines.embed_summary import report_outcome

    job_argv = embed_argv(args, extra)
  else:
    from pipelines import linear_eval as job
    from pipelines.linear_eval import report_outcome

    job_argv = linear_eval_argv(args, extra)
  config, _ = job.parse_args(job_argv)  # Refuses flags that neither the job nor Beam takes.
  started = time.monotonic()
  result = job.run(job_argv)
  if args.wait and not args.dry_run:
    state = result.wait_until_finish()
    if state != PipelineState.DONE:
      print(f"{PROG}: error: the {args.job} job ended {state}", file=sys.stderr, flush=True)
      sys.exit(1)
    report_outcome(config, time.monotonic() - started)
  if args.dry_run:
    print(
        f"dry run: built job {result.job.proto.name!r}; nothing submitted, no Google "
        "Cloud service contacted"
    )
    options = resolved_options(args.job, config, result.job.options)
    width = max(map(len, options))
    print("\n".join(f"  {label:<{width}}  {value}" for label, value in options.items()))
  return result


if __name__ == "__main__":
  common.run_main(main, PROG, sys.argv[1:])
