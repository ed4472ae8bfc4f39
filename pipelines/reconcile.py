"""What an embedding job's output holds, video by video, against what the job was asked for.

Stage: the end of every embedding job (its last step, so that it holds on
Dataflow too) and the start of a resumed one. Read from the files, not from
the job's metrics: the embedding shards (`OUT/embeddings/*.tfrecord`, each
clip's video id, type and index) and the failure records
(`OUT/failures/failures.jsonl`).

A selected video is accounted for when every one of its clips
(`num_train_clips` training clips, `num_test_windows` test windows) is
written exactly once, or when it is recorded as failed and none of its clips
is written. Anything else is a problem, by kind (`PROBLEMS`): a video with no
clip and no failure record (`missing`), some of its clips (`partial`), a
clip written more than once (`duplicated`), a clip outside the run's clip
counts (`unexpected clip`), clips of a video the run did not select (`not
selected`), clips written for a video also recorded as failed (`written and
failed`).
"""

import collections
import dataclasses
import json
import uuid
from collections.abc import Iterable, Iterator

from apache_beam.io.filesystems import FileSystems

from mmv_core.embeddings import schema
from mmv_core.embeddings import tfrecord

FAILURES_DIR = "failures"
FAILURES_FILE = "failures.jsonl"
# The whole list of a run's problems, one JSON line per video.
UNACCOUNTED_FILE = "unaccounted.jsonl"
MISSING = "missing"
PARTIAL = "partial"
DUPLICATED = "duplicated"
UNEXPECTED_CLIP = "unexpected clip"
NOT_SELECTED = "not selected"
WRITTEN_AND_FAILED = "written and failed"
PROBLEMS = (MISSING, PARTIAL, DUPLICATED, UNEXPECTED_CLIP, NOT_SELECTED, WRITTEN_AND_FAILED)


def failures_path(output_dir: str) -> str:
  return FileSystems.join(output_dir, FAILURES_DIR, FAILURES_FILE)


def unaccounted_path(output_dir: str) -> str:
  return FileSystems.join(output_dir, UNACCOUNTED_FILE)


@dataclasses.dataclass
class WrittenVideo:
  """The clips of one video found in the shards.

  Attributes:
    copies: how many times each expected clip is written, training clips
      first, then test windows.
    unexpected: clips whose type or index lies outside the run's counts.
    shards: the shards holding its clips.
  """

  copies: bytearray
  unexpected: int = 0
  shards: set[str] = dataclasses.field(default_factory=set)


@dataclasses.dataclass(frozen=True)
class ClipCounts:
  """Clips per video of a run: `train` training clips, `test` test windows."""

  train: int
  test: int

  @property
  def total(self) -> int:
    return self.train + self.test

  def slot(self, clip_type: str, clip_index: int) -> int | None:
    """The clip's place among a video's clips, or None if the run cuts no such clip."""
    count, first = (
        (self.train, 0) if clip_type == schema.CLIP_TYPE_TRAIN else (self.test, self.train)
    )
    if clip_type not in schema.CLIP_TYPES or not 0 <= clip_index < count:
      return None
    return first + clip_index


@dataclasses.dataclass
class WrittenOutput:
  """What the output's shards hold.

  Attributes:
    videos: every video with clips in them.
    damaged_shards: shard -> why it cannot be read to its end (truncated,
      corrupt); its records before the damage are counted in `videos`.
  """

  videos: dict[str, WrittenVideo] = dataclasses.field(default_factory=dict)
  damaged_shards: dict[str, str] = dataclasses.field(default_factory=dict)


def _records(shard: str, damaged: dict[str, str]) -> Iterator[tuple[int, bytes, dict]]:
  """(index, record, its scalar features) of each readable record of `shard`, in order;
  at the first that cannot be read, records why in `damaged` and stops."""
  try:
    for index, record in enumerate(schema.iter_records(shard)):
      source = f"{shard}#{index}"
      yield index, record, schema.parse_example(record, include_floats=False, source=source)
  except schema.EmbeddingFormatError as e:
    damaged[shard] = str(e)


def read_written(output_dir: str, clips: ClipCounts) -> WrittenOutput:
  """Every video with clips in the output's shards, read from the records.

  Memory: a few hundred bytes per video; the records are streamed.
  """
  pattern = schema.shard_pattern(output_dir)
  written = WrittenOutput()
  for path in sorted(m.path for m in FileSystems.match([pattern])[0].metadata_list):
    for _, _, clip in _records(path, written.damaged_shards):
      video = written.videos.setdefault(clip[schema.VIDEO_ID], WrittenVideo(bytearray(clips.total)))
      video.shards.add(path)
      slot = clips.slot(clip[schema.CLIP_TYPE], clip[schema.CLIP_INDEX])
      if slot is None:
        video.unexpected += 1
      else:
        video.copies[slot] = min(255, video.copies[slot] + 1)
  return written


def read_failures(output_dir: str) -> dict[str, str]:
  """The stage at which each recorded video failed (the first record of a video wins)."""
  path = failures_path(output_dir)
  if not FileSystems.exists(path):
    return {}
  with FileSystems.open(path) as f:
    lines = f.read().decode().splitlines()
  failed: dict[str, str] = {}
  for line in lines:
    if line:
      record = json.loads(line)
      failed.setdefault(record["video_id"], record["stage"])
  return failed


def video_problem(video: WrittenVideo) -> str | None:
  """What is wrong with a selected video's written clips, or None if each is there once."""
  if video.unexpected:
    return UNEXPECTED_CLIP
  if any(copies > 1 for copies in video.copies):
    return DUPLICATED
  if not all(video.copies):
    return PARTIAL
  return None


@dataclasses.dataclass(frozen=True)
class Reconciliation:
  """Each selected video's outcome, and what is wrong where it has none.

  Attributes:
    complete: videos whose every clip is written exactly once.
    failed: video -> the stage it failed at, for videos with no clip written.
    problems: video -> its problem (`PROBLEMS`).
    damaged_shards: shard -> why it cannot be read to its end.
    clips: the run's clips per video.
  """

  complete: frozenset[str]
  failed: dict[str, str]
  problems: dict[str, str]
  damaged_shards: dict[str, str]
  clips: ClipCounts

  def counts(self) -> dict:
    """run.json's counts."""
    return {
        "videos_written": len(self.complete),
        "clips_written_train": len(self.complete) * self.clips.train,
        "clips_written_test": len(self.complete) * self.clips.test,
        "videos_failed": len(self.failed),
        "videos_failed_by_stage": dict(sorted(collections.Counter(self.failed.values()).items())),
        "videos_unaccounted": len(self.problems),
        "shards_damaged": len(self.damaged_shards),
    }

  def problem_lines(self) -> list[str]:
    """The problems as JSON lines: videos (sorted by id), then damaged shards."""
    return [
        json.dumps({"video_id": video_id, "problem": problem}, sort_keys=True)
        for video_id, problem in sorted(self.problems.items())
    ] + [
        json.dumps({"shard": shard, "problem": f"damaged: {reason}"}, sort_keys=True)
        for shard, reason in sorted(self.damaged_shards.items())
    ]


def reconcile(
    selected: Iterable[str],
    written: WrittenOutput,
    failed: dict[str, str],
    clips: ClipCounts,
) -> Reconciliation:
  """Accounts for every selected video (see the module docstring)."""
  selected = set(selected)
  complete, failures, problems = set(), {}, {}
  for video_id in selected:
    video = written.videos.get(video_id)
    if video is None:
      if video_id in failed:
        failures[video_id] = failed[video_id]
      else:
        problems[video_id] = MISSING
      continue
    problem = video_problem(video)
    if problem is None and video_id in failed:
      problem = WRITTEN_AND_FAILED
    if problem is None:
      complete.add(video_id)
    else:
      problems[video_id] = problem
  for video_id in written.videos.keys() - selected:
    problems[video_id] = NOT_SELECTED
  return Reconciliation(frozenset(complete), failures, problems, written.damaged_shards, clips)


def reconcile_output(output_dir: str, selected: Iterable[str], clips: ClipCounts) -> Reconciliation:
  """Reconciles what `output_dir` holds with the `selected` videos."""
  return reconcile(selected, read_written(output_dir, clips), read_failures(output_dir), clips)


def describe_problems(problems: dict[str, str], max_ids: int = 5) -> str:
  """E.g. "3 missing (v_a, v_b, v_c), 1 partial (v_d)": counts by kind, with the first ids."""
  by_kind: dict[str, list[str]] = collections.defaultdict(list)
  for video_id, problem in sorted(problems.items()):
    by_kind[problem].append(video_id)
  parts = []
  for kind in PROBLEMS:
    ids = by_kind.get(kind)
    if ids:
      shown = ", ".join(ids[:max_ids]) + (", ..." if len(ids) > max_ids else "")
      parts.append(f"{len(ids)} {kind} ({shown})")
  return ", ".join(parts)


def rewrite_shards(written: WrittenOutput, video_ids: set[str]) -> None:
  """Rewrites the shards holding `video_ids` without their records, and the damaged
  shards without what cannot be read, a record at a time.

  Each shard is rewritten beside itself under a name that no shard pattern
  matches, then renamed over it.
  """
  shards = {s for v in video_ids & written.videos.keys() for s in written.videos[v].shards}
  for shard in sorted(shards | set(written.damaged_shards)):
    rewritten = FileSystems.join(FileSystems.split(shard)[0], f".rewrite-{uuid.uuid4().hex}")
    with FileSystems.create(rewritten) as f:
      for _, record, clip in _records(shard, {}):
        if clip[schema.VIDEO_ID] not in video_ids:
          f.write(tfrecord.encode_record(record))
    FileSystems.rename([rewritten], [shard])
