"""Output-directory ownership, which both jobs use: claim, resume, overwrite.

A run claims its `--output_dir` by creating `run.owner` (`OWNER_FILE`)
there, which only one run can create; a resumed run adds `run.owner.2`,
`run.owner.3`, ... Each record says which job, host, process and claim
made it (`claimed_by_this_process`). `--overwrite` deletes only what an
earlier run of the same job claimed, or an empty directory, and never one
that holds the run's inputs (`delete_output_dir`, `check_overwritable`).
"""

import json
import os
import socket
import time
import uuid
from collections.abc import Mapping

from apache_beam.io.filesystems import FileSystems

from mmv_core.video import sources
from pipelines.common import UsageError

OWNER_FILE = "run.owner"
# Tells this process's claims from any other's (pids are reused, across
# restarted containers too).
_PROCESS_CLAIM_ID = uuid.uuid4().hex


def owner_path(output_dir: str, attempt: int = 1) -> str:
  """`OUT/run.owner` for a directory's first run, `OUT/run.owner.N` for its Nth (resumed)."""
  name = OWNER_FILE if attempt == 1 else f"{OWNER_FILE}.{attempt}"
  return FileSystems.join(output_dir, name)


def claim_output_dir(
    output_dir: str,
    owner: dict,
    *,
    remedy: str,
    attempt: int = 1,
    overwrite: bool = False,
    inputs: Mapping[str, str | None] | None = None,
) -> None:
  """Makes this run the one owner of `output_dir` (its `attempt`th run), or raises UsageError.

  The claim is the creation of `owner_path(output_dir, attempt)`, holding
  `owner` (with its "job", the command) plus who, where and when, which
  succeeds for one creator only, locally and on GCS: of two runs started
  together, one proceeds and the other is refused before any work. The file
  stays, so a later run into the same directory is refused too (its error
  ends with `remedy`, what the job's flags offer), unless it resumes (the
  next attempt). With `overwrite`, the directory and everything in it is
  deleted first (`delete_output_dir`; `inputs`: flag -> location, what this
  run reads).
  """
  if overwrite:
    delete_output_dir(output_dir, owner["job"], inputs or {})
  path = owner_path(output_dir, attempt)
  record = {
      **owner,
      "host": socket.gethostname(),
      "pid": os.getpid(),
      "claim_id": _PROCESS_CLAIM_ID,
      "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
  }
  try:
    sources.create_new(path, json.dumps(record, indent=2, sort_keys=True).encode())
  except FileExistsError:
    raise owned_error(output_dir, owner["job"], remedy, attempt) from None
  except (OSError, sources.SourceError) as e:
    raise UsageError(f"cannot write to --output_dir {output_dir}: {e}") from e


def owned_error(output_dir: str, job: str, remedy: str, attempt: int = 1) -> UsageError:
  """The refusal of `output_dir`, whose `attempt`th run's claim exists: who owns it and,
  if that run was of `job`, `remedy`."""
  path = owner_path(output_dir, attempt)
  earlier = _read_owner(path)
  if earlier and earlier.get("job") != job:
    remedy = "it is not this job's output: choose a new --output_dir"
  return UsageError(
      f"{output_dir} belongs to another run ({_describe_owner(earlier, path)}); {remedy}"
  )


def delete_output_dir(output_dir: str, job: str, inputs: Mapping[str, str | None]) -> None:
  """`--overwrite`: deletes every file under `output_dir`, if `check_overwritable` allows it.

  Works on a local folder and on a `gs://` prefix alike (where the "folder"
  is no object of its own, only the objects under it).

  Raises:
    UsageError: `output_dir` is a local file, or must not be deleted.
  """
  if "://" not in output_dir and os.path.lexists(output_dir) and not os.path.isdir(output_dir):
    raise UsageError(f"--output_dir {output_dir} is a file, not a directory")
  files = [m.path for m in FileSystems.match([FileSystems.join(output_dir, "**")])[0].metadata_list]
  if not files:
    return
  check_overwritable(output_dir, job, inputs, len(files))
  # A local folder goes whole, subfolders too; a gs:// prefix is its objects.
  FileSystems.delete(files if "://" in output_dir else [output_dir])


def check_overwritable(
    output_dir: str, job: str, inputs: Mapping[str, str | None], num_files: int
) -> None:
  """Raises UsageError unless `--overwrite` may delete `output_dir`, which holds `num_files`.

  It may if an earlier run of `job` claimed it and it holds none of
  `inputs` (flag -> location). A folder that no run claimed may hold
  anything, and deleting a run's own inputs (its checkpoint, its video
  cache, the embeddings it evaluates) would lose them before it reads them.
  Nothing tells whether the earlier run still runs: `--overwrite` is for
  runs that ended.
  """
  for flag, location in inputs.items():
    if location and is_within(location, output_dir):
      raise UsageError(
          f"--overwrite would delete {flag} {location}, which is inside --output_dir "
          f"{output_dir}; choose another --output_dir"
      )
  earlier = _read_owner(owner_path(output_dir))
  if earlier is None:
    raise UsageError(
        f"--overwrite deletes only a directory that an earlier run claimed; {output_dir} "
        f"holds {num_files} file(s) but no readable {OWNER_FILE}: choose another "
        "--output_dir, or empty it yourself"
    )
  if earlier.get("job") != job:
    raise UsageError(
        f"--overwrite: {output_dir} holds the output of {earlier.get('job')}, not of {job}; "
        "choose another --output_dir"
    )


def is_within(location: str, directory: str) -> bool:
  """Whether `location` is `directory` or under it: local paths (links resolved) or URLs."""
  if "://" in location or "://" in directory:
    return f"{location.rstrip('/')}/".startswith(f"{directory.rstrip('/')}/")
  location, directory = os.path.realpath(location), os.path.realpath(directory)
  return os.path.commonpath([location, directory]) == directory


def claimed_by_this_process(output_dir: str) -> bool:
  """Whether this process made the latest claim of `output_dir`."""
  owners = read_owners(output_dir)
  return bool(owners) and owners[-1].get("claim_id") == _PROCESS_CLAIM_ID


def read_owners(output_dir: str) -> list[dict]:
  """The owner records of `output_dir`'s runs, first run first; [] if none claimed it."""
  owners = []
  while FileSystems.exists(owner_path(output_dir, len(owners) + 1)):
    with FileSystems.open(owner_path(output_dir, len(owners) + 1)) as f:
      owners.append(json.loads(f.read()))
  return owners


def _read_owner(path: str) -> dict | None:
  """The owner record at `path`; None if there is none or it cannot be read."""
  try:
    with FileSystems.open(path) as f:
      return json.loads(f.read())
  except Exception:  # Missing, unreadable or not JSON: no owner to go by.
    return None


def _describe_owner(owner: dict | None, path: str) -> str:
  try:
    return f"{owner['job']} started {owner['started']} on {owner['host']}, pid {owner['pid']}"
  except (TypeError, KeyError):
    return f"see {path}"
