"""TFRecord files through Beam's FileSystems, so gs:// and local paths read alike.

Framing per record: uint64 length, uint32 masked CRC-32C of the length, the
data, uint32 masked CRC-32C of the data (little-endian). TensorFlow reads
these files (`tf.data.TFRecordDataset`); we read them without TensorFlow's
own file systems, which do not know a GCS emulator.
"""

import struct
from collections.abc import Iterator

import google_crc32c
from apache_beam.io.filesystems import FileSystems

_LENGTH = struct.Struct("<Q")
_CRC = struct.Struct("<I")
_CRC_MASK_DELTA = 0xA282EAD8


class TFRecordError(ValueError):
  """A TFRecord file is truncated or fails its checksums."""


def _masked_crc(data: bytes) -> int:
  crc = google_crc32c.value(data)
  return (((crc >> 15) | (crc << 17)) + _CRC_MASK_DELTA) & 0xFFFFFFFF


def encode_record(record: bytes) -> bytes:
  """One record in TFRecord framing."""
  length = _LENGTH.pack(len(record))
  return length + _CRC.pack(_masked_crc(length)) + record + _CRC.pack(_masked_crc(record))


def iter_records(path: str, error: type[Exception] = TFRecordError) -> Iterator[bytes]:
  """Streams the records of one file, checking every checksum.

  A truncated or corrupt file raises `error` naming the file and the record
  (`path#index`), so it never reads as a silently shorter file.
  """
  with FileSystems.open(path) as f:
    index = 0
    while True:
      header = f.read(_LENGTH.size + _CRC.size)
      if not header:
        return
      if len(header) < _LENGTH.size + _CRC.size:
        raise error(f"{path}#{index}: truncated record header")
      (length,) = _LENGTH.unpack_from(header)
      if _masked_crc(header[: _LENGTH.size]) != _CRC.unpack_from(header, _LENGTH.size)[0]:
        raise error(f"{path}#{index}: corrupt record length")
      data = f.read(length)
      footer = f.read(_CRC.size)
      if len(data) < length or len(footer) < _CRC.size:
        raise error(f"{path}#{index}: truncated record")
      if _masked_crc(data) != _CRC.unpack(footer)[0]:
        raise error(f"{path}#{index}: record checksum mismatch (corrupt CRC)")
      yield data
      index += 1
