"""The embedding job at any size: memory bounded by design, every video accounted for.

The job runs with `fake_model.PixelStatsHandler` in place of the model: what
is tested is the wiring (what crosses stages, what the job checks at its end,
how it resumes and stops), not the numerics.
"""

import collections
import json
import os
import pathlib
import re
import signal
import subprocess

import apache_beam as beam
import cli_checks
import fake_model
import pytest
from apache_beam.runners.worker import data_plane

from mmv_core.embeddings import schema
from mmv_core.video import video_cache
from pipelines import common
from pipelines import embed
from pipelines import reconcile

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
NUM_TRAIN_CLIPS, NUM_TEST_WINDOWS = 2, 3
CLIP_FLAGS = [
    "--num_frames=4",
    "--stride=2",
    "--min_resize=32",
    "--crop_size=32",
    f"--num_train_clips={NUM_TRAIN_CLIPS}",
    f"--num_test_windows={NUM_TEST_WINDOWS}",
    "--batch_size=4",
    *common.IN_PROCESS_RUNNER_ARGS,
]


def _flags(dataset, checkpoint_path, work_dir, output_dir) -> list[str]:
  return [
      f"--checkpoint_path={checkpoint_path}",
      f"--work_dir={work_dir}",
      f"--output_dir={output_dir}",
      f"--video_zip={dataset.video_zip}",
      f"--splits_zip={dataset.splits_zip}",
      *CLIP_FLAGS,
  ]


def _clips_by_video(output_dir) -> collections.Counter:
  """(video id, clip type, clip index) -> how many times it is written."""
  return collections.Counter(
      (clip[schema.VIDEO_ID], clip[schema.CLIP_TYPE], clip[schema.CLIP_INDEX])
      for _, record in schema.embedding_records(str(output_dir))
      for clip in [schema.parse_example(record, include_floats=False)]
  )


def _each_clip_once(dataset, output_dir) -> bool:
  expected = {
      (v.video_id, clip_type, index)
      for v in dataset.videos
      for clip_type, count in (("train", NUM_TRAIN_CLIPS), ("test", NUM_TEST_WINDOWS))
      for index in range(count)
  }
  written = _clips_by_video(output_dir)
  return set(written) == expected and set(written.values()) == {1}


# ---- Memory bounded by design ----


@pytest.fixture
def bytes_between_stages(monkeypatch):
  """Counts the bytes Beam's in-process runner passes between stages, by data channel.

  Within a fused stage, elements pass as Python objects; between stages (a
  grouping, a Flatten, a side input) they are encoded onto an in-memory data
  channel, and the runner holds all of a stage's output before the next
  stage reads it. So these bytes are what the runner holds at once.
  """
  counted: collections.Counter = collections.Counter()
  open_stream = data_plane.InMemoryDataChannel.output_stream

  def counting_stream(channel, instruction_id, transform_id):
    stream = open_stream(channel, instruction_id, transform_id)
    for name in ("_close_callback", "_flush_callback"):
      send = getattr(stream, name)
      if send is not None:

        def count_and_send(data, send=send):
          counted[transform_id] += len(data)
          return send(data)

        setattr(stream, name, count_and_send)
    return stream

  monkeypatch.setattr(data_plane.InMemoryDataChannel, "output_stream", counting_stream)
  return counted


def test_no_frames_clips_or_embeddings_cross_a_stage_boundary(
    tiny_dataset, checkpoint_path, tmp_path, bytes_between_stages
):
  """What crosses between stages stays under 1 KB per video, while each video's frames
  weigh some 25 KB and its embeddings 20 KB (1,024 floats per clip): a grouping,
  reshuffle or Flatten of frames, clips or embeddings would cross with them."""
  handler = fake_model.PixelStatsHandler(dim=1024)
  for run in ("cold", "warm"):  # Videos newly encoded, then read from the cache.
    bytes_between_stages.clear()
    flags = _flags(tiny_dataset, checkpoint_path, tmp_path / "work", tmp_path / run)
    embed.main(flags, handler)
    assert _each_clip_once(tiny_dataset, tmp_path / run)
    num_videos = len(tiny_dataset.videos)
    heaviest = max(bytes_between_stages.values())
    assert heaviest < 1024 * num_videos, (run, bytes_between_stages.most_common(3))


# ---- Nothing lost, checked by the job itself ----


class _LosingEmbedClips(embed.EmbedClips):
  """The embedding step with faults between stages: one video's reference never
  arrives, and one clip of another video is lost after its video is assembled."""

  vanished = "v_HandstandPushups_g01_c01"  # Each of these is in the tiny dataset.
  clipped = "v_SynthDiskA_g02_c01"

  def expand(self, refs):
    vanished, clipped = self.vanished, self.clipped
    refs = refs | "Vanish" >> beam.Filter(lambda ref: ref.video_id != vanished)
    outputs = super().expand(refs)

    def keep(example):
      clip = schema.parse_example(example, include_floats=False)
      return (clip[schema.VIDEO_ID], clip[schema.CLIP_TYPE], clip[schema.CLIP_INDEX]) != (
          clipped,
          "test",
          1,
      )

    outputs["examples"] = outputs["examples"] | "LoseAClip" >> beam.Filter(keep)
    return outputs


def test_a_run_that_loses_videos_fails_loudly_and_resume_completes_it(
    tiny_dataset, checkpoint_path, tmp_path, monkeypatch, capsys
):
  out = tmp_path / "out"
  flags = _flags(tiny_dataset, checkpoint_path, tmp_path / "work", out)
  monkeypatch.setattr(embed, "EmbedClips", _LosingEmbedClips)
  with pytest.raises(SystemExit) as exit_info:
    embed.main(flags, fake_model.PixelStatsHandler())
  assert exit_info.value.code == 1
  error = capsys.readouterr().err.strip().splitlines()[-1]
  assert error.startswith(f"{embed.PROG}: error: 2 of 9 videos are neither written whole once ")
  assert f"1 missing ({_LosingEmbedClips.vanished})" in error
  assert f"1 partial ({_LosingEmbedClips.clipped})" in error
  assert str(out / reconcile.UNACCOUNTED_FILE) in error and "--resume" in error
  listed = [
      json.loads(line) for line in (out / reconcile.UNACCOUNTED_FILE).read_text().splitlines()
  ]
  assert listed == [
      {"problem": "missing", "video_id": _LosingEmbedClips.vanished},
      {"problem": "partial", "video_id": _LosingEmbedClips.clipped},
  ]
  counts = json.loads((out / schema.RUN_CONFIG_FILE).read_text())["counts"]
  assert (counts["videos_written"], counts["videos_unaccounted"]) == (7, 2)
  # A shard cut short, as a full disk leaves it: its last video is then partial too.
  [shard] = (out / schema.SHARDS_DIR).glob("*.tfrecord")
  with open(shard, "r+b") as f:
    f.truncate(shard.stat().st_size - 100)

  monkeypatch.undo()
  embed.main([*flags, "--resume"], fake_model.PixelStatsHandler())
  assert _each_clip_once(tiny_dataset, out)
  counts = json.loads((out / schema.RUN_CONFIG_FILE).read_text())["counts"]
  assert (counts["videos_written"], counts["videos_unaccounted"]) == (9, 0)
  assert not (out / reconcile.UNACCOUNTED_FILE).exists()


def _written(clips: dict[str, list[tuple[str, int, int]]]) -> reconcile.WrittenOutput:
  """Written videos from (clip type, index, copies) triples."""
  counts = reconcile.ClipCounts(train=2, test=1)
  written = reconcile.WrittenOutput()
  for video_id, triples in clips.items():
    video = written.videos[video_id] = reconcile.WrittenVideo(bytearray(counts.total))
    for clip_type, index, copies in triples:
      slot = counts.slot(clip_type, index)
      if slot is None:
        video.unexpected += copies
      else:
        video.copies[slot] = copies
  return written


def test_reconciliation_names_every_way_a_video_can_go_wrong():
  whole = [("train", 0, 1), ("train", 1, 1), ("test", 0, 1)]
  written = _written(
      {
          "ok": whole,
          "part": whole[:2],
          "twice": [*whole[:2], ("test", 0, 2)],
          "extra": [*whole, ("test", 1, 1)],
          "stray": whole,
          "both": whole,
      }
  )
  found = reconcile.reconcile(
      ["ok", "part", "twice", "extra", "both", "failed", "lost"],
      written,
      {"failed": "encode", "both": "embed"},
      reconcile.ClipCounts(train=2, test=1),
  )
  assert found.complete == {"ok"}
  assert found.failed == {"failed": "encode"}
  assert found.problems == {
      "part": reconcile.PARTIAL,
      "twice": reconcile.DUPLICATED,
      "extra": reconcile.UNEXPECTED_CLIP,
      "stray": reconcile.NOT_SELECTED,
      "both": reconcile.WRITTEN_AND_FAILED,
      "lost": reconcile.MISSING,
  }
  assert found.counts() == {
      "videos_written": 1,
      "clips_written_train": 2,
      "clips_written_test": 1,
      "videos_failed": 1,
      "videos_failed_by_stage": {"encode": 1},
      "videos_unaccounted": 6,
      "shards_damaged": 0,
  }
  assert reconcile.describe_problems(found.problems, max_ids=1) == (
      "1 missing (lost), 1 partial (part), 1 duplicated (twice), 1 unexpected clip (extra), "
      "1 not selected (stray), 1 written and failed (both)"
  )


# ---- Restarts and interruptions ----


def test_resume_of_a_complete_run_has_nothing_to_do_and_writes_nothing(
    tiny_dataset, checkpoint_path, tmp_path, capsys
):
  out = tmp_path / "out"
  flags = _flags(tiny_dataset, checkpoint_path, tmp_path / "work", out)
  embed.main(flags, fake_model.PixelStatsHandler())
  before = {p: p.stat().st_mtime_ns for p in out.rglob("*")}
  capsys.readouterr()
  embed.main([*flags, "--resume"], fake_model.PixelStatsHandler())
  assert capsys.readouterr().out == (
      f"[embed] nothing to do: all {len(tiny_dataset.videos)} videos of {out} are embedded\n"
  )
  assert {p: p.stat().st_mtime_ns for p in out.rglob("*")} == before


def test_ctrl_c_is_one_line_status_130_no_temporary_files_and_resume_completes(
    tiny_dataset, checkpoint_path, tmp_path
):
  out = tmp_path / "out"
  flags = _flags(tiny_dataset, checkpoint_path, tmp_path / "work", out)
  job = subprocess.Popen(
      [*fake_model.COMMAND, "--seconds_per_batch=0.3", *flags],
      cwd=REPO_ROOT,
      stderr=subprocess.PIPE,
      stdout=subprocess.DEVNULL,
      text=True,
  )
  stderr = []
  for line in job.stderr:
    stderr.append(line)
    if embed.VIDEOS_EMBEDDED in line:  # Interrupted once it is embedding.
      job.send_signal(signal.SIGINT)
      break
  stderr += job.stderr.readlines()
  assert job.wait(timeout=120) == common.INTERRUPTED_STATUS
  last = stderr[-1].strip()
  assert re.fullmatch(
      rf"{embed.PROG}: interrupted after \d+ of {len(tiny_dataset.videos)} videos embedded .*"
      "rerun with --resume",
      last,
  ), last
  assert not any("Traceback" in line for line in stderr), "".join(stderr)
  assert not [p for p in out.rglob("*") if "beam-temp" in p.name]
  cache_tmp_dirs = list((tmp_path / "work").rglob(video_cache.TMP_DIR))
  assert cache_tmp_dirs and not [p for d in cache_tmp_dirs for p in d.iterdir()]

  embed.main([*flags, "--resume"], fake_model.PixelStatsHandler())
  assert _each_clip_once(tiny_dataset, out)


# ---- Flags ----


def test_local_paths_are_recorded_absolute(tiny_dataset, checkpoint_path, tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  os.symlink(tiny_dataset.splits_zip, "splits.zip")
  config, _ = embed.parse_args(
      [
          "--checkpoint_path=../ckpt/mmv_s3d.pkl",
          "--work_dir=work",
          "--output_dir=~/out",
          "--splits_zip=splits.zip",
          "--video_zip=gs://bucket/videos.zip",
      ]
  )
  assert config.checkpoint_path == str(tmp_path.parent / "ckpt" / "mmv_s3d.pkl")
  assert (config.work_dir, config.splits_zip) == (
      str(tmp_path / "work"),
      str(tmp_path / "splits.zip"),
  )
  assert config.output_dir == os.path.expanduser("~/out")
  assert config.video_zip == "gs://bucket/videos.zip"


@pytest.mark.parametrize(
    "flag, message",
    [
        ("--num_frame=4", "unrecognized arguments: --num_frame=4"),
        ("--direct_running_mode=multi_threading", "loses elements in Beam 2.77"),
        ("--experiments=data_buffer_time_limit_ms=100", "turns on the timed output flush"),
    ],
)
def test_an_abbreviated_flag_or_a_runner_that_loses_elements_is_refused(flag, message):
  with pytest.raises(common.UsageError, match=message):
    embed.parse_args(["--checkpoint_path=c.pkl", "--work_dir=w", "--output_dir=o", flag])


def test_a_video_folder_that_does_not_exist_is_refused_before_any_work(
    checkpoint_path, tmp_path, capsys
):
  csv_dir = tmp_path / "lists"
  csv_dir.mkdir()
  (csv_dir / "train_1.csv").write_text("video_path,start,end,label\na.avi,,,walk\n")
  (csv_dir / "test_1.csv").write_text("video_path,start,end,label\nb.avi,,,walk\n")
  argv = [
      f"--checkpoint_path={checkpoint_path}",
      f"--work_dir={tmp_path / 'work'}",
      f"--output_dir={tmp_path / 'out'}",
      "--dataset=csv",
      f"--csv_dir={csv_dir}",
      f"--video_root={tmp_path / 'no_such_folder'}",
      *common.IN_PROCESS_RUNNER_ARGS,
  ]
  assert cli_checks.usage_error(embed.main, embed.PROG, argv, capsys).strip() == (
      f"{embed.PROG}: error: --video_root: {tmp_path / 'no_such_folder'}: no such folder; the "
      f"video cache in --work_dir {tmp_path / 'work'} holds none of the 2 videos either"
  )
  assert not (tmp_path / "out").exists()
