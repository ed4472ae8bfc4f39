"""Tests of the embedding file contract (mmv_core.embeddings.schema)."""

import json
import pathlib
import subprocess
import sys

import numpy as np
import pytest
from lazy_tensorflow import tf

from mmv_core.embeddings import schema
from mmv_core.embeddings import example_proto

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]


# Plain Python values, so that another process can be given them as their repr.
FIELDS = dict(
    video_id="v_Archery_g03_c02",
    label=1,
    label_name="Archery",
    clip_type=schema.CLIP_TYPE_TEST,
    clip_index=7,
    embedding=np.linspace(-1, 1, 8).tolist(),
    extra_features={"audio_repr": [[1.5, 2.5]]},
)


def example(**overrides):
  return schema.make_example(**(FIELDS | overrides))


def test_example_round_trip():
  parsed = schema.parse_example(example().SerializeToString())
  assert parsed[schema.VIDEO_ID] == "v_Archery_g03_c02"
  assert parsed[schema.LABEL] == 1 and parsed[schema.CLIP_INDEX] == 7
  assert parsed[schema.LABEL_NAME] == "Archery"
  assert parsed[schema.CLIP_TYPE] == "test"
  assert parsed[schema.EMBEDDING].dtype == np.float32
  np.testing.assert_allclose(parsed[schema.EMBEDDING], np.linspace(-1, 1, 8), rtol=1e-6)
  np.testing.assert_array_equal(parsed["audio_repr"], [1.5, 2.5])

  header = schema.parse_example(example().SerializeToString(), include_floats=False)
  assert set(header) == set(schema.SCALAR_FEATURES)


def test_an_example_serializes_to_the_same_bytes_in_every_process():
  """Protobuf orders a map's entries differently from process to process; `serialize` does not."""
  script = (
      "from mmv_core.embeddings import example_proto, schema;"
      f"print(example_proto.serialize(schema.make_example(**{FIELDS!r})).hex())"
  )
  other_process = subprocess.run(
      [sys.executable, "-c", script], cwd=REPO_ROOT, capture_output=True, text=True, check=True
  ).stdout.strip()
  assert other_process == example_proto.serialize(example()).hex()


def test_examples_are_tensorflows_wire_format_both_ways():
  ours = example()
  theirs = tf.train.Example.FromString(ours.SerializeToString())
  assert theirs.features.feature[schema.VIDEO_ID].bytes_list.value == [b"v_Archery_g03_c02"]
  assert theirs.features.feature[schema.CLIP_INDEX].int64_list.value == [7]
  np.testing.assert_allclose(
      theirs.features.feature[schema.EMBEDDING].float_list.value, np.linspace(-1, 1, 8), rtol=1e-6
  )
  theirs.features.feature[schema.LABEL].int64_list.value[0] = 4
  parsed = schema.parse_example(theirs.SerializeToString())
  assert parsed[schema.LABEL] == 4 and parsed[schema.VIDEO_ID] == "v_Archery_g03_c02"
  np.testing.assert_array_equal(parsed["audio_repr"], [1.5, 2.5])


def test_bad_examples_are_named_errors():
  with pytest.raises(ValueError, match="clip_type"):
    example(clip_type="validation")
  with pytest.raises(ValueError, match="reserved"):
    example(extra_features={schema.LABEL: [1.0]})
  incomplete = example()
  del incomplete.features.feature[schema.CLIP_INDEX]
  with pytest.raises(
      schema.EmbeddingFormatError, match="shard-3#4: feature 'clip_index' is missing"
  ):
    schema.parse_example(incomplete.SerializeToString(), source="shard-3#4")


def test_a_nan_embedding_is_an_error_naming_its_shard_record_and_clip():
  broken = example()
  broken.features.feature[schema.EMBEDDING].float_list.value[3] = float("nan")
  with pytest.raises(
      schema.EmbeddingFormatError,
      match="part-00002.tfrecord#17: feature 'embedding' of v_Archery_g03_c02 "
      "test clip 7 holds NaN or infinite values",
  ):
    schema.parse_example(broken.SerializeToString(), source="part-00002.tfrecord#17")


def test_records_are_read_back_and_corruption_is_detected(tmp_path):
  shard = tmp_path / schema.SHARDS_DIR / "part-0.tfrecord"
  shard.parent.mkdir()
  records = [example(clip_index=i).SerializeToString() for i in range(3)]
  with tf.io.TFRecordWriter(str(shard)) as writer:
    for record in records:
      writer.write(record)
  assert schema.shard_paths(str(tmp_path)) == [str(shard)]
  assert list(schema.iter_records(str(shard))) == records

  data = bytearray(shard.read_bytes())
  data[-10] ^= 0xFF
  shard.write_bytes(bytes(data))
  with pytest.raises(schema.EmbeddingFormatError, match=r"part-0.tfrecord#2: record checksum"):
    list(schema.iter_records(str(shard)))
  shard.write_bytes(bytes(data[:-3]))
  with pytest.raises(schema.EmbeddingFormatError, match=r"#2: truncated record"):
    list(schema.iter_records(str(shard)))


def test_run_config_must_give_clip_counts(tmp_path):
  with pytest.raises(schema.EmbeddingFormatError, match="run.json"):
    schema.read_run_config(str(tmp_path))
  (tmp_path / schema.RUN_CONFIG_FILE).write_text(json.dumps({schema.NUM_TRAIN_CLIPS: 10}))
  with pytest.raises(schema.EmbeddingFormatError, match="num_test_windows"):
    schema.read_run_config(str(tmp_path))
  (tmp_path / schema.RUN_CONFIG_FILE).write_text(
      json.dumps({schema.NUM_TRAIN_CLIPS: 10, schema.NUM_TEST_WINDOWS: 10})
  )
  assert schema.read_run_config(str(tmp_path))[schema.NUM_TEST_WINDOWS] == 10
  with pytest.raises(schema.EmbeddingFormatError, match="no embedding shards"):
    schema.shard_paths(str(tmp_path))


@pytest.mark.parametrize("size", [0, 1, 31, 32, 4096, 40_000])
def test_float_values_read_the_packed_floats_whatever_their_length(size):
  values = np.random.default_rng(size).standard_normal(size).astype(np.float32)
  encoded = tf.train.FloatList(value=values).SerializeToString()
  got = example_proto.float_values(example_proto.FloatList.FromString(encoded))
  assert got.dtype == np.float32
  np.testing.assert_array_equal(got, values)


def test_float_values_of_a_list_with_unknown_fields_are_its_values():
  values = np.array([1.5, -2.0, 3.25], np.float32)
  encoded = tf.train.FloatList(value=values).SerializeToString() + b"\x10\x05"  # Field 2: 5.
  got = example_proto.float_values(example_proto.FloatList.FromString(encoded))
  np.testing.assert_array_equal(got, values)
