"""Dataflow launch scripts, checked offline with Dataflow's dry-run mode."""

import contextlib
import functools
import io
import re
import socket
from unittest import mock

import pytest
from apache_beam.internal.gcp import auth
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.runners.dataflow.internal import apiclient

from launch import dataflow
from mmv_core.embeddings import schema
from pipelines import common
from pipelines import embed
from pipelines import linear_eval

import cli_checks

COMMON = [
    "--project",
    "my-project-123",
    "--region",
    "us-central1",
    "--bucket",
    "gs://my-mmv-bucket",
    "--dry_run",
]


@pytest.fixture(autouse=True)
def no_credential_lookup(monkeypatch):
  """Skips Beam's 25 s of retries looking for cloud credentials that are not here."""
  monkeypatch.setattr(auth._Credentials, "_credentials_init", True)
  monkeypatch.setattr(auth._Credentials, "_credentials", None)


def _environment(job) -> apiclient.Environment:
  return apiclient.Environment([], job.options, "2.77.0", "", job.proto_pipeline)


def _hinted_transforms(job) -> dict[str, dict]:
  """Names of leaf transforms that run in an environment with resource hints."""
  components = job.proto_pipeline.components
  hinted = {}
  for transform in components.transforms.values():
    hints = (
        dict(components.environments[transform.environment_id].resource_hints)
        if transform.environment_id
        else {}
    )
    if hints and not transform.subtransforms:
      hinted[transform.unique_name] = hints
  return hinted


GPU_EMBED = (
    "embed",
    "--accelerator",
    "gpu",
    "--image",
    "img:gpu",
    "--checkpoint_path",
    "gs://my-mmv-bucket/ckpt/mmv_tsm_resnet_x1.pkl",
    "--max_num_workers=7",
)
TPU_EMBED = (
    "embed",
    "--accelerator",
    "tpu",
    "--image",
    "img:tpu",
    "--checkpoint_path",
    "gs://my-mmv-bucket/ckpt/mmv_s3d.pkl",
    "--num_workers=2",
)
LINEAR_EVAL = ("linear_eval", "--image", "img:cpu", "--backbone", "s3d")


@functools.cache
def _dry_run(argv: tuple[str, ...]) -> tuple[object, str, list]:
  """`python -m launch.dataflow ARGV --dry_run ...` (COMMON): the job it built, what it
  printed, and the connections and name look-ups it tried (each refused).

  Built once per command line for the tests that read it (a second each).
  """
  attempts = []

  def refuse(*args, **kwargs):
    attempts.append(args)
    raise OSError("this test allows no network")

  printed = io.StringIO()
  with (
      mock.patch.object(socket.socket, "connect", refuse),
      mock.patch.object(socket, "getaddrinfo", refuse),
      contextlib.redirect_stdout(printed),
  ):
    job = dataflow.main([*argv, *COMMON]).job
  return job, printed.getvalue(), attempts


def test_gpu_job_puts_only_the_embedding_step_and_its_writes_on_gpu_workers():
  job, _, _ = _dry_run(GPU_EMBED)
  env = _environment(job)
  assert job.proto.name == "mmv-embed-ucf101-tsm-resnet-x1-gpu"
  assert "use_runner_v2" in env.proto.experiments
  pool = env.proto.worker_pools[0]
  assert pool.machine_type == "n2-standard-8"
  assert {c.container_image for c in pool.sdk_harness_container_images} == {"img:gpu"}
  hinted = _hinted_transforms(job)
  # Embedding, and writing the embeddings where they are made (steps of other
  # hints do not fuse): one environment, so that they fuse.
  assert {name.split("/")[0] for name in hinted} == {"Embed", "WriteEmbeddings"}
  components = job.proto_pipeline.components
  environments = {
      t.environment_id for t in components.transforms.values() if t.unique_name in hinted
  }
  assert len(environments) == 1
  assert {h["beam:resources:accelerator:v1"] for h in hinted.values()} == {
      dataflow.GPU_ACCELERATOR.encode()
  }
  assert {h["beam:resources:min_ram_bytes:v1"] for h in hinted.values()} == {b"32000000000"}
  # One SDK process per VM, its threads sharing one in-process model (bench/README.md).
  assert "no_use_multiple_sdk_containers" in env.proto.experiments
  options = job.options.get_all_options()
  assert options["number_of_worker_harness_threads"] == dataflow.GPU_HOST_THREADS
  assert options["max_num_workers"] == 7
  assert options["sdk_location"] == "container"
  assert options["setup_file"].endswith("setup.py")


def test_gpu_job_shares_its_model_within_the_process_not_across_processes():
  argv = [*GPU_EMBED, *COMMON]
  config, beam_args = embed.parse_args(dataflow.embed_argv(*dataflow.parse_args(argv)))
  assert config.model_copies is None
  # Each harness thread cuts one video ahead and re-encodes one at a time:
  # Dataflow runs a thread per vCPU.
  assert (config.batch_size, config.prefetch_videos) == (16, 1)
  assert common.host_threads(PipelineOptions(beam_args)) == 1


def test_tpu_job_runs_on_tpu_workers_with_one_process_per_vm():
  job, _, _ = _dry_run(TPU_EMBED)
  env = _environment(job)
  assert f"worker_accelerator={dataflow.TPU_ACCELERATOR}" in env.proto.service_options
  assert "no_use_multiple_sdk_containers" in env.proto.experiments
  assert env.proto.worker_pools[0].machine_type == "ct5lp-hightpu-1t"
  assert not _hinted_transforms(job)  # Right fitting is not available for TPUs.


def test_linear_eval_job_reads_the_embedding_jobs_output():
  job_flags = dataflow.linear_eval_argv(*dataflow.parse_args([*LINEAR_EVAL, *COMMON]))
  assert "--embeddings_dir=gs://my-mmv-bucket/embeddings/s3d" in job_flags
  assert "--output_dir=gs://my-mmv-bucket/linear_eval/s3d" in job_flags
  job, _, _ = _dry_run(LINEAR_EVAL)  # Built offline: the split lists and run.json are not read.
  assert job.proto.name == "mmv-linear-eval-ucf101-s3d"
  env = _environment(job)
  assert env.proto.worker_pools[0].machine_type == "n2-standard-8"
  assert "no_use_multiple_sdk_containers" in env.proto.experiments
  assert job.options.get_all_options()["number_of_worker_harness_threads"] == 1


def usage_error(argv, capsys) -> str:
  return cli_checks.usage_error(dataflow.main, dataflow.PROG, argv, capsys)


@pytest.mark.parametrize("bucket", ["/tmp/x", "gs://b", "gs://My_Bucket"])
def test_bucket_must_be_a_valid_gcs_bucket(bucket, capsys):
  argv = [
      "embed",
      "--project",
      "p",
      "--region",
      "r",
      "--bucket",
      bucket,
      "--image",
      "i",
      "--checkpoint_path",
      "mmv_s3d.pkl",
      "--dry_run",
  ]
  assert f"--bucket must be gs://BUCKET[/prefix] with a valid bucket name, not {bucket!r}" in (
      usage_error(argv, capsys)
  )


@pytest.mark.parametrize(
    "argv, unknown",
    [
        (
            [
                "embed",
                *COMMON,
                "--image",
                "i",
                "--checkpoint_path",
                "gs://b/mmv_s3d.pkl",
                "--max_num_wrkers=3",
            ],
            "--max_num_wrkers=3",
        ),
        (
            [
                "embed",
                *COMMON,
                "--image",
                "i",
                "--checkpoint_path",
                "gs://b/mmv_s3d.pkl",
                "--clases",
                "Archery",
            ],
            "--clases Archery",
        ),
        (["linear_eval", *COMMON, "--image", "i", "--backbone", "s3d", "--svm_cc=1"], "--svm_cc=1"),
    ],
    ids=["Beam option", "embed flag", "linear_eval flag"],
)
def test_a_flag_that_neither_the_job_nor_beam_takes_is_an_error_naming_it(argv, unknown, capsys):
  assert f"unrecognized arguments: {unknown} (" in usage_error(argv, capsys)


@pytest.mark.parametrize(
    "argv, problem",
    [
        (
            ["linear_eval", *COMMON, "--image", "i", "--backbone", "s3x"],
            "--backbone: no backbone 's3x'; there are s3d, tsm_resnet_x1, tsm_resnet_x2",
        ),
        (
            ["embed", *COMMON, "--image", "i", "--checkpoint_path", "gs://b/weights.pkl"],
            "cannot infer the visual backbone",
        ),
    ],
)
def test_an_unknown_backbone_is_an_error(argv, problem, capsys):
  assert problem in usage_error(argv, capsys)


@pytest.mark.parametrize(
    "argv, problem",
    [
        ([], "the following arguments are required: JOB"),
        (["embd"], "argument JOB: invalid choice: 'embd'"),
        (
            ["embed", "--project", "p"],
            "the following arguments are required: --region, --bucket, --image, --checkpoint_path",
        ),
    ],
)
def test_a_flag_argparse_refuses_is_one_line(argv, problem, capsys):
  assert problem in usage_error(argv, capsys)


def _printed_options(printed: str) -> dict[str, str]:
  return dict(
      re.split(r"\s{2,}", line.strip(), maxsplit=1)
      for line in printed.splitlines()
      if line.startswith("  ")
  )


UNSET = "Dataflow's default"


@pytest.mark.parametrize(
    "argv, expected",
    [
        (
            GPU_EMBED,
            {
                "workers at start": UNSET,
                "workers at most": "7",
                "SDK processes": "one per VM",
                "harness threads": f"{dataflow.GPU_HOST_THREADS} per SDK process",
                "accelerator": f"{dataflow.GPU_ACCELERATOR}, for the embedding step only (min RAM 32GB)",
                "checkpoint": "gs://my-mmv-bucket/ckpt/mmv_tsm_resnet_x1.pkl (tsm_resnet_x1)",
                "video cache": "gs://my-mmv-bucket/work",
                "output": "gs://my-mmv-bucket/embeddings/tsm_resnet_x1",
            },
        ),
        (
            TPU_EMBED,
            {
                "workers at start": "2",
                "workers at most": UNSET,
                "SDK processes": "one per VM",
                "harness threads": UNSET,
                "accelerator": f"{dataflow.TPU_ACCELERATOR}, on every worker",
                "output": "gs://my-mmv-bucket/embeddings/s3d",
            },
        ),
        (
            LINEAR_EVAL,
            {
                "workers at start": UNSET,
                "workers at most": UNSET,
                "SDK processes": "one per VM",
                "harness threads": "1 per SDK process",
                "accelerator": "none",
                "embeddings": "gs://my-mmv-bucket/embeddings/s3d",
                "split lists": "those the embedding job used (its run.json)",
                "output": "gs://my-mmv-bucket/linear_eval/s3d",
            },
        ),
    ],
    ids=["embed gpu", "embed tpu", "linear_eval"],
)
def test_a_dry_run_prints_the_options_of_the_job_it_built_and_contacts_nothing(argv, expected):
  job, printed, network_attempts = _dry_run(argv)
  assert printed.startswith(f"dry run: built job {job.proto.name!r}; nothing submitted")
  assert not network_attempts
  options = _printed_options(printed)
  pool = _environment(job).proto.worker_pools[0]
  assert options["runner"] == "DataflowRunner (runner v2)"
  assert (options["project"], options["region"]) == ("my-project-123", "us-central1")
  assert options["machine type"] == pool.machine_type
  assert options["container image"] in {
      c.container_image for c in pool.sdk_harness_container_images
  }
  # Dataflow gives each job folders of its own.
  assert options["staging"].startswith(f"gs://my-mmv-bucket/staging/{job.proto.name}.")
  assert options["temp"].startswith(f"gs://my-mmv-bucket/tmp/{job.proto.name}.")
  assert expected.items() <= options.items()


@pytest.mark.parametrize(
    "command", [command for module, *command in cli_checks.COMMANDS if module == "launch.dataflow"]
)
def test_help_shows_every_flags_default(command):
  text = cli_checks.help_text("launch.dataflow", *command)
  assert text.startswith(f"usage: {' '.join([dataflow.PROG, *command])} ")
  assert cli_checks.undocumented_options(text) == []


class _FinishedJob:
  """Beam's result of a submitted job, as `wait_until_finish` leaves it."""

  def __init__(self, state):
    self.state = state
    self.waited = False

  def wait_until_finish(self):
    self.waited = True
    return self.state


@pytest.mark.parametrize(
    "state, counts, message",
    [
        ("FAILED", None, "the embed job ended FAILED"),
        (
            "DONE",
            {"videos_written": 0, "videos_failed": 3, "videos_failed_by_stage": {"fetch": 3}},
            "no video was embedded (3 failed)",
        ),
    ],
)
def test_wait_checks_the_ended_job_as_a_local_run_does(monkeypatch, capsys, state, counts, message):
  job = _FinishedJob(state)
  monkeypatch.setattr(embed, "run", lambda argv: job)
  monkeypatch.setattr(
      schema,
      "read_run_config",
      lambda output_dir: {
          "counts": {
              "clips_written_train": 0,
              "clips_written_test": 0,
              "videos_unaccounted": 0,
              "shards_damaged": 0,
              **(counts or {}),
          }
      },
  )
  argv = [
      "embed",
      *[flag for flag in COMMON if flag != "--dry_run"],
      "--image=img:gpu",
      "--checkpoint_path=gs://my-mmv-bucket/ckpt/mmv_s3d.pkl",
      "--wait",
  ]
  with pytest.raises(SystemExit) as exited:
    dataflow.main(argv)
  assert exited.value.code == 1 and job.waited
  assert message in capsys.readouterr().err


def test_wait_reports_an_ended_evaluation_as_a_local_run_does(monkeypatch):
  job, reported = _FinishedJob("DONE"), []
  monkeypatch.setattr(linear_eval, "run", lambda argv: job)
  monkeypatch.setattr(
      linear_eval, "report_outcome", lambda config, seconds: reported.append(config.output_dir)
  )
  argv = ["linear_eval", *[f for f in COMMON if f != "--dry_run"], "--image=i", "--backbone=s3d"]
  dataflow.main([*argv, "--wait"])
  assert job.waited and reported == ["gs://my-mmv-bucket/linear_eval/s3d"]
