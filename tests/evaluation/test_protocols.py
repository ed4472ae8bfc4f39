"""Evaluation beyond the linear probe: kNN, retrieval, few-shot, and runs compared.

kNN and retrieval are checked against independent computations: scikit-learn's
NearestNeighbors for the neighbours, and the documented vote and recall
written out in plain numpy. The job's tests reuse test_linear_eval's data.
"""

import json

import numpy as np
import pytest
from sklearn import neighbors

from mmv_core.evaluation import fewshot
from mmv_core.evaluation import linear_eval
from mmv_core.evaluation import neighbours
from mmv_core.evaluation import report
from pipelines import compare
from test_linear_eval import make_clips, run_job, write_embeddings, write_split_zip

ALL_PROTOCOLS = "--protocols=linear,knn,retrieval,fewshot"


def _normalised(rng, rows: int, dim: int = 8) -> np.ndarray:
  x = rng.standard_normal((rows, dim)).astype(np.float32)
  return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_nearest_neighbours_equal_scikit_learns_in_blocks(monkeypatch):
  monkeypatch.setattr(neighbours, "BLOCK_ROWS", 7)  # Several blocks and a short last one.
  rng = np.random.default_rng(0)
  train, test = _normalised(rng, 60), _normalised(rng, 30)
  indices, similarities = neighbours.nearest(test, train, 20)
  reference = neighbors.NearestNeighbors(n_neighbors=20, metric="cosine", algorithm="brute")
  distances, expected = reference.fit(train).kneighbors(test)
  np.testing.assert_array_equal(indices, expected)
  np.testing.assert_allclose(similarities, 1 - distances, atol=1e-6)


def test_nearest_orders_equal_similarities_by_key_as_a_stable_sort_does(monkeypatch):
  monkeypatch.setattr(neighbours, "BLOCK_ROWS", 5)
  rng = np.random.default_rng(2)
  distinct = _normalised(rng, 12)
  keys = distinct[rng.integers(0, 12, 40)]  # Each key several times: ties everywhere.
  queries = np.concatenate([_normalised(rng, 9), distinct[:3], np.zeros((2, 8), np.float32)])
  for k in (1, 4, 7, 40):
    indices, similarities = neighbours.nearest(queries, keys, k)
    expected = np.argsort(-(queries @ keys.T), axis=1, kind="stable")[:, :k]
    np.testing.assert_array_equal(indices, expected)
    np.testing.assert_array_equal(similarities, np.take_along_axis(queries @ keys.T, expected, 1))


def _vote_by_hand(labels: np.ndarray, similarities: np.ndarray) -> int:
  """docs/protocol.md's kNN vote, one query at a time."""
  classes = sorted(set(labels.tolist()))
  votes = {c: int((labels == c).sum()) for c in classes}
  summed = {c: float(similarities[labels == c].sum()) for c in classes}
  nearest = {c: int(np.flatnonzero(labels == c)[0]) for c in classes}
  return max(classes, key=lambda c: (votes[c], summed[c], -nearest[c]))


def test_knn_vote_is_the_majority_then_summed_similarity_then_the_nearest():
  labels = np.array(
      [
          [2, 1, 1, 2, 0],  # 1 and 2 tie on votes; 2's are nearer, so larger in sum.
          [0, 1, 0, 1, 2],  # 0 and 1 tie; equal sums below: 0 is the nearest.
          [3, 3, 1, 1, 1],  # 1 has the most votes.
      ]
  )
  similarities = np.array(
      [[0.9, 0.8, 0.7, 0.6, 0.5], [0.5, 0.5, 0.5, 0.5, 0.1], [0.9, 0.9, 0.2, 0.2, 0.2]],
      np.float32,
  )
  got = neighbours.knn_predict(labels, similarities, num_classes=4)
  assert got.tolist() == [2, 0, 1]
  assert got.tolist() == [_vote_by_hand(l, s) for l, s in zip(labels, similarities)]


def test_knn_and_retrieval_equal_independent_computations():
  rng = np.random.default_rng(1)
  num_classes = 6
  means = 0.4 * rng.standard_normal((num_classes, 8))
  train_labels = rng.integers(0, num_classes, 90)
  test_labels = rng.integers(0, num_classes, 40)
  train = _normalised(rng, 90) + means[train_labels].astype(np.float32)
  test = _normalised(rng, 40) + means[test_labels].astype(np.float32)
  train /= np.linalg.norm(train, axis=1, keepdims=True)
  test /= np.linalg.norm(test, axis=1, keepdims=True)

  reference = neighbors.NearestNeighbors(n_neighbors=50, metric="cosine", algorithm="brute")
  distances, order = reference.fit(train).kneighbors(test)
  indices, similarities = neighbours.nearest(test, train, 50)
  knn = neighbours.knn_top1(train_labels[indices], similarities, test_labels, num_classes)
  for k in neighbours.KNN_KS:
    predicted = [
        _vote_by_hand(train_labels[row[:k]], 1 - d[:k]) for row, d in zip(order, distances)
    ]
    assert knn[k] == np.mean(np.array(predicted) == test_labels)
  # Retrieval by brute force: every similarity, sorted.
  similarity = test @ train.T
  recall = neighbours.recall_at_k(train_labels[indices], test_labels)
  for k in neighbours.RETRIEVAL_KS:
    top = np.argsort(-similarity, axis=1, kind="stable")[:, :k]
    assert recall[k] == np.mean(
        [(train_labels[row] == y).any() for row, y in zip(top, test_labels)]
    )
  assert 0.2 < knn[5] < 1.0  # The data is hard enough for the comparison to mean something.


def test_video_features_are_the_mean_of_its_clips_normalised():
  clips = np.array([[3.0, 0.0], [0.0, 2.0], [1.0, 3.0]], np.float32)
  got = neighbours.video_features(clips, np.array([0, 1, 0]), num_videos=3)
  np.testing.assert_allclose(got, [[0.8, 0.6], [0.0, 1.0], [0.0, 0.0]], atol=1e-6)
  in_order = neighbours.video_features(clips[[0, 2, 1]], np.array([0, 0, 2]), num_videos=3)
  np.testing.assert_allclose(in_order, [[0.8, 0.6], [0.0, 0.0], [0.0, 1.0]], atol=1e-6)


def test_few_shot_draws_n_videos_per_class_the_same_for_the_same_seed():
  labels = np.array([0] * 6 + [1] * 3 + [2] * 1)
  picked = fewshot.draw_videos(labels, 2, seed=4)
  assert np.bincount(labels[picked]).tolist() == [2, 2, 1]  # Class 2 has one video only.
  np.testing.assert_array_equal(picked, fewshot.draw_videos(labels, 2, seed=4))
  draws = {tuple(fewshot.draw_videos(labels, 2, seed=s)) for s in range(10)}
  assert len(draws) > 1


def test_the_job_runs_every_protocol_and_reports_them(tmp_path, capsys):
  split_zip = write_split_zip(tmp_path / "splits.zip")
  embeddings = write_embeddings(
      tmp_path / "emb",
      make_clips(0, signal=0.6),
      settings={"num_frames": 4, "crop_size": 32, "min_resize": 32, "stride": 2},
  )
  metrics = run_job(tmp_path, split_zip, embeddings, ALL_PROTOCOLS)
  printed = capsys.readouterr().out
  for split in ("1", "2", "3", "mean"):
    m = metrics["splits"][split] if split != "mean" else metrics["mean"]
    assert set(m[linear_eval.KNN_TOP1]) == {"1", "5", "20"}
    assert set(m[linear_eval.RETRIEVAL_RECALL]) == {"1", "5", "10", "20", "50"}
    assert set(m[linear_eval.FEWSHOT_TOP1]) == {"1", "5", "10"}
    assert "test_top1" in m
  one_shot = metrics["splits"]["1"][linear_eval.FEWSHOT_TOP1]["1"]
  assert len(one_shot["draws"]) == fewshot.DRAWS
  assert one_shot["mean"] == pytest.approx(np.mean(one_shot["draws"]))
  # Every test video has a training video of its class among all of them.
  assert metrics["mean"][linear_eval.RETRIEVAL_RECALL]["50"] == 1.0
  assert metrics["evaluated"]["num_frames"] == 4
  markdown = (tmp_path / "out" / report.REPORT_FILE).read_text()
  for title, _ in report.PROTOCOL_TABLES.values():
    assert title in markdown and title in printed
  assert "| mean | " in printed and "R@50" in printed and "10-shot" in printed


def test_knn_alone_fits_no_classifier(tmp_path):
  split_zip = write_split_zip(tmp_path / "splits.zip")
  embeddings = write_embeddings(tmp_path / "emb", make_clips(0, signal=0.6))
  metrics = run_job(tmp_path, split_zip, embeddings, "--protocols=knn")
  assert linear_eval.KNN_TOP1 in metrics["mean"] and "test_top1" not in metrics["mean"]
  assert metrics["mean"]["protocols"] == ["knn"]
  out = tmp_path / "out"
  assert not (out / report.CLASSIFIERS_DIR).exists() and not (out / report.PER_CLASS_FILE).exists()


def test_compare_tabulates_and_charts_runs_side_by_side(tmp_path):
  split_zip = write_split_zip(tmp_path / "splits.zip")
  runs = []
  for name, signal, protocols in (("weak", 0.3, ALL_PROTOCOLS), ("strong", 3.0, "--protocols=knn")):
    embeddings = write_embeddings(tmp_path / f"emb_{name}", make_clips(1, signal=signal))
    run_job(tmp_path / name, split_zip, embeddings, protocols)
    runs.append(tmp_path / name / "out")
  output = tmp_path / "cmp" / "comparison.md"
  markdown = compare.main([*map(str, runs), f"--output={output}"])
  assert output.read_text() == markdown
  assert (tmp_path / "cmp" / "comparison.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  header, _, weak, strong = [line for line in markdown.splitlines() if line.startswith("|")]
  assert "test top-1" in header and "kNN k=5" in header and "R@10" in header
  metrics = [json.loads((run / report.METRICS_FILE).read_text()) for run in runs]
  columns = [c.strip() for c in header.split("|")[1:-1]]
  weak_cells = dict(zip(columns, (c.strip() for c in weak.split("|")[1:-1])))
  strong_cells = dict(zip(columns, (c.strip() for c in strong.split("|")[1:-1])))
  # 10 test videos a split: every value carries the caveat mark.
  assert weak_cells["kNN k=5"] == (
      report.percent(metrics[0]["mean"][linear_eval.KNN_TOP1]["5"]) + report.CAVEAT_MARK
  )
  assert strong_cells["test top-1"] == "-"  # That run had no linear probe.
  assert float(strong_cells["kNN k=1"].rstrip(report.CAVEAT_MARK)) > float(
      weak_cells["kNN k=1"].rstrip(report.CAVEAT_MARK)
  )
  # The same evaluation twice, both in folders named `out`: told apart by place.
  twice = compare.main([str(runs[0]), str(runs[0]), f"--output={tmp_path / 'cmp2.md'}"])
  first, second = [line for line in twice.splitlines() if line.startswith("| ")][1:]
  assert first.split("|")[1].strip().endswith("(out) #1")
  assert second.split("|")[1].strip().endswith("(out) #2")
