"""load_embeddings: an embedding job's output as numpy arrays."""

import json
import sys

import numpy as np
import pytest

from mmv_core.embeddings import schema
from mmv_core import load_embeddings
from mmv_core.embeddings import tfrecord

DIM = 3
RUN_CONFIG = {"backbone": "s3d", "num_train_clips": 2, "num_test_windows": 1}


def _clip(video_id, label, clip_type, clip_index):
  """(fields, serialized example); the embedding encodes the clip's identity."""
  fields = dict(
      video_id=video_id,
      label=label,
      label_name=f"Class{label}",
      clip_type=clip_type,
      clip_index=clip_index,
  )
  embedding = np.array([label, clip_index, clip_type == "test"], np.float32)
  example = schema.make_example(
      **fields, embedding=embedding, extra_features={"video_text": -embedding[:2]}
  )
  return fields, embedding, example.SerializeToString()


# Shards in no particular order, as a Beam job writes them.
SHARDS = {
    "part-00000-of-00002.tfrecord": [
        _clip("v_B_g01_c01", 1, "test", 0),
        _clip("v_A_g01_c01", 0, "train", 1),
    ],
    "part-00001-of-00002.tfrecord": [
        _clip("v_A_g01_c01", 0, "test", 0),
        _clip("v_B_g01_c01", 1, "train", 0),
        _clip("v_A_g01_c01", 0, "train", 0),
    ],
}


def _write_output(output_dir, shards=SHARDS, run_config=RUN_CONFIG):
  (output_dir / schema.SHARDS_DIR).mkdir(parents=True)
  for name, clips in shards.items():
    records = b"".join(tfrecord.encode_record(serialized) for *_, serialized in clips)
    (output_dir / schema.SHARDS_DIR / name).write_bytes(records)
  if run_config is not None:
    (output_dir / schema.RUN_CONFIG_FILE).write_text(json.dumps(run_config))
  return str(output_dir)


def _expected(clip_type=None):
  clips = [
      clip
      for clips in SHARDS.values()
      for clip in clips
      if clip_type in (None, clip[0]["clip_type"])
  ]
  return sorted(clips, key=lambda c: (c[0]["video_id"], c[0]["clip_type"], c[0]["clip_index"]))


@pytest.mark.parametrize("clip_type", [None, "train", "test"])
def test_rows_are_every_clip_sorted_and_filtered(tmp_path, clip_type):
  embeddings = load_embeddings(_write_output(tmp_path), clip_type=clip_type)
  expected = _expected(clip_type)
  assert len(embeddings) == len(expected)
  assert embeddings.X.dtype == np.float32 and embeddings.X.shape == (len(expected), DIM)
  np.testing.assert_array_equal(embeddings.X, [embedding for _, embedding, _ in expected])
  for name, dtype in [("label", np.int64), ("clip_index", np.int64)]:
    assert getattr(embeddings, name).dtype == dtype
  for name in ["video_id", "label", "label_name", "clip_type", "clip_index"]:
    assert getattr(embeddings, name).tolist() == [fields[name] for fields, *_ in expected], name
  assert embeddings.run_config == RUN_CONFIG


def test_feature_selects_another_float_feature(tmp_path):
  embeddings = load_embeddings(_write_output(tmp_path), feature="video_text")
  np.testing.assert_array_equal(embeddings.X, [-e[:2] for _, e, _ in _expected()])


def test_to_pandas_without_pandas_says_how_to_install_it(tmp_path, monkeypatch):
  embeddings = load_embeddings(_write_output(tmp_path))
  monkeypatch.setitem(sys.modules, "pandas", None)  # Makes `import pandas` fail.
  with pytest.raises(ImportError, match="pip install pandas"):
    embeddings.to_pandas()


def test_to_pandas_has_a_row_per_clip_and_x_as_one_column(tmp_path):
  pytest.importorskip("pandas")
  embeddings = load_embeddings(_write_output(tmp_path))
  frame = embeddings.to_pandas()
  assert list(frame.columns) == ["video_id", "label", "label_name", "clip_type", "clip_index", "X"]
  assert frame["video_id"].tolist() == embeddings.video_id.tolist()
  np.testing.assert_array_equal(np.stack(frame["X"]), embeddings.X)


def test_embeddings_of_different_sizes_name_the_record(tmp_path):
  short = schema.make_example(
      video_id="v_C_g01_c01",
      label=2,
      label_name="Class2",
      clip_type="test",
      clip_index=0,
      embedding=np.zeros(DIM - 1),
  ).SerializeToString()
  shards = {**SHARDS, "part-00002-of-00003.tfrecord": [({}, None, short)]}
  with pytest.raises(
      schema.EmbeddingFormatError,
      match=r"part-00002-of-00003\.tfrecord#0: 'embedding' has 2 values",
  ):
    load_embeddings(_write_output(tmp_path, shards))


def test_missing_feature_and_missing_run_config_are_errors(tmp_path):
  with pytest.raises(
      schema.EmbeddingFormatError,
      match=r"part-00000-of-00002\.tfrecord#0: no float feature 'video_audio'",
  ):
    load_embeddings(_write_output(tmp_path / "a"), feature="video_audio")
  with pytest.raises(schema.EmbeddingFormatError, match=r"run\.json: cannot read"):
    load_embeddings(_write_output(tmp_path / "b", run_config=None))
  with pytest.raises(ValueError, match="clip_type must be one of"):
    load_embeddings(_write_output(tmp_path / "c"), clip_type="validation")
