"""Nearest-neighbour evaluation of video embeddings: kNN classification and video retrieval.

Stage: evaluation, beside the linear probe (mmv_core/evaluation/linear_eval.py), from the
same clip embeddings. docs/protocol.md defines both protocols, with the papers.

- A video's feature is the mean of its clips' embeddings (a training video's
  training clips, a test video's test windows), L2-normalised
  (`video_features`); the similarity of two videos is the cosine of theirs.
- `nearest`: each test video's most similar training videos, in blocks of
  `BLOCK_ROWS` test videos, so that the similarities held at once are
  BLOCK_ROWS x training videos float32, whatever the split's size.
- kNN (`knn_predict`): a majority vote of the k nearest training videos;
  ties between classes go to the class whose votes have the larger summed
  similarity, then to the class of the nearest of them.
- Retrieval (`recall_at_k`): R@k is the share of test videos that have a
  training video of their class among their k nearest.
"""

import numpy as np
from scipy import sparse

KNN_KS = (1, 5, 20)
RETRIEVAL_KS = (1, 5, 10, 20, 50)
# Test videos whose similarities to every training video are held at once.
BLOCK_ROWS = 1024


def video_features(features: np.ndarray, video: np.ndarray, num_videos: int) -> np.ndarray:
  """float32 [V, D]: each video's clips averaged, then L2-normalised.

  Args:
    features: float [N, D], one row per clip.
    video: int [N], each clip's video in [0, num_videos).
    num_videos: V; a video without clips gets a zero row.
  """
  # One sparse product: np.add.at (row by row) and np.add.reduceat over rows are
  # 30 to 100 times slower on a split's 95,000 x 2,048 clips.
  membership = sparse.csr_matrix(
      (np.ones(len(video), features.dtype), (video, np.arange(len(video)))),
      shape=(num_videos, len(video)),
  )
  sums = np.asarray(membership @ features, np.float32)
  norms = np.linalg.norm(sums, axis=1, keepdims=True)
  return np.divide(sums, norms, out=np.zeros_like(sums), where=norms > 0)


def nearest(queries: np.ndarray, keys: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
  """The `k` keys most similar to each query, most similar first.

  Args:
    queries: float32 [Q, D], L2-normalised rows.
    keys: float32 [K, D], L2-normalised rows.
    k: how many; at most K.

  Returns:
    (int64 [Q, k] key indices, float32 [Q, k] cosine similarities). Equal
    similarities are ordered by key index.
  """
  k = min(k, len(keys))
  indices = np.empty((len(queries), k), np.int64)
  similarities = np.empty((len(queries), k), np.float32)
  for start in range(0, len(queries), BLOCK_ROWS):
    block = queries[start : start + BLOCK_ROWS] @ keys.T
    order = _top_k(block, k)
    indices[start : start + len(block)] = order
    similarities[start : start + len(block)] = np.take_along_axis(block, order, axis=1)
  return indices, similarities


def _top_k(block: np.ndarray, k: int) -> np.ndarray:
  """int64 [R, k]: each row's k largest, largest first, equal ones in column order.

  What a stable sort of the negated rows gives, from a partition: the rows'
  k-th largest values bound the candidates, which are sorted alone. A row
  with ties at that bound has more than k candidates and is sorted whole.
  """
  if k == 0:
    return np.empty((len(block), 0), np.int64)
  bound = -np.partition(-block, k - 1, axis=1)[:, k - 1 : k]
  candidates = block >= bound
  tied = candidates.sum(axis=1) != k
  order = np.empty((len(block), k), np.int64)
  if np.any(~tied):
    columns = np.nonzero(candidates[~tied])[1].reshape(-1, k)  # In column order.
    values = np.take_along_axis(block[~tied], columns, axis=1)
    ranked = np.argsort(-values, axis=1, kind="stable")
    order[~tied] = np.take_along_axis(columns, ranked, axis=1)
  if np.any(tied):
    order[tied] = np.argsort(-block[tied], axis=1, kind="stable")[:, :k]
  return order


def knn_predict(
    neighbour_labels: np.ndarray, neighbour_similarities: np.ndarray, num_classes: int
) -> np.ndarray:
  """int64 [Q]: each query's class by a vote of its neighbours (see the module docstring).

  Args:
    neighbour_labels: int [Q, k], the labels of each query's k nearest, nearest first.
    neighbour_similarities: float [Q, k], their similarities.
    num_classes: C.
  """
  queries, k = neighbour_labels.shape
  rows = np.repeat(np.arange(queries), k)
  votes = np.zeros((queries, num_classes), np.int64)
  np.add.at(votes, (rows, neighbour_labels.ravel()), 1)
  summed = np.zeros((queries, num_classes), np.float64)
  np.add.at(summed, (rows, neighbour_labels.ravel()), neighbour_similarities.ravel())
  # The rank of each class's nearest vote (k where it has none): lower is nearer.
  first_rank = np.full((queries, num_classes), k, np.int64)
  np.minimum.at(first_rank, (rows, neighbour_labels.ravel()), np.tile(np.arange(k), queries))
  # Most votes, then the largest summed similarity, then the nearest vote.
  order = np.lexsort((first_rank, -summed, -votes), axis=-1)
  return order[:, 0]


def knn_top1(
    neighbour_labels: np.ndarray,
    neighbour_similarities: np.ndarray,
    test_labels: np.ndarray,
    num_classes: int,
    ks=KNN_KS,
) -> dict[int, float]:
  """{k: kNN top-1 accuracy in [0, 1]} of the test videos.

  Args:
    neighbour_labels: int [Q, >= max(ks)], the labels of each test video's
      nearest training videos, nearest first (`nearest`).
    neighbour_similarities: float [Q, >= max(ks)], their similarities.
    test_labels: int [Q].
    num_classes: C.
    ks: the k to score.
  """
  return {
      k: float(
          np.mean(
              knn_predict(neighbour_labels[:, :k], neighbour_similarities[:, :k], num_classes)
              == test_labels
          )
      )
      for k in ks
  }


def recall_at_k(
    neighbour_labels: np.ndarray, test_labels: np.ndarray, ks=RETRIEVAL_KS
) -> dict[int, float]:
  """{k: R@k in [0, 1]}: the share of test videos with a training video of their class
  among their k nearest (`neighbour_labels`: int [Q, >= max(ks)], nearest first)."""
  hits = neighbour_labels[:, : max(ks)] == test_labels[:, None]
  first_hit = np.where(hits.any(axis=1), hits.argmax(axis=1), np.iinfo(np.int64).max)
  return {k: float(np.mean(first_hit < k)) for k in ks}
