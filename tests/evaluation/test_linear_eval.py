"""Tests of the UCF101 linear evaluation (mmv_core.evaluation.linear_eval, pipelines.linear_eval).

Every test writes its own split-list zip and embedding shards: 5 classes x 8
groups, one video per (class, group), 16-dim features. In split N the test
videos are groups 2N-1 and 2N, as the official splits hold out whole groups.
"""

import importlib.metadata
import json
import pathlib
import re
import shutil
import subprocess
import sys
import time
import zipfile

import apache_beam as beam
import numpy as np
import pytest
from sklearn import preprocessing
from sklearn import svm

from mmv_core import datasets
from mmv_core.embeddings import schema
from mmv_core.embeddings import tfrecord
from mmv_core.evaluation import linear_eval
from mmv_core.evaluation import report
from mmv_core.datasets import ucf101
from pipelines import ownership
from pipelines import linear_eval as linear_eval_job
from pipelines import linear_eval_config

import cli_checks

CLASSES = ("ApplyEyeMakeup", "Archery", "Basketball", "Biking", "Bowling")
NUM_GROUPS = 8
NUM_TRAIN_CLIPS = 3
NUM_TEST_WINDOWS = 4
DIM = 16
RUNNER = ["--runner=FnApiRunner"]


def video_id(class_name: str, group: int) -> str:
  return f"v_{class_name}_g{group:02d}_c01"


def held_out_groups(split: int) -> tuple[int, int]:
  return (2 * split - 1, 2 * split)


def write_split_zip(path: pathlib.Path) -> pathlib.Path:
  """The split-list zip, CRLF lines as the official one has them."""
  crlf = lambda lines: "".join(f"{line}\r\n" for line in lines)
  with zipfile.ZipFile(path, "w") as archive:
    archive.writestr(
        "ucfTrainTestlist/classInd.txt", crlf(f"{i + 1} {c}" for i, c in enumerate(CLASSES))
    )
    for split in ucf101.SPLITS:
      train, test = [], []
      for label, c in enumerate(CLASSES):
        for group in range(1, NUM_GROUPS + 1):
          entry = f"{c}/{video_id(c, group)}.avi"
          if group in held_out_groups(split):
            test.append(entry)
          else:
            train.append(f"{entry} {label + 1}")
      archive.writestr(f"ucfTrainTestlist/trainlist0{split}.txt", crlf(train))
      archive.writestr(f"ucfTrainTestlist/testlist0{split}.txt", crlf(test))
  return path


def make_clips(
    seed: int, *, signal: float, video_noise: float = 0.0, clip_noise: float = 1.0
) -> dict[tuple[str, str, int], tuple[int, np.ndarray]]:
  """(video_id, clip_type, index) -> (label, float32 [DIM]) for every video.

  Features: the class's mean times `signal`, plus an offset shared by the
  clips of a video, plus noise per clip.
  """
  rng = np.random.default_rng(seed)
  means = rng.normal(size=(len(CLASSES), DIM))
  clips = {}
  for label, c in enumerate(CLASSES):
    for group in range(1, NUM_GROUPS + 1):
      vid = video_id(c, group)
      offset = video_noise * rng.normal(size=DIM)
      for clip_type, count in (
          (schema.CLIP_TYPE_TRAIN, NUM_TRAIN_CLIPS),
          (schema.CLIP_TYPE_TEST, NUM_TEST_WINDOWS),
      ):
        for index in range(count):
          embedding = signal * means[label] + offset + clip_noise * rng.normal(size=DIM)
          clips[(vid, clip_type, index)] = (label, embedding.astype(np.float32))
  return clips


def write_embeddings(
    directory: pathlib.Path,
    clips,
    *,
    num_shards: int = 2,
    extra_records=(),
    settings: dict | None = None,
) -> pathlib.Path:
  """Writes clips as the embedding job does: shards of examples and run.json.

  `settings` go into run.json as the embedding job's settings.
  """
  (directory / schema.SHARDS_DIR).mkdir(parents=True)
  records = [
      schema.make_example(
          video_id=vid,
          label=label,
          label_name=CLASSES[label],
          clip_type=clip_type,
          clip_index=index,
          embedding=embedding,
          extra_features={"audio_repr": embedding[:4]},
      ).SerializeToString()
      for (vid, clip_type, index), (label, embedding) in clips.items()
  ] + list(extra_records)
  for i in range(num_shards):
    shard = directory / schema.SHARDS_DIR / f"part-{i:05d}-of-{num_shards:05d}.tfrecord"
    shard.write_bytes(b"".join(map(tfrecord.encode_record, records[i::num_shards])))
  run_config = {
      schema.NUM_TRAIN_CLIPS: NUM_TRAIN_CLIPS,
      schema.NUM_TEST_WINDOWS: NUM_TEST_WINDOWS,
      "model": "synthetic",
  }
  if settings is not None:
    run_config[schema.SETTINGS] = settings
  (directory / schema.RUN_CONFIG_FILE).write_text(json.dumps(run_config))
  return directory


def protocol_by_hand(clips, split: int, svm_c: float) -> dict[str, float]:
  """The protocol computed directly from the clips, independently of the code under test."""
  train = [
      (label, e)
      for (vid, t, _), (label, e) in sorted(clips.items())
      if t == "train" and int(vid[-6:-4]) not in held_out_groups(split)
  ]
  x = np.stack([e for _, e in train])
  y = np.array([label for label, _ in train])
  scaler = preprocessing.StandardScaler().fit(x)
  model = svm.LinearSVC(C=svm_c, dual=True).fit(scaler.transform(x), y)
  test_videos = sorted(
      {vid for (vid, t, _) in clips if t == "test" and int(vid[-6:-4]) in held_out_groups(split)}
  )
  video_scores, video_labels = [], []
  for vid in test_videos:
    windows = [clips[(vid, "test", i)] for i in range(NUM_TEST_WINDOWS)]
    scores = model.decision_function(scaler.transform(np.stack([e for _, e in windows])))
    video_scores.append(scores.mean(axis=0))
    video_labels.append(windows[0][0])

  def top(scores, labels, k):
    best = np.argsort(-np.asarray(scores), axis=1)[:, :k]
    return float(np.mean([l in row for l, row in zip(labels, best)]))

  train_scores = model.decision_function(scaler.transform(x))
  return {
      "test_top1": top(video_scores, video_labels, 1),
      "test_top5": top(video_scores, video_labels, 5),
      "train_top1": top(train_scores, y, 1),
      "train_top5": top(train_scores, y, 5),
      "num_test_videos": len(test_videos),
      "num_train_clips": len(y),
  }


@pytest.fixture
def split_zip(tmp_path):
  return write_split_zip(tmp_path / "splits.zip")


def run_job(tmp_path, split_zip, embeddings, *flags) -> dict:
  out = tmp_path / "out"
  linear_eval_job.main(
      [
          f"--embeddings_dir={embeddings}",
          f"--output_dir={out}",
          f"--splits_zip={split_zip}",
          *flags,
          *RUNNER,
      ]
  )
  return json.loads((out / report.METRICS_FILE).read_text())


def layout_of(split_zip, split):
  return linear_eval.SplitLayout.from_lists(
      ucf101.load_split_lists(str(split_zip)),
      split,
      num_train_clips=NUM_TRAIN_CLIPS,
      num_test_windows=NUM_TEST_WINDOWS,
  )


def test_job_metrics_equal_the_protocol_computed_by_hand(tmp_path, split_zip):
  clips = make_clips(0, signal=0.6)
  embeddings = write_embeddings(tmp_path / "emb", clips)
  metrics = run_job(tmp_path, split_zip, embeddings)

  assert sorted(metrics["splits"]) == ["1", "2", "3"]
  for split in ucf101.SPLITS:
    expected = protocol_by_hand(clips, split, 0.001)
    got = metrics["splits"][str(split)]
    for key, value in expected.items():
      assert got[key] == pytest.approx(value), (split, key)
    assert got["num_train_videos"] == len(CLASSES) * (NUM_GROUPS - 2)
    assert got["num_test_clips"] == len(CLASSES) * 2 * NUM_TEST_WINDOWS
    assert got["svm_c"] == 0.001
    assert got["input_check"]["complete"]
  # The data is hard enough for the comparison to mean something.
  assert 0.3 < metrics["splits"]["1"]["test_top1"] < 1.0
  # The solver's library is recorded beside the numbers it gave.
  assert metrics["versions"]["scikit-learn"] == importlib.metadata.version("scikit-learn")
  for key in ("test_top1", "test_top5", "train_top1", "train_top5"):
    assert metrics["mean"][key] == pytest.approx(
        np.mean([metrics["splits"][s][key] for s in "123"])
    )

  out = tmp_path / "out"
  per_class = (out / report.PER_CLASS_FILE).read_text().splitlines()
  assert len(per_class) == 1 + 3 * len(CLASSES)
  markdown = (out / report.REPORT_FILE).read_text()
  assert "confusion_split1.png" in markdown and "Bowling" in markdown
  assert (out / "confusion_split2.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_separable_classes_score_perfectly_and_saved_classifier_reproduces(tmp_path, split_zip):
  """Also runs the job as users do: its command line, on the default local runner."""
  clips = make_clips(1, signal=10.0, clip_noise=0.1)
  embeddings = write_embeddings(tmp_path / "emb", clips)
  subprocess.run(
      [
          sys.executable,
          "-m",
          "pipelines.linear_eval",
          f"--embeddings_dir={embeddings}",
          f"--output_dir={tmp_path / 'out'}",
          f"--splits_zip={split_zip}",
          "--splits=2",
      ],
      cwd=pathlib.Path(__file__).resolve().parents[2],
      check=True,
      capture_output=True,
  )
  metrics = json.loads((tmp_path / "out" / report.METRICS_FILE).read_text())

  assert list(metrics["splits"]) == ["2"]
  assert metrics["splits"]["2"]["test_top1"] == 1.0
  assert metrics["splits"]["2"]["train_top1"] == 1.0
  classifier = linear_eval.LinearClassifier.load(str(tmp_path / "out" / report.classifier_name(2)))
  for label, c in enumerate(CLASSES):
    windows = np.stack([clips[(video_id(c, 3), "test", i)][1] for i in range(NUM_TEST_WINDOWS)])
    assert classifier.decision_function(windows).mean(axis=0).argmax() == label


def test_window_scores_are_averaged_per_video():
  # Video 0: two windows favour class 1 slightly, one favours class 0 strongly.
  scores = np.array([[0.0, 1.0], [0.0, 1.0], [5.0, 0.0], [1.0, 3.0]])
  video = np.array([0, 0, 0, 1])
  means, counts = linear_eval.average_by_video(scores, video, 3)
  np.testing.assert_allclose(means[:2], [[5 / 3, 2 / 3], [1.0, 3.0]])
  assert np.isnan(means[2]).all()
  np.testing.assert_array_equal(counts, [3, 1, 0])


def test_top_k_accuracy():
  scores = np.array(
      [
          [0.9, 0.5, 0.1, 0.3, 0.2, 0.0, 0.4],  # label 0: rank 1
          [0.9, 0.5, 0.1, 0.3, 0.2, 0.0, 0.4],  # label 4: rank 5
          [0.9, 0.5, 0.1, 0.3, 0.2, 0.0, 0.4],
      ]
  )  # label 2: rank 6
  labels = np.array([0, 4, 2])
  assert linear_eval.accuracy(scores, labels, 1) == pytest.approx(1 / 3)
  assert linear_eval.accuracy(scores, labels, 5) == pytest.approx(2 / 3)
  assert linear_eval.accuracy(scores, labels, 6) == pytest.approx(1.0)


def test_split_membership_follows_the_lists(split_zip, tmp_path):
  clips = make_clips(2, signal=1.0)
  stray = schema.make_example(
      video_id="v_Archery_g25_c04",
      label=1,
      label_name="Archery",
      clip_type="train",
      clip_index=0,
      embedding=np.zeros(DIM),
  ).SerializeToString()
  embeddings = write_embeddings(tmp_path / "emb", clips, extra_records=[stray])
  for split in ucf101.SPLITS:
    layout = layout_of(split_zip, split)
    features, check = linear_eval.collect_split_features(
        schema.embedding_records(str(embeddings)), layout
    )
    assert check.complete and check.num_ignored_clips == 1 + len(CLASSES) * (
        2 * NUM_TRAIN_CLIPS + (NUM_GROUPS - 2) * NUM_TEST_WINDOWS
    )
    train_ids = {layout.train_videos[v].video_id for v in features.train_video}
    test_ids = {layout.test_videos[v].video_id for v in features.test_video}
    assert test_ids == {video_id(c, g) for c in CLASSES for g in held_out_groups(split)}
    assert train_ids == {
        video_id(c, g)
        for c in CLASSES
        for g in range(1, NUM_GROUPS + 1)
        if g not in held_out_groups(split)
    }
    for row, v in enumerate(features.train_video):
      vid = layout.train_videos[v].video_id
      index = row % NUM_TRAIN_CLIPS
      np.testing.assert_array_equal(features.train_features[row], clips[(vid, "train", index)][1])
      assert features.train_labels[row] == clips[(vid, "train", index)][0]


def test_missing_and_duplicated_clips_are_reported_by_id(tmp_path, split_zip):
  clips = make_clips(3, signal=3.0)
  gone_video = video_id("Biking", 1)  # a test video of split 1
  for index in range(NUM_TEST_WINDOWS):
    del clips[(gone_video, "test", index)]
  del clips[(video_id("Archery", 5), "train", 2)]
  label, embedding = clips[(video_id("Bowling", 6), "train", 0)]
  duplicate = schema.make_example(
      video_id=video_id("Bowling", 6),
      label=label,
      label_name="Bowling",
      clip_type="train",
      clip_index=0,
      embedding=embedding,
  ).SerializeToString()
  embeddings = write_embeddings(tmp_path / "emb", clips, extra_records=[duplicate])

  _, check = linear_eval.collect_split_features(
      schema.embedding_records(str(embeddings)), layout_of(split_zip, 1)
  )
  assert check.missing_videos == (gone_video,)
  assert set(check.missing_clips) == {f"{gone_video}/test/{i}" for i in range(NUM_TEST_WINDOWS)} | {
      "v_Archery_g05_c01/train/2"
  }
  assert check.duplicate_clips == ("v_Bowling_g06_c01/train/0",)
  assert not check.complete

  with pytest.raises(Exception, match="v_Biking_g01_c01"):
    run_job(tmp_path, split_zip, embeddings, "--splits=1")

  metrics = run_job(tmp_path, split_zip, embeddings, "--splits=1", "--allow_missing")
  got = metrics["splits"]["1"]
  assert got["input_check"]["missing_videos"] == [gone_video]
  assert got["num_test_videos"] == 2 * len(CLASSES) - 1
  assert got["num_train_clips"] == len(CLASSES) * (NUM_GROUPS - 2) * NUM_TRAIN_CLIPS - 1
  assert gone_video in (tmp_path / "out" / report.REPORT_FILE).read_text()


def test_label_disagreeing_with_the_lists_is_an_error(tmp_path, split_zip):
  clips = make_clips(4, signal=1.0)
  key = (video_id("Archery", 4), "train", 1)
  clips[key] = (0, clips[key][1])
  embeddings = write_embeddings(tmp_path / "emb", clips)
  with pytest.raises(linear_eval.InconsistentInputError, match="v_Archery_g04_c01 has label 0"):
    linear_eval.collect_split_features(
        schema.embedding_records(str(embeddings)), layout_of(split_zip, 1)
    )


def test_validation_partition_keeps_groups_on_one_side():
  groups = np.repeat(np.arange(3, 9), 7)
  fit_rows, held_out_rows = linear_eval.validation_partition(groups)
  assert len(fit_rows) + len(held_out_rows) == len(groups)
  assert len(held_out_rows) > 0 and len(fit_rows) > 0
  assert not set(groups[fit_rows]) & set(groups[held_out_rows])


def with_shared_nuisance(clips, seed: int, scale: float = 20.0):
  """Adds large noise n to the first half of the features and sets the second half to n.

  The class means stay in the first half, buried under n; only
  `first - second` recovers them. A strongly regularised SVM is close to a
  difference of class means and cannot find that direction; a large C can.
  """
  rng = np.random.default_rng(seed)
  half = DIM // 2
  noisy = {}
  for key, (label, embedding) in clips.items():
    nuisance = scale * rng.normal(size=half)
    noisy[key] = (label, np.concatenate([embedding[:half] + nuisance, nuisance]).astype(np.float32))
  return noisy


def test_choose_c_takes_the_best_and_the_smallest_among_equals():
  assert linear_eval.choose_c({1.0: 0.5, 0.01: 0.9, 100.0: 0.7}) == 0.01
  assert linear_eval.choose_c({1.0: 0.9, 0.01: 0.9, 100.0: 0.7}) == 0.01


def test_c_sweep_picks_the_c_the_data_needs(tmp_path, split_zip):
  clips = with_shared_nuisance(make_clips(5, signal=1.0, clip_noise=0.2), seed=6)
  embeddings = write_embeddings(tmp_path / "emb", clips)
  sweep = (100.0, 1e-6, 0.01)
  test_top1 = {c: protocol_by_hand(clips, 1, c)["test_top1"] for c in sweep}
  best_on_test = max(sweep, key=test_top1.get)
  assert test_top1[best_on_test] > max(v for c, v in test_top1.items() if c != best_on_test)

  metrics = run_job(
      tmp_path, split_zip, embeddings, "--splits=1", "--svm_c=" + ",".join(map(str, sweep))
  )
  got = metrics["splits"]["1"]
  assert got["svm_c"] == best_on_test
  assert set(got["validation_top1"]) == {repr(c) for c in sweep}
  assert got["test_top1"] == pytest.approx(test_top1[best_on_test])
  assert f"C chosen {best_on_test:g}" in (tmp_path / "out" / report.REPORT_FILE).read_text()


def test_classes_fitted_in_parallel_equal_liblinears_own_one_vs_rest():
  rng = np.random.default_rng(5)
  labels = rng.integers(0, 4, 400)
  features = (rng.standard_normal((400, 12)) + labels[:, None] * 0.3).astype(np.float32)
  settings = linear_eval.SvmSettings(solver=linear_eval.SOLVER_LIBLINEAR, dual=False)
  one = linear_eval.fit_classifier(features, labels, 5, 0.01, settings, threads=1)
  three = linear_eval.fit_classifier(features, labels, 5, 0.01, settings, threads=3)
  np.testing.assert_array_equal(one.coef, three.coef)
  scaler = preprocessing.StandardScaler().fit(features)
  standardised = (features.astype(np.float64) - scaler.mean_) / scaler.scale_
  reference = svm.LinearSVC(C=0.01, dual=settings.dual, tol=settings.tol).fit(standardised, labels)
  np.testing.assert_allclose(three.coef[:4], reference.coef_, rtol=1e-9, atol=1e-12)
  np.testing.assert_allclose(three.intercept[:4], reference.intercept_, rtol=1e-9, atol=1e-12)
  assert three.intercept[4] == -np.inf  # Class 4 has no training clips.


def test_newton_and_liblinear_jobs_agree_to_the_video(tmp_path, split_zip):
  clips = make_clips(7, signal=0.5, video_noise=0.5)
  embeddings = write_embeddings(tmp_path / "emb", clips)
  predictions, metrics = {}, {}
  for solver in linear_eval.SOLVERS:
    out = tmp_path / solver
    metrics[solver] = run_job(out, split_zip, embeddings, f"--solver={solver}")
    for split in ucf101.SPLITS:
      features, _ = linear_eval.collect_split_features(
          schema.embedding_records(str(embeddings)), layout_of(split_zip, split)
      )
      classifier = linear_eval.LinearClassifier.load(
          str(out / "out" / report.classifier_name(split))
      )
      scores, _ = linear_eval.average_by_video(
          classifier.decision_function(features.test_features),
          features.test_video,
          len(features.layout.test_videos),
      )
      predictions[solver, split] = scores.argmax(axis=1)

  for split in ucf101.SPLITS:
    np.testing.assert_array_equal(predictions["newton", split], predictions["liblinear", split])
    newton, liblinear = (metrics[s]["splits"][str(split)] for s in linear_eval.SOLVERS)
    for key in ("train_top1", "train_top5", "test_top1", "test_top5"):
      assert newton[key] == liblinear[key], (split, key)
    assert newton["convergence"]["iterations"][0] >= 1
    assert max(newton["convergence"]["relative_gradient_norm"]) <= linear_eval.NEWTON_TOL
    assert liblinear["convergence"] is None
  assert 0.3 < metrics["newton"]["mean"]["test_top1"] < 1.0


def test_unconverged_split_is_an_error_naming_split_c_and_flag(tmp_path, split_zip):
  embeddings = write_embeddings(tmp_path / "emb", make_clips(8, signal=0.3))
  with pytest.raises(Exception, match=r"split 3, C=1000: .*raise --svm_max_iter"):
    run_job(tmp_path, split_zip, embeddings, "--splits=3", "--svm_c=1000", "--svm_max_iter=1")
  assert not (tmp_path / "out" / report.METRICS_FILE).exists()


def test_split_without_test_clips_gives_strict_json_with_no_accuracy(tmp_path, split_zip):
  clips = {
      key: value
      for key, value in make_clips(9, signal=1.0).items()
      if not (key[1] == "test" and int(key[0][-6:-4]) in held_out_groups(2))
  }
  embeddings = write_embeddings(tmp_path / "emb", clips)
  run_job(tmp_path, split_zip, embeddings, "--splits=2", "--allow_missing")

  def refuse(constant):
    raise ValueError(f"metrics.json holds {constant}, which is not JSON")

  text = (tmp_path / "out" / report.METRICS_FILE).read_text()
  metrics = json.loads(text, parse_constant=refuse)
  got = metrics["splits"]["2"]
  assert got["num_test_videos"] == 0
  assert got["test_top1"] is None and got["test_top5"] is None
  assert metrics["mean"]["test_top1"] is None
  assert got["train_top1"] > 0.5
  assert "| 2 | n/a | n/a |" in report.metrics_table(metrics)


def test_split_lists_default_to_those_the_embedding_job_recorded(tmp_path, split_zip):
  clips = make_clips(10, signal=1.0)
  embeddings = write_embeddings(tmp_path / "emb", clips)
  run_json = embeddings / schema.RUN_CONFIG_FILE
  recorded = json.loads(run_json.read_text())
  recorded[schema.SETTINGS] = {schema.SPLITS_ZIP: str(split_zip)}
  run_json.write_text(json.dumps(recorded))
  out = tmp_path / "out"
  linear_eval_job.main(
      [f"--embeddings_dir={embeddings}", f"--output_dir={out}", "--splits=1", *RUNNER]
  )
  metrics = json.loads((out / report.METRICS_FILE).read_text())
  assert metrics["splits"]["1"]["num_test_videos"] == 2 * len(CLASSES)
  assert metrics["splits"]["1"]["test_top1"] == pytest.approx(
      protocol_by_hand(clips, 1, 0.001)["test_top1"]
  )


# ---- The job's command line: user errors, its summary, limited runs, --help ----


@pytest.fixture(scope="module")
def complete_inputs(tmp_path_factory) -> pathlib.Path:
  """An embedding job's output with every clip, whose run.json records the split lists."""
  directory = tmp_path_factory.mktemp("complete")
  split_zip = write_split_zip(directory / "splits.zip")
  return write_embeddings(
      directory / "emb", make_clips(11, signal=1.0), settings={schema.SPLITS_ZIP: str(split_zip)}
  )


def _refuse_to_load(*args, **kwargs):
  raise AssertionError("a split was loaded before the inputs were checked")


def usage_error(argv, capsys, monkeypatch) -> str:
  """The job's one line on stderr (exit status 2), given before any split was loaded."""
  monkeypatch.setattr(linear_eval, "collect_split_features", _refuse_to_load)
  return cli_checks.usage_error(
      linear_eval_job.main, linear_eval_config.PROG, [*argv, *RUNNER], capsys
  )


@pytest.mark.parametrize(
    "flag, problem",
    [
        ("--svm_c=0", "--svm_c: C must be a positive number, got 0"),
        ("--svm_c=0.01,-1", "--svm_c: C must be a positive number, got -1"),
        ("--svm_c=nan", "--svm_c: C must be a positive number, got nan"),
        ("--svm_tol=0", "--svm_tol must be a positive number, got 0"),
        ("--svm_max_iter=0", "--svm_max_iter must be at least 1, got 0"),
        ("--splits=1,4", "--splits: no split [4]; UCF101 has splits 1, 2, 3"),
        (
            "--splits_zip=/nonexistent/splits.zip",
            "--splits_zip: /nonexistent/splits.zip: cannot read",
        ),
        ("--solver=newtn", "argument --solver: invalid choice: 'newtn'"),
        ("--svm_max_iter=many", "argument --svm_max_iter: invalid int value: 'many'"),
    ],
)
def test_an_invalid_flag_is_one_line_and_exit_status_2(
    flag, problem, complete_inputs, tmp_path, capsys, monkeypatch
):
  argv = [f"--embeddings_dir={complete_inputs}", f"--output_dir={tmp_path / 'out'}", flag]
  assert problem in usage_error(argv, capsys, monkeypatch)


def test_a_misspelt_required_flag_is_named_with_the_flag_it_may_mean(
    complete_inputs, tmp_path, capsys, monkeypatch
):
  argv = [f"--embedings_dir={complete_inputs}", f"--output_dir={tmp_path / 'out'}"]
  assert (
      "the following arguments are required: --embeddings_dir; unrecognized: "
      "--embedings_dir (did you mean --embeddings_dir?)"
  ) in usage_error(argv, capsys, monkeypatch)


def _without_run_json_settings(embeddings: pathlib.Path) -> None:
  (embeddings / schema.RUN_CONFIG_FILE).write_text(
      json.dumps(
          {
              schema.NUM_TRAIN_CLIPS: NUM_TRAIN_CLIPS,
              schema.NUM_TEST_WINDOWS: NUM_TEST_WINDOWS,
              schema.SETTINGS: {schema.SPLITS_ZIP: "/nonexistent/splits.zip"},
          }
      )
  )


@pytest.mark.parametrize(
    "break_inputs, problem",
    [
        (
            shutil.rmtree,
            "emb is not an embedding job's output: {emb}/run.json: cannot read run "
            "settings ([Errno 2] No such file or directory",
        ),
        (lambda emb: [shutil.rmtree(emb), emb.mkdir()], "emb is not an embedding job's output"),
        (
            lambda emb: (emb / schema.RUN_CONFIG_FILE).write_text("{"),
            "{emb}/run.json: cannot read run settings",
        ),
        (lambda emb: shutil.rmtree(emb / schema.SHARDS_DIR), "no embedding shards"),
        (
            _without_run_json_settings,
            "the split lists of {emb}/run.json: /nonexistent/splits.zip: cannot read",
        ),
        (
            lambda emb: (emb.parent / "out").mkdir()
            or (emb.parent / "out" / "metrics.json").touch(),
            # The path as typed, `emb/../out`, is named as it resolves.
            "--output_dir {out} already holds metrics.json, of an evaluation that did not "
            "claim it; choose a new --output_dir",
        ),
    ],
    ids=[
        "no directory",
        "empty directory",
        "run.json unreadable",
        "no shards",
        "recorded split lists missing",
        "output dir holds metrics",
    ],
)
def test_unusable_inputs_are_one_line_and_exit_status_2(
    break_inputs, problem, complete_inputs, tmp_path, capsys, monkeypatch
):
  embeddings = shutil.copytree(complete_inputs, tmp_path / "emb")
  break_inputs(embeddings)
  argv = [f"--embeddings_dir={embeddings}", f"--output_dir={embeddings}/../out"]
  expected = problem.format(emb=embeddings, out=tmp_path / "out")
  assert expected in usage_error(argv, capsys, monkeypatch)


def test_missing_clips_are_refused_before_any_split_is_loaded(
    tmp_path, split_zip, capsys, monkeypatch
):
  clips = make_clips(12, signal=1.0)
  gone = video_id("Biking", 5)  # A training video of split 1, a test video of split 3.
  for index in range(NUM_TRAIN_CLIPS):
    del clips[(gone, "train", index)]
  embeddings = write_embeddings(tmp_path / "emb", clips)
  argv = [
      f"--embeddings_dir={embeddings}",
      f"--output_dir={tmp_path / 'out'}",
      f"--splits_zip={split_zip}",
  ]
  error = usage_error(argv, capsys, monkeypatch)
  for split in (1, 2):
    assert f"split {split}: {NUM_TRAIN_CLIPS} missing clips: {gone}/train/0" in error
  assert "split 3" not in error  # Its test windows are all there.
  assert "pass --allow_missing" in error
  # Python callers may catch it as the library's error.
  with pytest.raises(linear_eval.IncompleteSplitError, match=gone):
    linear_eval_job.main([*argv, *RUNNER])


def test_a_label_disagreeing_with_the_lists_is_one_line_and_exit_status_2(
    tmp_path, split_zip, capsys, monkeypatch
):
  clips = make_clips(13, signal=1.0)
  key = (video_id("Archery", 4), "test", 2)
  clips[key] = (0, clips[key][1])
  embeddings = write_embeddings(tmp_path / "emb", clips)
  argv = [
      f"--embeddings_dir={embeddings}",
      f"--output_dir={tmp_path / 'out'}",
      f"--splits_zip={split_zip}",
  ]
  assert "v_Archery_g04_c01 has label 0, the split lists give 1 (Archery)" in usage_error(
      argv, capsys, monkeypatch
  )


def test_the_command_line_says_a_user_error_in_one_line_and_nothing_else(
    tmp_path, split_zip, capsys, monkeypatch
):
  clips = {
      key: value
      for key, value in make_clips(14, signal=1.0).items()
      if key[0] != video_id("Bowling", 2)
  }
  embeddings = write_embeddings(tmp_path / "emb", clips)
  argv = [
      f"--embeddings_dir={embeddings}",
      f"--output_dir={tmp_path / 'out'}",
      f"--splits_zip={split_zip}",
  ]
  error = usage_error(argv, capsys, monkeypatch)
  assert error.startswith("python -m pipelines.linear_eval: error: --embeddings_dir ")
  assert "v_Bowling_g02_c01" in error
  assert not (tmp_path / "out").exists()


def test_an_evaluation_started_while_another_runs_into_its_output_dir_is_refused(
    complete_inputs, tmp_path, capsys, monkeypatch
):
  """The second is refused before any work; the first finishes untouched.

  (Runs racing for the claim: tests/pipelines/test_common.py.)
  """
  out = tmp_path / "out"
  argv = [f"--embeddings_dir={complete_inputs}", f"--output_dir={out}", "--splits=1", *RUNNER]
  refusals = []
  run_pipeline = beam.Pipeline.run

  def second_evaluation_starts_first(pipeline, *args, **kwargs):
    """The first has claimed the directory; a second starts before the first's work."""
    monkeypatch.setattr(beam.Pipeline, "run", run_pipeline)
    refusals.append(
        cli_checks.usage_error(linear_eval_job.main, linear_eval_config.PROG, argv, capsys)
    )
    return run_pipeline(pipeline, *args, **kwargs)

  monkeypatch.setattr(beam.Pipeline, "run", second_evaluation_starts_first)
  linear_eval_job.main(argv)

  assert re.fullmatch(
      rf"{re.escape(linear_eval_config.PROG)}: error: {re.escape(str(out))} belongs to another "
      r"run .*--overwrite.*\n",
      refusals[0],
  )
  assert set(json.loads((out / report.METRICS_FILE).read_text())["splits"]) == {"1"}


def test_an_interrupted_evaluation_is_restarted_with_overwrite(
    complete_inputs, tmp_path, capsys, monkeypatch
):
  out = tmp_path / "out"
  argv = [f"--embeddings_dir={complete_inputs}", f"--output_dir={out}", "--splits=2"]
  linear_eval_job.main([*argv, *RUNNER])
  (out / report.METRICS_FILE).unlink()  # As if it had been killed before writing them.
  (out / "stale.txt").write_text("from the first evaluation")
  capsys.readouterr()  # The first evaluation's summary.

  refused = usage_error(argv, capsys, monkeypatch)
  assert f"{out} belongs to another run" in refused and "--overwrite" in refused

  monkeypatch.undo()
  linear_eval_job.main([*argv, "--overwrite", *RUNNER])
  assert not (out / "stale.txt").exists()
  assert set(json.loads((out / report.METRICS_FILE).read_text())["splits"]) == {"2"}


def test_the_embeddings_dir_is_neither_an_output_dir_nor_overwritten(
    complete_inputs, tmp_path, capsys, monkeypatch
):
  embeddings = shutil.copytree(complete_inputs, tmp_path / "emb")
  ownership.claim_output_dir(str(embeddings), {"job": "python -m pipelines.embed"}, remedy="")
  before = sorted(p.name for p in embeddings.rglob("*"))
  argv = [f"--embeddings_dir={embeddings}", f"--output_dir={embeddings}"]

  refused = usage_error(argv, capsys, monkeypatch)
  assert "it is not this job's output: choose a new --output_dir" in refused
  refused = usage_error([*argv, "--overwrite"], capsys, monkeypatch)
  assert f"--overwrite would delete --embeddings_dir {embeddings}, which is inside" in refused
  assert sorted(p.name for p in embeddings.rglob("*")) == before


def _table(printed: str) -> dict[str, dict[str, str]]:
  """The rows of the printed Markdown table: first cell -> {column: cell}."""
  rows = [
      [cell.strip() for cell in line.strip("|").split("|")]
      for line in printed.splitlines()
      if line.startswith("| ")
  ]
  header, *body = rows
  return {cells[0]: dict(zip(header, cells)) for cells in body}


def test_the_job_ends_with_a_summary_of_metrics_json(tmp_path, split_zip, capsys):
  embeddings = write_embeddings(tmp_path / "emb", make_clips(15, signal=0.6))
  started = time.monotonic()
  metrics = run_job(tmp_path, split_zip, embeddings, "--splits=1,3", "--svm_c=0.001,0.01")
  seconds = time.monotonic() - started
  printed = capsys.readouterr().out
  table = _table(printed)

  assert set(table) == {"1", "3", "mean"}
  for split, row in table.items():
    m = metrics["splits"][split] if split != "mean" else metrics["mean"]
    for name, column in report.ACCURACY_COLUMNS.items():
      value, mark = row[column].rstrip("*"), row[column][len(row[column].rstrip("*")) :]
      assert float(value) == pytest.approx(100 * m[name], abs=0.005), (split, name)
      assert (mark == "*") == (name in m["caveats"]), (split, name)
    if split != "mean":
      assert row["test videos (clips)"] == f"{m['num_test_videos']} ({m['num_test_clips']})"
      assert row["train videos (clips)"] == f"{m['num_train_videos']} ({m['num_train_clips']})"
      assert int(row["classes"]) == m["num_classes"] == len(CLASSES)
      assert float(row["C"]) == m["svm_c"]
      assert float(row["seconds"]) == pytest.approx(m["seconds"]["total"], abs=0.05)
  # 5 classes make top-5 trivial; 10 test videos per split make test accuracies coarse.
  assert metrics["mean"]["caveats"] == {
      "test_top1": "splits 1, 3: fewer than 30 test videos, a coarse estimate",
      "test_top5": "splits 1, 3: trivially 100% with 5 classes or fewer; fewer than 30 test "
      "videos, a coarse estimate",
      "train_top5": "splits 1, 3: trivially 100% with 5 classes or fewer",
  }
  for name, reasons in metrics["mean"]["caveats"].items():
    assert f"  {report.ACCURACY_COLUMNS[name]}, {reasons}\n" in printed
  out = tmp_path / "out"
  assert f"metrics: {out / report.METRICS_FILE}\n" in printed
  assert f"report:  {out / report.REPORT_FILE} " in printed
  wall_seconds = float(re.search(r"^wall time: ([\d.]+) s$", printed, re.M)[1])
  assert 0 < wall_seconds <= seconds + 0.05


def test_a_run_limited_to_some_classes_is_evaluated_on_those_classes(
    tmp_path, split_zip, capsys, monkeypatch
):
  kept = ("Archery", "Bowling")
  clips = {
      key: (label, embedding)
      for key, (label, embedding) in make_clips(16, signal=2.0).items()
      if CLASSES[label] in kept
  }
  settings = {schema.SPLITS_ZIP: str(split_zip), schema.CLASSES: list(kept)}
  embeddings = write_embeddings(tmp_path / "emb", clips, settings=settings)
  out = tmp_path / "out"
  linear_eval_job.main([f"--embeddings_dir={embeddings}", f"--output_dir={out}", *RUNNER])

  metrics = json.loads((out / report.METRICS_FILE).read_text())
  for split in ("1", "2", "3"):
    m = metrics["splits"][split]
    assert m["input_check"]["complete"]
    assert (m["num_classes"], m["num_test_videos"]) == (len(kept), 2 * len(kept))
    assert m["num_train_videos"] == (NUM_GROUPS - 2) * len(kept)
    assert m["caveats"] == {
        "test_top1": f"fewer than {linear_eval.MIN_TEST_VIDEOS} test videos, a coarse estimate",
        "test_top5": f"trivially 100% with {linear_eval.TRIVIAL_TOP5_MAX_CLASSES} classes or "
        f"fewer; fewer than {linear_eval.MIN_TEST_VIDEOS} test videos, a coarse "
        "estimate",
        "train_top5": "trivially 100% with 5 classes or fewer",
    }
  printed = capsys.readouterr().out
  assert _table(printed)["mean"]["test top-5"] == "100.00*"
  assert "test top-5, splits 1, 2, 3: trivially 100% with 5 classes or fewer" in printed
  assert "test top-5, splits 1, 2, 3: trivially 100%" in (out / report.REPORT_FILE).read_text()
  per_class = (out / report.PER_CLASS_FILE).read_text().splitlines()[1:]
  assert {line.split(",")[2] for line in per_class} == set(kept)

  # Without the record of --classes, the other classes' videos lack clips.
  settings.pop(schema.CLASSES)
  (embeddings / schema.RUN_CONFIG_FILE).write_text(
      json.dumps(
          {
              schema.NUM_TRAIN_CLIPS: NUM_TRAIN_CLIPS,
              schema.NUM_TEST_WINDOWS: NUM_TEST_WINDOWS,
              schema.SETTINGS: settings,
          }
      )
  )
  argv = [f"--embeddings_dir={embeddings}", f"--output_dir={tmp_path / 'all'}"]
  assert "v_ApplyEyeMakeup_g01_c01" in usage_error(argv, capsys, monkeypatch)


def test_a_run_limited_by_max_videos_is_evaluated_on_the_videos_it_listed(tmp_path, split_zip):
  listed = {v.video_id for v in datasets.UCF101.list_videos(str(split_zip)).select(max_videos=12)}
  clips = {key: value for key, value in make_clips(17, signal=2.0).items() if key[0] in listed}
  embeddings = write_embeddings(
      tmp_path / "emb", clips, settings={schema.SPLITS_ZIP: str(split_zip), schema.MAX_VIDEOS: 12}
  )
  metrics = run_job(tmp_path, split_zip, embeddings)
  # Round robin over the 5 classes' groups 1, 2, 3: 10 videos of groups 1 and 2 and two
  # of group 3. Split 3 holds out groups 5 and 6, so it has no test video.
  assert {
      s: (m["num_train_videos"], m["num_test_videos"]) for s, m in metrics["splits"].items()
  } == {"1": (2, 10), "2": (10, 2), "3": (12, 0)}
  assert all(m["input_check"]["complete"] for m in metrics["splits"].values())


def test_help_shows_every_flags_default():
  text = cli_checks.help_text("pipelines.linear_eval")
  assert text.startswith(f"usage: {linear_eval_config.PROG} ")
  assert cli_checks.undocumented_options(text) == []


def test_ctrl_c_ends_the_evaluation_with_one_line_and_status_130(
    complete_inputs, tmp_path, capsys, monkeypatch
):
  cli_checks.interrupt_at(monkeypatch, linear_eval_job, "start")
  argv = [f"--embeddings_dir={complete_inputs}", f"--output_dir={tmp_path / 'out'}"]
  assert cli_checks.interrupted_line(linear_eval_job.main, argv, capsys) == (
      f"{linear_eval_config.PROG}: interrupted; its output is incomplete: rerun with --overwrite"
  )
