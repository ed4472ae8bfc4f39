"""Dataflow launch scripts, checked offline with Dataflow's dry-run mode."""

import pytest
from apache_beam.internal.gcp import auth
from apache_beam.runners.dataflow.internal import apiclient

from launch import dataflow
from pipelines import embed

COMMON = ["--project", "my-project-123", "--region", "us-central1",
          "--bucket", "gs://my-mmv-bucket", "--dry_run"]


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
    hints = dict(components.environments[transform.environment_id].resource_hints) \
        if transform.environment_id else {}
    if hints and not transform.subtransforms:
      hinted[transform.unique_name] = hints
  return hinted


def test_gpu_job_puts_only_the_embedding_step_on_gpu_workers():
  job = dataflow.main(["embed", "--accelerator", "gpu", *COMMON, "--image", "img:gpu",
                       "--checkpoint_path", "gs://my-mmv-bucket/ckpt/mmv_tsm_resnet_x1.pkl",
                       "--max_num_workers=7"]).job
  env = _environment(job)
  assert job.proto.name == "mmv-embed-tsm-resnet-x1-gpu"
  assert "use_runner_v2" in env.proto.experiments
  pool = env.proto.worker_pools[0]
  assert pool.machine_type == "n2-standard-8"
  assert {c.container_image for c in pool.sdk_harness_container_images} == {"img:gpu"}
  hinted = _hinted_transforms(job)
  assert hinted and all(name.startswith("Embed/") for name in hinted)
  assert {h["beam:resources:accelerator:v1"] for h in hinted.values()} == {
      dataflow.GPU_ACCELERATOR.encode()}
  assert {h["beam:resources:min_ram_bytes:v1"] for h in hinted.values()} == {b"32000000000"}
  # One SDK process per VM, its threads sharing one in-process model (bench/README.md).
  assert "no_use_multiple_sdk_containers" in env.proto.experiments
  options = job.options.get_all_options()
  assert options["number_of_worker_harness_threads"] == dataflow.GPU_HOST_THREADS
  assert options["max_num_workers"] == 7
  assert options["sdk_location"] == "container"
  assert options["setup_file"].endswith("setup.py")


def test_gpu_job_shares_its_model_within_the_process_not_across_processes():
  argv = ["embed", "--accelerator", "gpu", *COMMON, "--image", "img:gpu",
          "--checkpoint_path", "gs://my-mmv-bucket/ckpt/mmv_s3d.pkl"]
  config, _ = embed.parse_args(dataflow.embed_argv(*dataflow.parse_args(argv)))
  assert config.model_copies is None
  assert (config.batch_size, config.prefetch_videos) == (16, 1)


def test_tpu_job_runs_on_tpu_workers_with_one_process_per_vm():
  job = dataflow.main(["embed", "--accelerator", "tpu", *COMMON, "--image", "img:tpu",
                       "--checkpoint_path", "gs://my-mmv-bucket/ckpt/mmv_s3d.pkl"]).job
  env = _environment(job)
  assert f"worker_accelerator={dataflow.TPU_ACCELERATOR}" in env.proto.service_options
  assert "no_use_multiple_sdk_containers" in env.proto.experiments
  assert env.proto.worker_pools[0].machine_type == "ct5lp-hightpu-1t"
  assert not _hinted_transforms(job)  # Right fitting is not available for TPUs.


def test_linear_eval_job_reads_the_embedding_jobs_output():
  argv = ["linear_eval", *COMMON, "--image", "img:cpu", "--backbone", "s3d"]
  job_flags = dataflow.linear_eval_argv(*dataflow.parse_args(argv))
  assert "--embeddings_dir=gs://my-mmv-bucket/embeddings/s3d" in job_flags
  assert "--output_dir=gs://my-mmv-bucket/linear_eval/s3d" in job_flags
  job = dataflow.main(argv).job  # Built offline: the split lists and run.json are not read.
  assert job.proto.name == "mmv-linear-eval-s3d"
  env = _environment(job)
  assert env.proto.worker_pools[0].machine_type == "n2-standard-8"
  assert "no_use_multiple_sdk_containers" in env.proto.experiments
  assert job.options.get_all_options()["number_of_worker_harness_threads"] == 1


def test_bucket_must_be_on_gcs():
  with pytest.raises(SystemExit):
    dataflow.parse_args(["embed", "--project", "p", "--region", "r", "--bucket", "/tmp/x",
                         "--image", "i", "--checkpoint_path", "mmv_s3d.pkl"])
