"""`tf.train.Example` and `tf.train.SequenceExample` messages without TensorFlow.

TensorFlow's import costs seconds and its log lines; the embeddings' and the
video cache's readers and writers need only the message format. These classes are built with the
protobuf library from the schema below, which is TensorFlow's
`example.proto` / `feature.proto` wire format (same field numbers and types,
repeated numbers packed), so their bytes and TensorFlow's are interchangeable:

  Example   { Features features = 1; }
  Features  { map<string, Feature> feature = 1; }
  Feature   { oneof kind { BytesList bytes_list = 1; FloatList float_list = 2;
                           Int64List int64_list = 3; } }
  BytesList { repeated bytes value = 1; }
  FloatList { repeated float value = 1; }   (packed)
  Int64List { repeated int64 value = 1; }   (packed)
  FeatureList      { repeated Feature feature = 1; }
  FeatureLists     { map<string, FeatureList> feature_list = 1; }
  SequenceExample  { Features context = 1; FeatureLists feature_lists = 2; }

They live in a private descriptor pool, so they coexist with TensorFlow's own
classes in one process.
"""

import numpy as np
from google.protobuf import descriptor_pb2
from google.protobuf import descriptor_pool
from google.protobuf import message_factory

_PACKAGE = "mmv_core.example"
_Field = descriptor_pb2.FieldDescriptorProto


def _schema() -> descriptor_pb2.FileDescriptorProto:
  schema = descriptor_pb2.FileDescriptorProto(
      name="mmv_core/example.proto", package=_PACKAGE, syntax="proto3"
  )
  for name, value_type in (
      ("BytesList", _Field.TYPE_BYTES),
      ("FloatList", _Field.TYPE_FLOAT),
      ("Int64List", _Field.TYPE_INT64),
  ):
    schema.message_type.add(name=name).field.add(
        name="value", number=1, label=_Field.LABEL_REPEATED, type=value_type
    )
  feature = schema.message_type.add(name="Feature")
  feature.oneof_decl.add(name="kind")
  for number, name, type_name in (
      (1, "bytes_list", "BytesList"),
      (2, "float_list", "FloatList"),
      (3, "int64_list", "Int64List"),
  ):
    feature.field.add(
        name=name,
        number=number,
        label=_Field.LABEL_OPTIONAL,
        type=_Field.TYPE_MESSAGE,
        type_name=f".{_PACKAGE}.{type_name}",
        oneof_index=0,
    )
  _add_map(schema, "Features", "feature", "Feature")
  schema.message_type.add(name="Example").field.add(
      name="features",
      number=1,
      label=_Field.LABEL_OPTIONAL,
      type=_Field.TYPE_MESSAGE,
      type_name=f".{_PACKAGE}.Features",
  )
  schema.message_type.add(name="FeatureList").field.add(
      name="feature",
      number=1,
      label=_Field.LABEL_REPEATED,
      type=_Field.TYPE_MESSAGE,
      type_name=f".{_PACKAGE}.Feature",
  )
  _add_map(schema, "FeatureLists", "feature_list", "FeatureList")
  sequence = schema.message_type.add(name="SequenceExample")
  for number, name, type_name in ((1, "context", "Features"), (2, "feature_lists", "FeatureLists")):
    sequence.field.add(
        name=name,
        number=number,
        label=_Field.LABEL_OPTIONAL,
        type=_Field.TYPE_MESSAGE,
        type_name=f".{_PACKAGE}.{type_name}",
    )
  return schema


def _add_map(
    schema: descriptor_pb2.FileDescriptorProto, message: str, field: str, value_type: str
) -> None:
  """Adds `message { map<string, value_type> field = 1; }` to `schema`."""
  entry_name = "".join(part.title() for part in field.split("_")) + "Entry"
  container = schema.message_type.add(name=message)
  entry = container.nested_type.add(name=entry_name)
  entry.options.map_entry = True
  entry.field.add(name="key", number=1, label=_Field.LABEL_OPTIONAL, type=_Field.TYPE_STRING)
  entry.field.add(
      name="value",
      number=2,
      label=_Field.LABEL_OPTIONAL,
      type=_Field.TYPE_MESSAGE,
      type_name=f".{_PACKAGE}.{value_type}",
  )
  container.field.add(
      name=field,
      number=1,
      label=_Field.LABEL_REPEATED,
      type=_Field.TYPE_MESSAGE,
      type_name=f".{_PACKAGE}.{message}.{entry_name}",
  )


_POOL = descriptor_pool.DescriptorPool()
_POOL.Add(_schema())


def _message_class(name: str):
  return message_factory.GetMessageClass(_POOL.FindMessageTypeByName(f"{_PACKAGE}.{name}"))


Example = _message_class("Example")
Features = _message_class("Features")
Feature = _message_class("Feature")
BytesList = _message_class("BytesList")
FloatList = _message_class("FloatList")
Int64List = _message_class("Int64List")
SequenceExample = _message_class("SequenceExample")


def serialize(message) -> bytes:
  """The message's wire bytes, with map entries in key order.

  Protobuf otherwise writes a map's entries (an Example's features) in an
  order that changes from process to process: in key order, the same content
  gives the same bytes in every process and run, so outputs compare by checksum.
  """
  return message.SerializeToString(deterministic=True)


_PACKED_VALUE_TAG = 0x0A  # Field 1, length-delimited.


def float_values(float_list) -> np.ndarray:
  """float32 [n], the values of a `FloatList`, without a Python float per value.

  Re-encoded, a FloatList is its packed field (whatever encoding it was read
  from): one tag byte, the payload's length as a varint, then the values as
  little-endian float32, read straight from those bytes (50 times faster
  than iterating the repeated field). Anything else in the encoding (fields
  unknown to this schema) falls back to the repeated field.
  """
  encoded = float_list.SerializeToString()
  if not encoded:
    return np.zeros(0, np.float32)
  length, shift, start = 0, 0, 1
  while start < len(encoded):
    byte = encoded[start]
    length |= (byte & 0x7F) << shift
    shift += 7
    start += 1
    if not byte & 0x80:  # The varint's last byte.
      break
  if encoded[0] != _PACKED_VALUE_TAG or start + length != len(encoded) or length % 4:
    return np.array(float_list.value, np.float32)
  return np.frombuffer(encoded, "<f4", offset=start).astype(np.float32)
