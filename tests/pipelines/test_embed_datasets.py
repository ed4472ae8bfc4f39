"""The embedding job on HMDB51-layout and CSV datasets: listing, fetching whole
files, recipes, segments, cache keys and run.json, end to end."""

import collections
import json
import os
import urllib.parse

import fake_model
import numpy as np
import pytest
import simplejpeg

from mmv_core.datasets import dataset_listing
from mmv_core import datasets
from mmv_core.embeddings import schema
from mmv_core.video import encoding_recipes
from mmv_core.evaluation import linear_eval as linear_eval_lib
from mmv_core.datasets import synthetic
from mmv_core.datasets import synthetic_hmdb51
from mmv_core.video import video_cache
from launch import dataflow
from pipelines import common
from pipelines import embed
from pipelines import embed_config
from pipelines import ingest
from pipelines import ingest_fetch
from pipelines import linear_eval as linear_eval_job

CLIPS = dict(num_frames=4, stride=1, min_resize=32, crop_size=32)
NUM_TRAIN_CLIPS, NUM_TEST_WINDOWS = 2, 3
IN_PROCESS = list(common.IN_PROCESS_RUNNER_ARGS)


@pytest.fixture(scope="module")
def hmdb(tmp_path_factory):
  """2 classes x 4 tiny videos with awkward names; one replaced by bytes that are no
  video, one deleted. Returns (dataset, {video id: the stage it must fail at})."""
  data = synthetic_hmdb51.write_dataset(
      str(tmp_path_factory.mktemp("hmdb")),
      num_classes=2,
      videos_per_class=4,
      width=64,
      height=48,
      fps=10.0,
      duration_s=1.0,
  )
  bad = data.videos[1]
  with open(os.path.join(data.video_root, bad.label_name, bad.file_name), "wb") as f:
    f.write(b"this is not a video\n" * 50)
  gone = data.videos[6]
  os.remove(os.path.join(data.video_root, gone.label_name, gone.file_name))
  return data, {
      _video_id(bad.file_name): ingest_fetch.STAGE_ENCODE,
      _video_id(gone.file_name): ingest_fetch.STAGE_FETCH,
  }


def _video_id(file_name: str) -> str:
  return dataset_listing.safe_video_id(file_name.removesuffix(".avi"))


def _flags(checkpoint_path, work_dir, output_dir) -> list[str]:
  return [
      f"--checkpoint_path={checkpoint_path}",
      f"--work_dir={work_dir}",
      f"--output_dir={output_dir}",
      f"--num_train_clips={NUM_TRAIN_CLIPS}",
      f"--num_test_windows={NUM_TEST_WINDOWS}",
      "--batch_size=4",
      *(f"--{k}={v}" for k, v in CLIPS.items()),
      *IN_PROCESS,
  ]


def _read_embeddings(output_dir) -> list[dict]:
  return [schema.parse_example(record) for _, record in schema.embedding_records(str(output_dir))]


@pytest.fixture(scope="module")
def hmdb_job(hmdb, checkpoint_path, tmp_path_factory):
  data, _ = hmdb
  root = tmp_path_factory.mktemp("hmdb_job")
  embed.run(
      [
          "--dataset=hmdb51",
          f"--splits_dir={data.splits_dir}",
          f"--video_root={data.video_root}",
          *_flags(checkpoint_path, root / "work", root / "out"),
      ],
      fake_model.PixelStatsHandler(),
  ).wait_until_finish()
  return root


def test_hmdb51_every_video_is_embedded_under_its_awkward_name_or_fails_alone(hmdb, hmdb_job):
  data, failing = hmdb
  records = _read_embeddings(hmdb_job / "out")
  per_video = collections.Counter((r[schema.VIDEO_ID], r[schema.CLIP_TYPE]) for r in records)
  expected = {}
  for v in data.videos:
    if _video_id(v.file_name) not in failing:
      expected[(_video_id(v.file_name), "train")] = NUM_TRAIN_CLIPS
      expected[(_video_id(v.file_name), "test")] = NUM_TEST_WINDOWS
  assert dict(per_video) == expected
  labels = {_video_id(v.file_name): (v.label, v.label_name) for v in data.videos}
  for r in records:
    assert (r[schema.LABEL], r[schema.LABEL_NAME]) == labels[r[schema.VIDEO_ID]]
  names = {urllib.parse.unquote(r[schema.VIDEO_ID]) for r in records}
  assert any(set(name) & set("'&!()[]#+;") for name in names)
  assert any(not name.isascii() for name in names)

  failures = [
      json.loads(line)
      for line in open(hmdb_job / "out" / "failures" / "failures.jsonl")
      if line.strip()
  ]
  assert {f["video_id"]: f["stage"] for f in failures} == failing
  assert len(failures) == len(failing) and all(f["reason"] for f in failures)


def test_hmdb51_run_record_names_the_dataset_and_its_recipe(hmdb, hmdb_job):
  data, _ = hmdb
  record = json.loads((hmdb_job / "out" / "run.json").read_text())
  assert record["dataset"] == {
      "name": "hmdb51",
      "recipe": datasets.HMDB51.encoding_recipe.key,
      "splits_location": data.splits_dir,
      "videos_location": data.video_root,
      "class_names": list(data.class_names),
      "splits": [1, 2, 3],
  }
  assert record["settings"]["dataset"] == "hmdb51"
  assert record["settings"]["stride"] == CLIPS["stride"]


def test_hmdb51_frames_are_cached_under_dataset_and_recipe(hmdb_job):
  keys = video_cache.read_index(str(hmdb_job / "work"))
  prefix = f"hmdb51/{datasets.HMDB51.encoding_recipe.key}/"
  assert keys and all(key.startswith(prefix) for key in keys)
  entry = next(iter(keys.values()))
  frame = next(video_cache.read_shard(entry.shard, [entry.video_id])).frames[0]
  height, width, _, _ = simplejpeg.decode_jpeg_header(frame)
  assert (width, height) == (341, 256)  # HMDB51's recipe: smaller side 256.


def test_sampling_defaults_come_from_the_dataset_unless_given():
  required = ["--checkpoint_path=c.pkl", "--work_dir=w", "--output_dir=o"]
  hmdb_flags = ["--dataset=hmdb51", "--splits_dir=s", "--video_root=v"]
  config, _ = embed.parse_args(required + hmdb_flags)
  protocol = datasets.HMDB51.protocol
  assert (
      config.num_frames,
      config.stride,
      config.min_resize,
      config.crop_size,
      config.num_train_clips,
      config.num_test_windows,
  ) == (
      protocol.num_frames,
      protocol.stride,
      protocol.min_resize,
      protocol.crop_size,
      protocol.num_train_clips,
      protocol.num_test_windows,
  )
  assert embed.parse_args(required + hmdb_flags + ["--stride=3"])[0].stride == 3
  ucf, _ = embed.parse_args(required)
  assert (ucf.stride, ucf.crop_size, ucf.video_zip, ucf.splits_dir) == (
      datasets.UCF101.protocol.stride,
      datasets.UCF101.protocol.crop_size,
      datasets.UCF101.default_videos,
      None,
  )


def test_recipe_flag_chooses_the_re_encoding_and_keys_the_cache_apart():
  required = ["--checkpoint_path=c.pkl", "--work_dir=w", "--output_dir=o"]
  csv_default, _ = embed.parse_args(required + ["--dataset=csv", "--csv_dir=c"])
  csv_hmdb, _ = embed.parse_args(required + ["--dataset=csv", "--csv_dir=c", "--recipe=hmdb51"])
  ucf_hmdb, _ = embed.parse_args(required + ["--recipe=hmdb51"])
  assert csv_default.recipe == "ucf101"  # Recorded in run.json: a resume must repeat it.
  assert csv_hmdb.dataset_spec.encoding_recipe == encoding_recipes.HMDB51
  assert "recipe" in embed_config.RESUME_SETTINGS

  video = dataset_listing.ListedVideo(
      video_id="v_Archery_g01_c01",
      name="v_Archery_g01_c01.avi",
      location="UCF101/v_Archery_g01_c01.avi",
      label=0,
      label_name="Archery",
      roles=((1, "train"),),
      group="01",
  )
  ucf_default = embed.parse_args(required)[0].dataset_spec
  assert ingest_fetch.cache_key(ucf_default, video) == "v_Archery_g01_c01"  # Today's keys.
  other = ingest_fetch.cache_key(ucf_hmdb.dataset_spec, video)
  assert other != "v_Archery_g01_c01" and encoding_recipes.HMDB51.key in other
  assert ingest_fetch.cache_key(csv_hmdb.dataset_spec, video) != ingest_fetch.cache_key(
      csv_default.dataset_spec, video
  )


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--dataset=kinetics"], "unknown dataset 'kinetics'"),
        (["--splits_dir=s"], "--splits_dir is not a flag of --dataset=ucf101"),
        (["--dataset=csv", "--video_zip=v.zip"], "--video_zip is not a flag of --dataset=csv"),
    ],
)
def test_dataset_flag_mistakes_are_usage_errors(flags, message):
  with pytest.raises(common.UsageError, match=message):
    embed.parse_args(["--checkpoint_path=c.pkl", "--work_dir=w", "--output_dir=o", *flags])


def test_hmdb51_without_its_split_folder_is_refused_before_any_work(checkpoint_path, tmp_path):
  with pytest.raises(common.UsageError, match="--dataset=hmdb51 needs --splits_dir"):
    embed.run(
        [
            "--dataset=hmdb51",
            "--video_root=v",
            *_flags(checkpoint_path, tmp_path / "work", tmp_path / "out"),
        ]
    )
  assert not (tmp_path / "out").exists()


# ---- CSV ----


def _two_halves_video(path) -> None:
  """2 s at 10 fps: black for the first second, white for the second."""
  frames = np.zeros((20, 48, 64, 3), np.uint8)
  frames[10:] = 255
  path.write_bytes(synthetic.encode_avi(frames, 10.0))


def _mean_brightness(jpegs) -> list[float]:
  return [float(simplejpeg.decode_jpeg(jpeg).mean()) for jpeg in jpegs]


def test_csv_segments_give_frames_of_their_segment_only(tmp_path):
  videos = tmp_path / "videos"
  videos.mkdir()
  _two_halves_video(videos / "Amélie's walk, take #2.avi")
  csv_dir = tmp_path / "csv"
  csv_dir.mkdir()
  rows = [
      '"Amélie\'s walk, take #2.avi",0,0.9,dark\n',
      '"Amélie\'s walk, take #2.avi",1.1,,light\n',
  ]
  (csv_dir / "train_1.csv").write_text("video_path,start,end,label\n" + rows[0], "utf-8")
  (csv_dir / "test_1.csv").write_text("video_path,start,end,label\n" + rows[1], "utf-8")
  work_dir = str(tmp_path / "work")

  totals = ingest.main(
      ["--dataset=csv", f"--csv_dir={csv_dir}", f"--video_root={videos}", f"--work_dir={work_dir}"]
  )

  assert totals["videos_cached"] == 2
  by_name = {}
  for key, entry in video_cache.read_index(work_dir).items():
    assert key.startswith(f"csv/{datasets.CSV.encoding_recipe.key}/")
    cached = next(video_cache.read_shard(entry.shard, [key]))
    by_name[urllib.parse.unquote(ingest_fetch.video_id_of(key))] = cached
  dark = by_name["Amélie's walk, take #2.avi#t=0.0,0.9"]
  light = by_name["Amélie's walk, take #2.avi#t=1.1"]
  assert (dark.label_name, light.label_name) == ("dark", "light")
  assert max(_mean_brightness(dark.frames)) < 40
  assert min(_mean_brightness(light.frames)) > 215
  # The UCF101 recipe's 25 fps, counted from the segment's start.
  assert abs(len(dark.frames) - 0.9 * 25) <= 2 and abs(len(light.frames) - 0.9 * 25) <= 2


def test_csv_dataset_through_both_jobs_every_segment_embedded_and_scored(checkpoint_path, tmp_path):
  # One video, dark then light: four segments, two per class, in split 1's
  # train and test lists; a fifth row names a file that does not exist.
  videos = tmp_path / "videos"
  videos.mkdir()
  _two_halves_video(videos / "Amélie's walk, take #2.avi")
  name = '"Amélie\'s walk, take #2.avi"'
  csv_dir = tmp_path / "csv"
  csv_dir.mkdir()
  header = "video_path,start,end,label\n"
  (csv_dir / "train_1.csv").write_text(
      header + f"{name},0,0.4,dark\n{name},1.1,1.5,light\nno such file.avi,,,light\n", "utf-8"
  )
  (csv_dir / "test_1.csv").write_text(
      header + f"{name},0.5,0.9,dark\n{name},1.6,2.0,light\n", "utf-8"
  )
  out, evaluation = tmp_path / "out", tmp_path / "eval"

  embed.run(
      [
          "--dataset=csv",
          f"--csv_dir={csv_dir}",
          f"--video_root={videos}",
          *_flags(checkpoint_path, tmp_path / "work", out),
      ],
      fake_model.PixelStatsHandler(),
  ).wait_until_finish()
  linear_eval_job.main(
      [f"--embeddings_dir={out}", f"--output_dir={evaluation}", "--allow_missing", *IN_PROCESS]
  )

  clips = collections.Counter(
      (urllib.parse.unquote(r[schema.VIDEO_ID]), r[schema.LABEL_NAME])
      for r in _read_embeddings(out)
  )
  segments = {
      f"Amélie's walk, take #2.avi#t={span}": label
      for span, label in (
          ("0.0,0.4", "dark"),
          ("1.1,1.5", "light"),
          ("0.5,0.9", "dark"),
          ("1.6,2.0", "light"),
      )
  }
  assert clips == {
      (video, label): NUM_TRAIN_CLIPS + NUM_TEST_WINDOWS for video, label in segments.items()
  }
  failures = [
      json.loads(line)
      for line in (out / "failures" / "failures.jsonl").read_text("utf-8").splitlines()
  ]
  assert [(urllib.parse.unquote(f["video_id"]), f["stage"]) for f in failures] == [
      ("no such file.avi", ingest_fetch.STAGE_FETCH)
  ]
  metrics = json.loads((evaluation / "metrics.json").read_text())
  assert sorted(metrics["splits"]) == ["1"] and metrics["settings"]["dataset"] == "csv"
  assert metrics["splits"]["1"]["input_check"]["num_test_clips"] == 2 * NUM_TEST_WINDOWS
  # Dark and light segments, embedded as their pixels' statistics, are told apart.
  assert metrics["splits"]["1"]["test_top1"] == 1.0


# ---- Linear evaluation of the HMDB51 embeddings ----


def test_linear_eval_follows_the_hmdb51_run_every_split_with_its_protocol_c(hmdb, hmdb_job):
  data, failing = hmdb
  out = hmdb_job / "eval"
  linear_eval_job.main(
      [
          f"--embeddings_dir={hmdb_job / 'out'}",
          f"--output_dir={out}",
          "--allow_missing",
          *IN_PROCESS,
      ]
  )

  metrics = json.loads((out / "metrics.json").read_text())
  assert sorted(metrics["splits"]) == ["1", "2", "3"]
  assert metrics["mean"]["splits"] == [1, 2, 3]
  assert metrics["settings"]["dataset"] == "hmdb51"
  assert metrics["settings"]["svm_cs"] == [datasets.HMDB51.protocol.svm_c_for("s3d")]
  for split, result in metrics["splits"].items():
    planned = [v for v in data.videos if v.split_ids[int(split) - 1] == synthetic_hmdb51.TEST_ID]
    missing = {_video_id(v.file_name) for v in planned} & set(failing)
    assert result["svm_c"] == datasets.HMDB51.protocol.svm_c_for("s3d")
    assert result["input_check"]["num_test_clips"] == (
        (len(planned) - len(missing)) * NUM_TEST_WINDOWS
    )


def test_linear_eval_refuses_a_dataset_other_than_the_embeddings_one(hmdb_job, tmp_path):
  with pytest.raises(common.UsageError, match="are of hmdb51 .run.json.; leave --dataset out"):
    linear_eval_job.main(
        [
            f"--embeddings_dir={hmdb_job / 'out'}",
            f"--output_dir={tmp_path / 'eval'}",
            "--dataset=ucf101",
            *IN_PROCESS,
        ]
    )
  assert not (tmp_path / "eval").exists()


def test_linear_eval_takes_a_run_json_without_a_dataset_for_ucf101s(tmp_path):
  embeddings = tmp_path / "emb"
  (embeddings / schema.SHARDS_DIR).mkdir(parents=True)
  run_json = {schema.NUM_TRAIN_CLIPS: 1, schema.NUM_TEST_WINDOWS: 1, schema.SETTINGS: {}}
  (embeddings / schema.RUN_CONFIG_FILE).write_text(json.dumps(run_json))
  with pytest.raises(common.UsageError, match="are of ucf101 .run.json.; leave --dataset out"):
    linear_eval_job.main(
        [
            f"--embeddings_dir={embeddings}",
            f"--output_dir={tmp_path / 'eval'}",
            "--dataset=hmdb51",
            *IN_PROCESS,
        ]
    )


def test_string_groups_keep_ucf101s_held_out_partition():
  numbers = np.repeat(np.arange(1, 26), 4)
  by_number = linear_eval_lib.validation_partition(numbers)
  by_padded_string = linear_eval_lib.validation_partition(np.array([f"{n:02d}" for n in numbers]))
  for ints, strings in zip(by_number, by_padded_string):
    np.testing.assert_array_equal(ints, strings)


# ---- Launcher ----


def test_dataflow_launcher_keeps_each_datasets_results_apart():
  common_flags = [
      "--project",
      "my-project-123",
      "--region",
      "us-central1",
      "--bucket",
      "gs://my-mmv-bucket",
      "--image",
      "img:gpu",
  ]
  embed_config, _ = embed.parse_args(
      dataflow.embed_argv(
          *dataflow.parse_args(
              [
                  "embed",
                  *common_flags,
                  "--checkpoint_path",
                  "gs://my-mmv-bucket/ckpt/mmv_s3d.pkl",
                  "--dataset=hmdb51",
                  "--splits_dir=gs://my-mmv-bucket/hmdb51/splits",
                  "--video_root=gs://my-mmv-bucket/hmdb51/videos",
              ]
          )
      )
  )
  assert (embed_config.dataset, embed_config.output_dir, embed_config.work_dir) == (
      "hmdb51",
      "gs://my-mmv-bucket/embeddings/hmdb51/s3d",
      "gs://my-mmv-bucket/work",
  )
  assert embed_config.splits_location == "gs://my-mmv-bucket/hmdb51/splits"
  eval_flags = dataflow.linear_eval_argv(
      *dataflow.parse_args(["linear_eval", *common_flags, "--backbone", "s3d", "--dataset=hmdb51"])
  )
  assert "--embeddings_dir=gs://my-mmv-bucket/embeddings/hmdb51/s3d" in eval_flags
  assert "--output_dir=gs://my-mmv-bucket/linear_eval/hmdb51/s3d" in eval_flags
  # Dataflow refuses a job whose name a running job has: the dataset is in it.
  embed_flags = dataflow.embed_argv(
      *dataflow.parse_args(
          [
              "embed",
              *common_flags,
              "--checkpoint_path",
              "gs://my-mmv-bucket/ckpt/mmv_s3d.pkl",
              "--dataset=hmdb51",
              "--splits_dir=s",
              "--video_root=v",
          ]
      )
  )
  assert "--job_name=mmv-embed-hmdb51-s3d-gpu" in embed_flags
  assert "--job_name=mmv-linear-eval-hmdb51-s3d" in eval_flags
