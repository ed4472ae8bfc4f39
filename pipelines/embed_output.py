"""The embedding job's output directory: who owns it, what earlier runs left, the run record.

Stage: before the job (claiming `--output_dir`, or joining it with
`--resume`) and its last step (`record_run`: reconciling what was written
with what was selected, then run.json). Layout of `OUT`: `embeddings/`
(shards), `failures/failures.jsonl`, `run.json`, `run.owner` (`.2`, ... for
resumed runs) and, when the reconciliation finds problems,
`unaccounted.jsonl` (pipelines/reconcile.py).
"""

import dataclasses
import glob
import json
import os
from collections.abc import Sequence

from apache_beam.io.filesystems import FileSystems

from mmv_core.embeddings import schema
from pipelines import reconcile
from pipelines import run_records
from pipelines.common import UsageError, absolute_location
from pipelines.ownership import claim_output_dir, read_owners
from pipelines.embed_config import PATH_FLAGS, PROG, RESUME_SETTINGS, EmbedJobConfig

# What a run refused an output directory that another run owns can do.
_OWNED_DIR_REMEDY = (
    "choose a new --output_dir, pass --resume to complete it, or --overwrite to delete it "
    "and start again"
)
# Beam's file sinks write a run's files here and move them into place at its end.
_SINK_TEMP_DIRS = "beam-temp-*"


class NothingToDo(Exception):
  """`--resume` of a run whose every selected video is written: the message says so."""


@dataclasses.dataclass(frozen=True)
class PriorOutput:
  """What earlier runs into the output directory wrote (nothing, for a new directory).

  Attributes:
    video_ids: videos whose every clip is written once; a resumed run skips them.
    attempt: this run's number in the directory, 1 for its first run.
  """

  video_ids: frozenset[str] = frozenset()
  attempt: int = 1


def clip_counts(config: EmbedJobConfig) -> reconcile.ClipCounts:
  return reconcile.ClipCounts(config.num_train_clips, config.num_test_windows)


def owner_record(config: EmbedJobConfig, checkpoint_sha256: str) -> dict:
  settings = {name: getattr(config, name) for name in RESUME_SETTINGS}
  settings["backbone"] = config.resolved_backbone
  settings["classes"] = list(config.classes)
  return {"job": PROG, "settings": settings, "checkpoint_sha256": checkpoint_sha256}


def prepare_output_dir(
    config: EmbedJobConfig, checkpoint_sha256: str, selected: Sequence[str]
) -> PriorOutput:
  """Makes this run the owner of `--output_dir`: new, emptied (`--overwrite`) or resumed.

  Raises:
    UsageError: the directory is another run's, or not this job's to take.
    NothingToDo: `--resume`, and every one of `selected` is written.
  """
  owner = owner_record(config, checkpoint_sha256)
  if config.resume:
    return resume_output_dir(config, owner, selected)
  # A directory written before runs claimed theirs holds shards but no owner.
  existing = FileSystems.match([schema.shard_pattern(config.output_dir)])[0].metadata_list
  if existing and not read_owners(config.output_dir):
    raise UsageError(
        f"{config.output_dir} already holds {len(existing)} embedding shards, of a run that "
        "did not claim it; choose a new --output_dir"
    )
  spec = config.dataset_spec
  claim_output_dir(
      config.output_dir,
      owner,
      remedy=_OWNED_DIR_REMEDY,
      overwrite=config.overwrite,
      inputs={
          "--checkpoint_path": config.checkpoint_path,
          "--work_dir": config.work_dir,
          f"--{spec.videos_flag}": config.videos_location,
          f"--{spec.splits_flag}": config.splits_location,
      },
  )
  return PriorOutput()


def resume_output_dir(config: EmbedJobConfig, owner: dict, selected: Sequence[str]) -> PriorOutput:
  """Joins a directory that an earlier run of the same settings owns; what it wrote is kept.

  Videos written whole, once, are kept and skipped. The records of any other
  written video (part of its clips, a clip twice) are removed from the
  shards, and a damaged shard is cut at its damage, so that those videos are
  embedded again, once. What a killed run's file sinks left behind is
  removed. As for `--overwrite`, nothing tells whether the earlier run still
  runs: `--resume` is for runs that ended.
  """
  owners = read_owners(config.output_dir)
  if not owners:
    raise UsageError(f"--resume: no earlier run owns {config.output_dir}")
  first = owners[0]
  recorded = dict(first.get("settings", {}))
  for name in PATH_FLAGS:
    if isinstance(recorded.get(name), str):  # Earlier releases kept paths as typed.
      recorded[name] = absolute_location(recorded[name])
  differences = [
      f"{name} {recorded.get(name)!r} -> {value!r}"
      for name, value in owner["settings"].items()
      if recorded.get(name) != value
  ]
  if first.get("checkpoint_sha256") != owner["checkpoint_sha256"]:
    differences.append("the checkpoint (sha256)")
  if differences:
    raise UsageError(
        f"--resume: these settings differ from those of the run that wrote "
        f"{config.output_dir}: {'; '.join(differences)}; resume with that run's settings, "
        "or pass --overwrite, or choose another --output_dir"
    )
  written = reconcile.read_written(config.output_dir, clip_counts(config))
  found = reconcile.reconcile(selected, written, {}, clip_counts(config))
  if (
      len(found.complete) == len(selected)
      and not (found.problems or found.damaged_shards)
      and _recorded(config, found)
  ):
    raise NothingToDo(
        f"nothing to do: all {len(selected)} videos of {config.output_dir} are embedded"
    )
  attempt = len(owners) + 1
  claim_output_dir(config.output_dir, owner, remedy=_OWNED_DIR_REMEDY, attempt=attempt)
  remove_sink_temp_dirs(config.output_dir)
  reconcile.rewrite_shards(written, set(found.problems))
  return PriorOutput(found.complete, attempt)


def _recorded(config: EmbedJobConfig, found: reconcile.Reconciliation) -> bool:
  """Whether run.json exists and counts what `found` found (a run stopped while it
  reconciled has its shards but no, or an earlier, run.json)."""
  try:
    record = schema.read_run_config(config.output_dir)
  except schema.EmbeddingFormatError:
    return False
  return record.get("counts") == found.counts()


def remove_sink_temp_dirs(output_dir: str) -> None:
  """Deletes what Beam's file sinks of an interrupted run left under `output_dir`."""
  if "://" in output_dir:  # Objects: a prefix is no object of its own.
    pattern = FileSystems.join(output_dir, "*", _SINK_TEMP_DIRS, "*")
    leftovers = [m.path for m in FileSystems.match([pattern])[0].metadata_list]
  else:  # Local folders, empty ones too, which FileSystems.match does not list.
    leftovers = glob.glob(os.path.join(glob.escape(output_dir), "*", _SINK_TEMP_DIRS))
  if leftovers:
    FileSystems.delete(leftovers)


# ---- Run record ----


def record_run(
    selected: Sequence[str],
    *,
    config: EmbedJobConfig,
    checkpoint_sha256: str,
    attempt: int,
    dataset: dict,
) -> None:
  """The job's last step: reconciles the output with the `selected` videos, writes run.json.

  Its counts come from the files (pipelines/reconcile.py), earlier runs'
  included. Videos that are not accounted for are listed, one JSON line
  each, in `OUT/unaccounted.jsonl` (removed when there are none).
  """
  found = reconcile.reconcile_output(config.output_dir, selected, clip_counts(config))
  unaccounted = reconcile.unaccounted_path(config.output_dir)
  if found.problems or found.damaged_shards:
    with FileSystems.create(unaccounted) as f:
      f.write("".join(f"{line}\n" for line in found.problem_lines()).encode())
  elif FileSystems.exists(unaccounted):
    FileSystems.delete([unaccounted])
  record = run_records.embedding_record(
      config,
      dataset=dataset,
      checkpoint_sha256=checkpoint_sha256,
      counts=found.counts(),
      attempt=attempt,
  )
  run_records.write_record(FileSystems.join(config.output_dir, schema.RUN_CONFIG_FILE), record)


def read_unaccounted(output_dir: str) -> dict[str, str]:
  """The videos `record_run` listed: video id -> problem (damaged shards are counted in run.json)."""
  with FileSystems.open(reconcile.unaccounted_path(output_dir)) as f:
    lines = f.read().decode().splitlines()
  records = map(json.loads, filter(None, lines))
  return {record["video_id"]: record["problem"] for record in records if "video_id" in record}
