"""The embedding job: synthetic UCF101 + random official-format checkpoint -> TFRecord embeddings.

`job_output`, the job run on the real model, is the end-to-end test: its
embeddings equal `VideoEmbedder`'s on the same frames, on one device or four.
Tests of the job's wiring (overwrite, two runs at once, resume) replace the
model with `fake_model.PixelStatsHandler`.
"""

import collections
import glob
import io
import json
import os
import pathlib
import shutil
import subprocess
import sys
import zipfile

import apache_beam as beam
import numpy as np
from PIL import Image
import cli_checks
import fake_model
import pytest
from lazy_tensorflow import tf
from numerics import assert_features_close
from apache_beam.ml.inference.base import PredictionResult

from mmv_core import checkpoints
from mmv_core import datasets
from mmv_core.embeddings import schema
from mmv_core.evaluation import linear_eval as linear_eval_lib
from mmv_core.datasets import synthetic
from mmv_core import video
from mmv_core.video import video_cache
from mmv_core.embedder import VideoEmbedder
from mmv_core.models.names import VID_REPR
from pipelines import common
from pipelines import ownership
from pipelines import embed
from pipelines import embed_summary
from pipelines import ingest_listing
from pipelines import linear_eval
from pipelines.common import FAILURES

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
CLIPS = dict(num_frames=4, stride=2, min_resize=32, crop_size=32)
NUM_TRAIN_CLIPS, NUM_TEST_WINDOWS = 2, 3
IN_PROCESS = list(common.IN_PROCESS_RUNNER_ARGS)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
  """3 classes x 3 tiny videos; one of them replaced by bytes that are no video."""
  data = synthetic.write_dataset(
      str(tmp_path_factory.mktemp("ucf")),
      num_classes=3,
      videos_per_class=3,
      clips_per_group=1,
      width=64,
      height=48,
      fps=10.0,
      duration_s=1.0,
  )
  with zipfile.ZipFile(data.video_zip) as archive:
    members = {name: archive.read(name) for name in archive.namelist()}
  bad_member = sorted(members)[4]
  members[bad_member] = b"this is not a video\n" * 50
  synthetic.write_video_zip(data.video_zip, members)
  return data, pathlib.PurePath(bad_member).stem


def _flags(dataset, checkpoint_path, work_dir, output_dir) -> list[str]:
  data, _ = dataset
  return [
      f"--checkpoint_path={checkpoint_path}",
      f"--work_dir={work_dir}",
      f"--output_dir={output_dir}",
      f"--video_zip={data.video_zip}",
      f"--splits_zip={data.splits_zip}",
      f"--num_train_clips={NUM_TRAIN_CLIPS}",
      f"--num_test_windows={NUM_TEST_WINDOWS}",
      *(f"--{k}={v}" for k, v in CLIPS.items()),
  ]


def _read_embeddings(output_dir) -> list[dict]:
  return [schema.parse_example(record) for _, record in schema.embedding_records(str(output_dir))]


@pytest.fixture(scope="module")
def job_output(dataset, checkpoint_path, tmp_path_factory):
  root = tmp_path_factory.mktemp("job")
  result = embed.run([*_flags(dataset, checkpoint_path, root / "work", root / "out"), *IN_PROCESS])
  result.wait_until_finish()
  return root


def test_every_good_video_has_its_clips_and_labels(dataset, job_output):
  data, bad_id = dataset
  records = _read_embeddings(job_output / "out")
  per_video = collections.Counter((r[schema.VIDEO_ID], r[schema.CLIP_TYPE]) for r in records)
  expected = {}
  for v in data.videos:
    if v.video_id != bad_id:
      expected[(v.video_id, "train")] = NUM_TRAIN_CLIPS
      expected[(v.video_id, "test")] = NUM_TEST_WINDOWS
  assert dict(per_video) == expected
  labels = {v.video_id: (v.label, data.class_names[v.label]) for v in data.videos}
  for r in records:
    assert (r[schema.LABEL], r[schema.LABEL_NAME]) == labels[r[schema.VIDEO_ID]]
    assert r[schema.EMBEDDING].shape == (1024,)
  indices = collections.defaultdict(set)
  for r in records:
    indices[(r[schema.VIDEO_ID], r[schema.CLIP_TYPE])].add(r[schema.CLIP_INDEX])
  assert all(idx == set(range(expected[key])) for key, idx in indices.items())


def test_tf_data_reads_the_records_as_the_readme_says(job_output):
  pattern = str(job_output / "out" / "embeddings" / "*.tfrecord")
  theirs = [record.numpy() for record in tf.data.TFRecordDataset(tf.io.gfile.glob(pattern))]
  ours = [record for _, record in schema.embedding_records(str(job_output / "out"))]
  assert ours and sorted(theirs) == sorted(ours)


def test_bad_video_is_in_failures_and_nowhere_else(dataset, job_output):
  _, bad_id = dataset
  lines = [
      json.loads(line)
      for path in glob.glob(str(job_output / "out" / "failures" / "*.jsonl"))
      for line in open(path)
      if line.strip()
  ]
  assert [f["video_id"] for f in lines] == [bad_id]
  assert lines[0]["stage"] == "encode" and lines[0]["reason"]
  assert bad_id not in {r[schema.VIDEO_ID] for r in _read_embeddings(job_output / "out")}


def test_run_record_counts_and_settings(dataset, checkpoint_path, job_output):
  data, _ = dataset
  record = json.loads((job_output / "out" / "run.json").read_text())
  good = len(data.videos) - 1
  assert record["counts"] == {
      "videos_written": good,
      "clips_written_train": good * NUM_TRAIN_CLIPS,
      "clips_written_test": good * NUM_TEST_WINDOWS,
      "videos_failed": 1,
      "videos_failed_by_stage": {"encode": 1},
      "videos_unaccounted": 0,
      "shards_damaged": 0,
  }
  assert record["backbone"] == "s3d"
  assert record["checkpoint_sha256"] == checkpoints.load_checkpoint(checkpoint_path).sha256
  assert record["settings"]["num_frames"] == CLIPS["num_frames"]
  assert record[schema.NUM_TRAIN_CLIPS] == NUM_TRAIN_CLIPS
  assert record["versions"]["jax"]


def test_embeddings_equal_video_embedder_on_the_same_frames(checkpoint_path, job_output):
  records = _read_embeddings(job_output / "out")
  cached = {}
  for shard in glob.glob(str(job_output / "work" / "**" / "*.tfrecord"), recursive=True):
    for v in video_cache.read_shard(shard):
      cached[v.video_id] = v
  embedder = VideoEmbedder.from_checkpoint(checkpoint_path)
  video_id = sorted(cached)[0]
  frames = video.decode_jpeg_frames(cached[video_id].frames)
  test = embedder.embed(frames, num_windows=NUM_TEST_WINDOWS, **CLIPS)
  train_clips = video.train_clips(
      frames, num_clips=NUM_TRAIN_CLIPS, seed=video.video_seed(video_id, 0), **CLIPS
  )
  train = embedder.embed_clips(train_clips)[VID_REPR]
  got = {
      (r[schema.CLIP_TYPE], r[schema.CLIP_INDEX]): r[schema.EMBEDDING]
      for r in records
      if r[schema.VIDEO_ID] == video_id
  }
  for i in range(NUM_TEST_WINDOWS):
    assert_features_close(got[("test", i)], test[i])
  for i in range(NUM_TRAIN_CLIPS):
    assert_features_close(got[("train", i)], train[i])


def test_rerun_on_four_devices_reuses_the_cache_and_gives_the_same_embeddings(
    dataset, checkpoint_path, job_output
):
  """A second run (4 forced host devices, other output dir) fetches nothing."""
  data, _ = dataset
  os.rename(data.video_zip, data.video_zip + ".moved")  # Any fetch would now fail.
  try:
    out = job_output / "out_4dev"
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4"}
    # One video of nine fails: more than the default --max_failed_share.
    completed = subprocess.run(
        [
            sys.executable,
            "-m",
            "pipelines.embed",
            *_flags(dataset, checkpoint_path, job_output / "work", out),
            *IN_PROCESS,
            "--max_failed_share=0.2",
        ],
        check=True,
        env=env,
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
    )
  finally:
    os.rename(data.video_zip + ".moved", data.video_zip)
  assert f"{embed.LOG_PREFIX} model: s3d on 4 cpu device(s), batches of 8 clips" in completed.stderr
  # Quiet by default: no INFO lines from Beam or JAX.
  assert "INFO" not in completed.stderr and "Unable to initialize backend" not in completed.stderr
  rerun = json.loads((out / "run.json").read_text())["counts"]
  # Only the video that failed before is tried again, and fails to fetch now.
  assert rerun["videos_failed_by_stage"] == {"fetch": 1}
  key = lambda r: (r[schema.VIDEO_ID], r[schema.CLIP_TYPE], r[schema.CLIP_INDEX])
  one = {key(r): r[schema.EMBEDDING] for r in _read_embeddings(job_output / "out")}
  four = {key(r): r[schema.EMBEDDING] for r in _read_embeddings(out)}
  assert one.keys() == four.keys()
  for k in one:
    assert_features_close(four[k], one[k])


def test_an_unreadable_video_zip_is_no_error_when_the_cache_holds_videos(
    dataset, checkpoint_path, job_output, tmp_path
):
  data, _ = dataset
  moved = pathlib.Path(data.video_zip + ".moved")
  selected = ingest_listing.select_videos(datasets.UCF101.list_videos(data.splits_zip), None, None)
  os.rename(data.video_zip, moved)
  try:
    ingest_listing.check_videos_readable(
        datasets.UCF101, data.video_zip, str(job_output / "work"), selected
    )
    with pytest.raises(common.UsageError, match="holds none of the 9 videos"):
      ingest_listing.check_videos_readable(datasets.UCF101, data.video_zip, str(tmp_path), selected)
  finally:
    os.rename(moved, data.video_zip)
  not_a_zip = tmp_path / "videos.zip"
  not_a_zip.write_bytes(b"a partial download" * 100)
  with pytest.raises(common.UsageError, match=f"--video_zip: {not_a_zip}: .*holds none"):
    ingest_listing.check_videos_readable(datasets.UCF101, str(not_a_zip), str(tmp_path), selected)


def test_a_new_run_refuses_an_output_dir_that_another_run_wrote(
    dataset, checkpoint_path, job_output
):
  before = sorted(p.name for p in (job_output / "out").rglob("*"))
  with pytest.raises(common.UsageError, match="belongs to another run .*--overwrite"):
    embed.run(
        [*_flags(dataset, checkpoint_path, job_output / "work", job_output / "out"), *IN_PROCESS]
    )
  assert sorted(p.name for p in (job_output / "out").rglob("*")) == before


def test_overwrite_replaces_the_previous_output(dataset, checkpoint_path, job_output, tmp_path):
  out = tmp_path / "out"
  flags = [
      *_flags(dataset, checkpoint_path, job_output / "work", out),
      *IN_PROCESS,
      "--classes="
      + ",".join(sorted({r[schema.LABEL_NAME] for r in _read_embeddings(job_output / "out")})[:1]),
  ]
  embed.run(flags, fake_model.PixelStatsHandler()).wait_until_finish()
  (out / "stale.txt").write_text("from the first run")
  embed.run([*flags, "--overwrite"], fake_model.PixelStatsHandler()).wait_until_finish()

  assert not (out / "stale.txt").exists()
  records = _read_embeddings(out)
  keys = [(r[schema.VIDEO_ID], r[schema.CLIP_TYPE], r[schema.CLIP_INDEX]) for r in records]
  assert len(keys) == len(set(keys)) > 0


def _listing(directory: pathlib.Path) -> list[str]:
  return sorted(str(p.relative_to(directory)) for p in directory.rglob("*"))


def test_overwrite_refuses_a_directory_holding_the_runs_inputs_or_no_runs_output(
    dataset, checkpoint_path, job_output, tmp_path
):
  # The checkpoint, inside the directory --overwrite would delete.
  holder = tmp_path / "holder"
  holder.mkdir()
  inside = shutil.copy(checkpoint_path, holder / "mmv_s3d.pkl")
  before = _listing(holder)
  with pytest.raises(common.UsageError, match=f"would delete --checkpoint_path {inside}, which"):
    embed.run([*_flags(dataset, inside, job_output / "work", holder), *IN_PROCESS, "--overwrite"])
  assert _listing(holder) == before

  # A directory that no run claimed: it may hold anything.
  notes = tmp_path / "notes"
  notes.mkdir()
  (notes / "results.txt").write_text("a week of work")
  with pytest.raises(common.UsageError, match="deletes only a directory that an earlier run"):
    embed.run(
        [*_flags(dataset, checkpoint_path, job_output / "work", notes), *IN_PROCESS, "--overwrite"]
    )
  assert (notes / "results.txt").read_text() == "a week of work"


def test_shards_of_a_run_that_claimed_nothing_are_refused_and_left_unclaimed(
    dataset, checkpoint_path, job_output, tmp_path
):
  legacy = shutil.copytree(job_output / "out", tmp_path / "legacy")
  (legacy / ownership.OWNER_FILE).unlink()  # As the first release wrote its output.
  before = _listing(legacy)
  flags = [*_flags(dataset, checkpoint_path, job_output / "work", legacy), *IN_PROCESS]
  for extra in ([], ["--overwrite"]):
    with pytest.raises(common.UsageError, match="shards, of a run that did not claim it"):
      embed.run([*flags, *extra])
  assert _listing(legacy) == before


def test_a_run_started_while_another_runs_into_its_output_dir_is_refused(
    dataset, checkpoint_path, job_output, tmp_path, capsys, monkeypatch
):
  """The second run is refused before any work; the first finishes untouched.

  (Runs racing for the claim: tests/pipelines/test_common.py.)
  """
  out = tmp_path / "out"
  argv = [
      *_flags(dataset, checkpoint_path, job_output / "work", out),
      *IN_PROCESS,
      "--max_videos=2",
  ]
  refusals = []
  run_pipeline = beam.Pipeline.run

  def second_run_starts_first(pipeline, *args, **kwargs):
    """The first run has claimed the directory; a second starts before the first's work."""
    monkeypatch.setattr(beam.Pipeline, "run", run_pipeline)
    refusals.append(cli_checks.usage_error(embed.main, embed.PROG, argv, capsys))
    return run_pipeline(pipeline, *args, **kwargs)

  monkeypatch.setattr(beam.Pipeline, "run", second_run_starts_first)
  embed.main(argv, fake_model.PixelStatsHandler())

  assert refusals[0].startswith(f"{embed.PROG}: error: {out} belongs to another run")
  keys = [
      (r[schema.VIDEO_ID], r[schema.CLIP_TYPE], r[schema.CLIP_INDEX]) for r in _read_embeddings(out)
  ]
  assert len(keys) == len(set(keys)) == 2 * (NUM_TRAIN_CLIPS + NUM_TEST_WINDOWS)
  counts = json.loads((out / "run.json").read_text())["counts"]
  assert counts["clips_written_train"] + counts["clips_written_test"] == len(keys)


def _clip_keys(output_dir) -> list[tuple]:
  return [
      (r[schema.VIDEO_ID], r[schema.CLIP_TYPE], r[schema.CLIP_INDEX])
      for r in _read_embeddings(output_dir)
  ]


def test_a_killed_run_is_completed_by_resume_each_clip_once(
    dataset, checkpoint_path, job_output, tmp_path
):
  out = tmp_path / "out"
  flags = [
      *_flags(dataset, checkpoint_path, job_output / "work", out),
      *IN_PROCESS,
      "--max_failed_share=0.5",
  ]
  killed = subprocess.Popen(
      [*fake_model.COMMAND, "--seconds_per_batch=0.2", *flags],
      cwd=REPO_ROOT,
      stderr=subprocess.PIPE,
      stdout=subprocess.DEVNULL,
      text=True,
  )
  for line in killed.stderr:  # Killed once it is embedding.
    if embed.VIDEOS_EMBEDDED in line:
      killed.kill()
      break
  assert killed.wait() != 0

  embed.main([*flags, "--resume"], fake_model.PixelStatsHandler())

  keys = _clip_keys(out)
  assert len(keys) == len(set(keys))
  assert sorted(keys) == sorted(_clip_keys(job_output / "out"))
  record = json.loads((out / "run.json").read_text())
  assert record["runs"] == 2
  assert record["counts"]["clips_written_train"] + record["counts"]["clips_written_test"] == len(
      keys
  )


def test_resume_of_a_finished_run_keeps_its_videos_and_retries_the_failed_one(
    dataset, checkpoint_path, job_output, tmp_path
):
  out = tmp_path / "out"
  shutil.copytree(job_output / "out", out)
  before = sorted(p.name for p in (out / "embeddings").iterdir())

  embed.run(
      [*_flags(dataset, checkpoint_path, job_output / "work", out), *IN_PROCESS, "--resume"],
      fake_model.PixelStatsHandler(),
  ).wait_until_finish()

  assert sorted(_clip_keys(out)) == sorted(_clip_keys(job_output / "out"))
  assert set(before) <= {p.name for p in (out / "embeddings").iterdir()}
  failures = [json.loads(l) for l in (out / "failures" / "failures.jsonl").read_text().splitlines()]
  assert [f["video_id"] for f in failures] == [dataset[1]]  # Tried again, failed again.
  assert (
      json.loads((out / "run.json").read_text())["counts"]
      == json.loads((job_output / "out" / "run.json").read_text())["counts"]
  )


def test_resume_with_other_settings_is_refused_naming_them(
    dataset, checkpoint_path, job_output, tmp_path
):
  out = tmp_path / "out"
  shutil.copytree(job_output / "out", out)
  with pytest.raises(common.UsageError, match="num_test_windows 3 -> 2"):
    embed.run(
        [
            *_flags(dataset, checkpoint_path, job_output / "work", out),
            *IN_PROCESS,
            "--resume",
            "--num_test_windows=2",
        ]
    )
  # The precision is recorded in run.json: other arithmetic would give other embeddings.
  with pytest.raises(common.UsageError, match="precision 'float32' -> 'bfloat16'"):
    embed.run(
        [
            *_flags(dataset, checkpoint_path, job_output / "work", out),
            *IN_PROCESS,
            "--resume",
            "--precision=bfloat16",
        ]
    )
  with pytest.raises(common.UsageError, match="no earlier run owns"):
    embed.run(
        [
            *_flags(dataset, checkpoint_path, job_output / "work", tmp_path / "new"),
            *IN_PROCESS,
            "--resume",
        ]
    )


@pytest.mark.parametrize(
    "flag, message",
    [
        ("--num_frames=0", "--num_frames must be positive, got 0"),
        ("--batch_size=-1", "--batch_size must be positive"),
        ("--crop_size=64", "--crop_size 64 is larger than --min_resize 32"),
        ("--max_videos=-1", "--max_videos must be positive"),
        ("--classes=NoSuchClass", "unknown classes ['NoSuchClass']"),
        (
            "--video_zip=/nonexistent/videos.zip",
            "--video_zip: /nonexistent/videos.zip: cannot stat",
        ),
        (
            "--backbone=tsm_resnet_x1",
            "a s3d checkpoint (its parameter tree is exactly that model's), not tsm_resnet_x1, "
            "which --backbone names; pass --backbone=s3d",
        ),
    ],
)
def test_unusable_settings_are_one_line_and_status_2_before_any_work(
    dataset, checkpoint_path, tmp_path, flag, message, capsys
):
  # In this process, through `common.run_main` as `python -m pipelines.embed`
  # runs it: the command itself is run by the tests of its summary and --help.
  work, out = tmp_path / "work", tmp_path / "out"
  argv = [*_flags(dataset, checkpoint_path, work, out), *IN_PROCESS, flag]
  error = cli_checks.usage_error(embed.main, embed.PROG, argv, capsys)
  assert message in error
  assert not out.exists() and not (work / "videos").exists()


def test_both_clip_counts_zero_is_refused_as_nothing_to_embed():
  config = embed.EmbedJobConfig("c.pkl", "w", "o", num_train_clips=0, num_test_windows=0)
  assert embed.settings_problems(config) == [
      "--num_train_clips and --num_test_windows are both 0: nothing to embed"
  ]


def test_a_checkpoint_with_nan_weights_is_refused_before_any_work(dataset, tmp_path):
  params, state = checkpoints.random_trees(*checkpoints.checkpoint_shapes("s3d"), seed=0)
  module = sorted(params)[0]
  name = sorted(params[module])[0]
  params[module][name] = np.full_like(params[module][name], np.nan)
  path = tmp_path / "mmv_s3d.npz"
  checkpoints.save_npz(checkpoints.Checkpoint(params=params, state=state, path="", sha256=""), path)
  with pytest.raises(common.UsageError, match="NaN or infinite"):
    embed.run([*_flags(dataset, str(path), tmp_path / "work", tmp_path / "out"), *IN_PROCESS])
  assert not (tmp_path / "out").exists()


def test_an_unwritable_work_dir_is_refused_before_any_work(dataset, checkpoint_path, tmp_path):
  work = tmp_path / "work"
  work.write_text("a file where the work directory should be")
  with pytest.raises(common.UsageError, match="cannot write to --work_dir"):
    embed.run([*_flags(dataset, checkpoint_path, work, tmp_path / "out"), *IN_PROCESS])
  assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "written, failed, share, problem",
    [
        (0, 0, 0.1, "no video was embedded (0 failed)"),
        (0, 3, 1.0, "no video was embedded (3 failed)"),
        (8, 1, 0.1, "1 of 9 videos failed, more than --max_failed_share 0.1"),
        (9, 1, 0.1, None),
        (5, 0, 0.0, None),
    ],
)
def test_a_run_that_embeds_nothing_or_too_little_is_a_failure(written, failed, share, problem):
  config = embed.EmbedJobConfig("c.pkl", "w", "o", max_failed_share=share)
  counts = {
      "videos_written": written,
      "videos_failed": failed,
      "videos_unaccounted": 0,
      "shards_damaged": 0,
  }
  assert embed_summary.outcome_problem(config, counts) == problem


def test_the_command_ends_with_its_summary_and_status_1_when_too_many_fail(
    dataset, checkpoint_path, job_output, tmp_path, capsys
):
  """As `python -m pipelines.embed` runs it (whose quiet stderr the four-device rerun checks)."""
  out = tmp_path / "out"
  argv = [
      *_flags(dataset, checkpoint_path, job_output / "work", out),
      *IN_PROCESS,
      "--max_failed_share=0",
  ]
  with pytest.raises(SystemExit) as ended:
    common.run_main(lambda a: embed.main(a, fake_model.PixelStatsHandler()), embed.PROG, argv)
  result = capsys.readouterr()
  counts = json.loads((out / "run.json").read_text())["counts"]
  summary = [l for l in result.out.splitlines() if l.startswith("[embed] ")]
  assert summary[0].startswith("[embed] finished in ")
  assert (
      f"{counts['videos_written']} videos embedded ({counts['clips_written_train']} "
      f"training clips, {counts['clips_written_test']} test windows), 1 failed (encode: 1)"
  ) in summary[0]
  assert summary[1:] == [
      f"[embed] embeddings: {out}/embeddings/*.tfrecord*",
      f"[embed] run record: {out}/run.json",
      f"[embed] failures:   {out}/failures/failures.jsonl",
  ]
  assert ended.value.code == 1
  assert result.err.strip().splitlines()[-1] == (
      f"{embed.PROG}: error: 1 of {counts['videos_written'] + 1} videos failed, more than "
      "--max_failed_share 0"
  )


def test_help_is_python_dash_m_with_every_flag_documented():
  text = cli_checks.help_text("pipelines.embed")
  assert text.startswith(f"usage: {embed.PROG} ")
  assert cli_checks.undocumented_options(text) == []


def test_a_misspelt_flag_is_an_error_naming_it(capsys):
  error = cli_checks.usage_error(
      embed.main,
      embed.PROG,
      ["--checkpoint_path=c.pkl", "--work_dir=w", "--output_dir=o", "--max_num_wrkers=3"],
      capsys,
  )
  assert "--max_num_wrkers=3" in error


@pytest.mark.parametrize(
    "argv, problem",
    [
        ([], "the following arguments are required: --checkpoint_path, --work_dir, --output_dir"),
        (
            # Beam's own options are passed on, not taken for misspellings.
            ["--chekpoint_path=c.pkl", "--work_dir=w", "--output_dir=o", "--num_workers=4"],
            "required: --checkpoint_path; unrecognized: --chekpoint_path (did you mean "
            "--checkpoint_path?) (see",
        ),
        (
            ["--checkpoint_path=c.pkl", "--work_dir=w", "--output_dir=o", "--max_videos=abc"],
            "argument --max_videos: invalid int value: 'abc'",
        ),
        (
            ["--checkpoint_path=c.pkl", "--work_dir=w", "--output_dir=o", "--backbone=s3"],
            "argument --backbone: invalid choice: 's3'",
        ),
    ],
)
def test_a_flag_argparse_refuses_is_one_line_naming_it(argv, problem, capsys):
  error = cli_checks.usage_error(embed.main, embed.PROG, argv, capsys)
  assert problem in error and error.rstrip().endswith(f"(see {embed.PROG} --help)")


def _clips(video_id: str, num_train: int, num_test: int, value: float = 1.0):
  return [
      (
          embed.ClipKey(video_id, 2, "Archery", clip_type, i),
          PredictionResult(None, {VID_REPR: np.full(4, value, np.float32)}),
      )
      for clip_type, n in (("train", num_train), ("test", num_test))
      for i in range(n)
  ]


def _assembled(results, num_train=2, num_test=3) -> tuple[dict, dict]:
  """Runs `AssembleVideosFn` over (ClipKey, result) pairs in one bundle.

  Returns (video id -> its examples parsed, video id -> its failure reason).
  """
  config = embed.EmbedJobConfig(
      "c.pkl", "w", "o", num_train_clips=num_train, num_test_windows=num_test
  )
  fn = embed.AssembleVideosFn(config)
  fn.start_bundle()
  outputs = [*(o for result in results for o in fn.process(result) or ()), *fn.finish_bundle()]
  examples, failures = collections.defaultdict(list), {}
  for output in outputs:
    if isinstance(output, beam.pvalue.TaggedOutput):
      value = getattr(output.value, "value", output.value)  # Unwrap a WindowedValue.
      if output.tag == FAILURES:
        assert value["video_id"] not in failures
        failures[value["video_id"]] = value["reason"]
    else:
      parsed = schema.parse_example(output)
      examples[parsed[schema.VIDEO_ID]].append(parsed)
  return dict(examples), failures


def test_a_video_is_written_whole_in_clip_order_once_its_last_clip_is_in():
  interleaved = [
      clip for pair in zip(_clips("v_a", 2, 3), reversed(_clips("v_b", 2, 3))) for clip in pair
  ]
  examples, failures = _assembled(interleaved)
  assert failures == {}
  for video_id in ("v_a", "v_b"):
    assert [(p[schema.CLIP_TYPE], p[schema.CLIP_INDEX]) for p in examples[video_id]] == [
        ("test", 0),
        ("test", 1),
        ("test", 2),
        ("train", 0),
        ("train", 1),
    ]
    assert all(
        p[schema.LABEL] == 2 and p[schema.LABEL_NAME] == "Archery" for p in examples[video_id]
    )


def test_an_incomplete_or_broken_video_is_one_failure_and_no_examples():
  failed_batch = [
      (key, embed.InferenceFailure("MemoryError: out of device memory"))
      for key, _ in _clips("v_oom", 1, 1)
  ]
  examples, failures = _assembled(
      [
          *_clips("v_short", 2, 2),
          *_clips("v_nan", 2, 3, value=np.nan),
          *_clips("v_oom", 1, 0),
          *failed_batch,
          *[(key, result) for key, result in _clips("v_oom", 2, 3)][2:],
          *_clips("v_ok", 2, 3),
      ]
  )
  assert set(examples) == {"v_ok"}
  assert failures == {
      "v_short": "4 of 5 clips embedded",
      "v_nan": "non-finite embedding in test clip 0",
      "v_oom": "MemoryError: out of device memory",
  }


def test_a_batch_whose_inference_raises_gives_each_clip_the_failure():
  class Failing(fake_model.PixelStatsHandler):

    def run_inference(self, batch, model, inference_args=None):
      raise MemoryError("out of device memory")

  keys = [key for key, _ in _clips("v_a", 2, 0) + _clips("v_b", 1, 1)]
  batch = [(key, np.zeros((4, 32, 32, 3), np.uint8)) for key in keys]
  results = embed.KeyedHandlerKeepingFailures(Failing()).run_inference(batch, None)
  assert results == [
      (key, embed.InferenceFailure("MemoryError: out of device memory")) for key in keys
  ]
  ok = embed.KeyedHandlerKeepingFailures(fake_model.PixelStatsHandler()).run_inference(batch, None)
  assert [key for key, _ in ok] == keys and all(isinstance(r, PredictionResult) for _, r in ok)


def test_linear_evaluation_of_the_jobs_output_reports_all_splits_and_the_missing_video(
    dataset, job_output
):
  data, bad_id = dataset
  eval_dir = job_output / "linear_eval"
  flags = [
      f"--embeddings_dir={job_output / 'out'}",
      f"--output_dir={eval_dir}",
      f"--splits_zip={data.splits_zip}",
      *IN_PROCESS,
  ]
  with pytest.raises(linear_eval_lib.IncompleteSplitError, match=bad_id):
    linear_eval.main(flags)  # The bad video is listed in the splits but has no embeddings.
  linear_eval.main([*flags, "--allow_missing"])
  metrics = json.loads((eval_dir / "metrics.json").read_text())
  assert sorted(metrics["splits"]) == ["1", "2", "3"]
  assert all(metrics["splits"][s]["input_check"]["missing_videos"] in ([], [bad_id]) for s in "123")
  report = (eval_dir / "report.md").read_text()
  assert bad_id in report and "confusion_split3.png" in report


def _jpeg(frame: np.ndarray) -> bytes:
  encoded = io.BytesIO()
  Image.fromarray(frame).save(encoded, format="JPEG")
  return encoded.getvalue()


def test_exact_train_clips_flag_reaches_the_clip_sampler(tmp_path):
  rng = np.random.default_rng(0)
  jpegs = tuple(map(_jpeg, rng.integers(0, 256, (12, 36, 48, 3), dtype=np.uint8)))
  writer = video_cache.ShardWriter(str(tmp_path))
  writer.add(video_cache.CachedVideo("v_Archery_g01_c01", 2, "Archery", jpegs, 0))
  [entry] = writer.commit()
  ref = video_cache.VideoRef("v_Archery_g01_c01", 2, "Archery", entry)
  required = ["--checkpoint_path=c.pkl", "--work_dir=w", "--output_dir=o"]
  clip_flags = [f"--{name}={value}" for name, value in CLIPS.items()] + [
      "--num_train_clips=6",
      "--num_test_windows=1",
  ]
  sampled = {}
  for exact in (False, True):
    config, _ = embed.parse_args(required + clip_flags + ["--exact_train_clips"] * exact)
    assert config.exact_train_clips == exact
    sampled[exact] = np.stack(
        [
            clip
            for key, clip in embed.sample_clips(ref, config)
            if key.clip_type == schema.CLIP_TYPE_TRAIN
        ]
    )
    expected, _ = video.clips_from_jpegs(
        jpegs,
        num_train_clips=6,
        num_test_windows=1,
        **CLIPS,
        seed=video.video_seed(ref.video_id, 0),
        exact_train_clips=exact,
    )
    np.testing.assert_array_equal(sampled[exact], expected)
  assert not np.array_equal(sampled[False], sampled[True])
