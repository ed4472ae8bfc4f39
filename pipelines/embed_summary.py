"""The embedding job's last words: its summary, and whether the run failed its purpose.

From the counts `embed_output.record_run` wrote to run.json, which come from
reading the written shards back (pipelines/reconcile.py), so the same
report holds for a local run and for one on Dataflow
(`launch.dataflow --wait`).
"""

import sys

from apache_beam.io.filesystems import FileSystems

from mmv_core.embeddings import schema
from pipelines import embed_output
from pipelines import reconcile
from pipelines.embed_config import LOG_PREFIX, PROG, EmbedJobConfig


def summary(config: EmbedJobConfig, counts: dict, seconds: float) -> list[str]:
  """The lines a finished run ends with: what was done, what failed, where it all is."""
  failed = counts["videos_failed"]
  failed_text = f"{failed} failed"
  if failed:
    failed_text += (
        " ("
        + ", ".join(
            f"{stage}: {n}" for stage, n in sorted(counts["videos_failed_by_stage"].items())
        )
        + ")"
    )
  lines = [
      f"finished in {seconds:.0f} s: {counts['videos_written']} videos embedded "
      f"({counts['clips_written_train']} training clips, "
      f"{counts['clips_written_test']} test windows), {failed_text}",
      f"embeddings: {schema.shard_pattern(config.output_dir)}",
      f"run record: {FileSystems.join(config.output_dir, schema.RUN_CONFIG_FILE)}",
  ]
  if failed:
    lines.append(f"failures:   {reconcile.failures_path(config.output_dir)}")
  return lines


def outcome_problem(config: EmbedJobConfig, counts: dict) -> str | None:
  """Why a finished run failed its purpose, or None.

  Videos unaccounted for (neither written whole once nor failed) or damaged
  shards, nothing embedded, or more failures than `--max_failed_share`.
  """
  written, failed = counts["videos_written"], counts["videos_failed"]
  unaccounted, damaged = counts["videos_unaccounted"], counts["shards_damaged"]
  if unaccounted or damaged:
    problems = []
    if unaccounted:
      problems.append(
          f"{unaccounted} of {written + failed + unaccounted} videos are neither written whole "
          "once nor recorded as failed: "
          + reconcile.describe_problems(embed_output.read_unaccounted(config.output_dir))
      )
    if damaged:
      problems.append(f"{damaged} embedding shards cannot be read to their end")
    return (
        f"{'; '.join(problems)}; the list is in {reconcile.unaccounted_path(config.output_dir)}; "
        "rerun with --resume to complete the output"
    )
  if not written:
    return f"no video was embedded ({failed} failed)"
  if failed > config.max_failed_share * (written + failed):
    return (
        f"{failed} of {written + failed} videos failed, more than --max_failed_share "
        f"{config.max_failed_share:g}"
    )
  return None


def report_outcome(config: EmbedJobConfig, seconds: float) -> None:
  """Prints a finished run's summary; exits 1 if it failed its purpose (`outcome_problem`)."""
  counts = schema.read_run_config(config.output_dir)["counts"]
  for line in summary(config, counts, seconds):
    print(f"{LOG_PREFIX} {line}", flush=True)
  problem = outcome_problem(config, counts)
  if problem:
    print(f"{PROG}: error: {problem}", file=sys.stderr, flush=True)
    sys.exit(1)
