"""TFRecord files through Beam's FileSystems, so gs:// and local paths read alike.

Framing per record: uint64 length, uint32 masked CRC-32C of the length, the
data, uint32 masked CRC-32C of the data (little-endian). TensorFlow reads
these files (`tf.data.TFRecordDataset`); we read them without TensorFlow's
own file systems, which do not know a GCS emulator.
"""

import io
import struct
from collections.abc import Iterator

import google_crc32c
from apache_beam.io.filesystems import FileSystems

_LENGTH = struct.Struct("<Q")
_CRC = struct.Struct("<I")
_CRC_MASK_DELTA = 0xA282EAD8
_HEADER_SIZE = _LENGTH.size + _CRC.size


class TFRecordError(ValueError):
  """A TFRecord file is truncated or fails its checksums."""


def _masked_crc(data: bytes) -> int:
  crc = google_crc32c.value(data)
  return (((crc >> 15) | (crc << 17)) + _CRC_MASK_DELTA) & 0xFFFFFFFF


def encode_record(record: bytes) -> bytes:
  """One record in TFRecord framing."""
  length = _LENGTH.pack(len(record))
  return length + _CRC.pack(_masked_crc(length)) + record + _CRC.pack(_masked_crc(record))


def _read_length(f, where: str, error: type[Exception]) -> int | None:
  """The length field of the next record of the open file `f`, checked; None at its end."""
  header = f.read(_HEADER_SIZE)
  if not header:
    return None
  if len(header) < _HEADER_SIZE:
    raise error(f"{where}: truncated record header")
  (length,) = _LENGTH.unpack_from(header)
  if _masked_crc(header[: _LENGTH.size]) != _CRC.unpack_from(header, _LENGTH.size)[0]:
    raise error(f"{where}: corrupt record length")
  return length


def _read_record(f, where: str, error: type[Exception]) -> bytes | None:
  """The next record of the open file `f`, checked; None at its end.

  `where` names the record in errors (`path#index`).
  """
  length = _read_length(f, where, error)
  if length is None:
    return None
  data = f.read(length)
  footer = f.read(_CRC.size)
  if len(data) < length or len(footer) < _CRC.size:
    raise error(f"{where}: truncated record")
  if _masked_crc(data) != _CRC.unpack(footer)[0]:
    raise error(f"{where}: record checksum mismatch (corrupt CRC)")
  return data


def iter_records(path: str, error: type[Exception] = TFRecordError) -> Iterator[bytes]:
  """Streams the records of one file, checking every checksum.

  A truncated or corrupt file raises `error` naming the file and the record
  (`path#index`), so it never reads as a silently shorter file.
  """
  with FileSystems.open(path) as f:
    index = 0
    while (record := _read_record(f, f"{path}#{index}", error)) is not None:
      yield record
      index += 1


def decode_record(framed: bytes, where: str, error: type[Exception] = TFRecordError) -> bytes:
  """The record of `framed`, one whole record as `encode_record` gives it, checked.

  `where` names it in errors, e.g. `path@offset`.
  """
  buffer = io.BytesIO(framed)
  record = _read_record(buffer, where, error)
  if record is None or buffer.tell() != len(framed):
    raise error(f"{where}: not one whole record ({len(framed)} bytes)")
  return record


def record_spans(path: str, error: type[Exception] = TFRecordError) -> list[tuple[int, int]]:
  """(offset, length) of each framed record of a file, from its headers alone.

  Only the length fields are read and checked, so this costs a seek per
  record, not a read of the file; the records' own checksums are checked
  when they are read (`decode_record`).
  """
  spans = []
  with FileSystems.open(path) as f:
    offset = 0
    while (length := _read_length(f, f"{path}#{len(spans)}", error)) is not None:
      framed = _HEADER_SIZE + length + _CRC.size
      spans.append((offset, framed))
      offset += framed
      f.seek(offset)
  return spans
