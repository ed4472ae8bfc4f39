"""ZIP central directory (incl. ZIP64), member byte ranges, inflate and CRC-32,
and what malformed archives and zip bombs come to."""

import io
import struct
import zipfile
import zlib

import pytest

from ingest_fixtures import deflate_zeros, patch_central_entry, zip_bytes
from mmv_core.video import zip_index

MEMBERS = {
    "UCF101/v_A_g01_c01.avi": b"RIFF" + bytes(range(256)) * 40,
    "UCF101/v_B_g01_c01.avi": b"",
    "UCF101/v_C_g01_c01.avi": b"incompressible?" + bytes(reversed(range(256))) * 3,
}


def _archive(compression: int, *, comment: bytes = b"", force_zip64: bool = False) -> bytes:
  buffer = io.BytesIO()
  with zipfile.ZipFile(buffer, "w", compression) as archive:
    archive.comment = comment
    for name, content in MEMBERS.items():
      with archive.open(name, "w", force_zip64=force_zip64) as f:
        f.write(content)
  return buffer.getvalue()


class _CountingReader:

  def __init__(self, data: bytes):
    self.data = data
    self.calls = 0

  def __call__(self, start: int, length: int) -> bytes:
    self.calls += 1
    return self.data[start : start + length]


def _extract_all(data: bytes) -> dict[str, bytes]:
  reader = _CountingReader(data)
  index = zip_index.read_index(reader, len(data))
  return {
      name: zip_index.extract(m, zip_index.read_member_data(reader, index, m))
      for name, m in index.members.items()
  }


@pytest.mark.parametrize("compression", [zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED])
def test_members_round_trip(compression):
  assert _extract_all(_archive(compression, comment=b"a comment PK\x05\x06")) == MEMBERS


def test_index_agrees_with_zipfile():
  data = _archive(zipfile.ZIP_DEFLATED)
  index = zip_index.read_index(_CountingReader(data), len(data))
  with zipfile.ZipFile(io.BytesIO(data)) as archive:
    for info in archive.infolist():
      member = index.members[info.filename]
      assert (member.crc32, member.compressed_size, member.file_size, member.header_offset) == (
          info.CRC,
          info.compress_size,
          info.file_size,
          info.header_offset,
      )


def test_zip64_archive(monkeypatch):
  # With the limit at 0, zipfile writes every size and offset through ZIP64
  # extra fields and adds the ZIP64 end records, as for a >4 GiB archive.
  monkeypatch.setattr(zipfile, "ZIP64_LIMIT", 0)
  monkeypatch.setattr(zipfile, "ZIP_FILECOUNT_LIMIT", 0)
  data = _archive(zipfile.ZIP_DEFLATED, force_zip64=True)
  assert struct.pack("<I", 0x06064B50) in data  # ZIP64 end of central directory.
  monkeypatch.undo()

  assert _extract_all(data) == MEMBERS


def test_member_read_is_one_request():
  data = _archive(zipfile.ZIP_DEFLATED)
  reader = _CountingReader(data)
  index = zip_index.read_index(reader, len(data))
  reader.calls = 0
  zip_index.read_member_data(reader, index, index.members["UCF101/v_A_g01_c01.avi"])
  assert reader.calls == 1


def test_crc_mismatch_is_reported():
  data = _archive(zipfile.ZIP_STORED)
  index = zip_index.read_index(_CountingReader(data), len(data))
  member = index.members["UCF101/v_A_g01_c01.avi"]
  raw = bytearray(zip_index.read_member_data(_CountingReader(data), index, member))
  raw[100] ^= 0xFF
  with pytest.raises(zip_index.ZipFormatError, match="CRC-32 mismatch"):
    zip_index.extract(member, bytes(raw), source="mirror.zip")


def test_truncated_deflate_stream_is_reported():
  content = MEMBERS["UCF101/v_A_g01_c01.avi"]
  compressor = zlib.compressobj(wbits=-zlib.MAX_WBITS)
  deflated = compressor.compress(content) + compressor.flush()
  member = zip_index.ZipMember(
      name="x.avi",
      method=zip_index.DEFLATED,
      crc32=zlib.crc32(content),
      compressed_size=len(deflated),
      file_size=len(content),
      header_offset=0,
  )
  with pytest.raises(zip_index.ZipFormatError, match="truncated"):
    zip_index.extract(member, deflated[: len(deflated) // 2])


def test_not_a_zip_names_the_source():
  data = b"this is not a zip archive" * 10
  with pytest.raises(zip_index.ZipFormatError, match="mirror.zip: no end of central"):
    zip_index.read_index(_CountingReader(data), len(data), source="mirror.zip")


def test_inflating_stops_just_past_the_declared_size():
  bomb = deflate_zeros(64)  # 64 KiB that inflate to 64 MiB.
  member = zip_index.ZipMember(
      name="x.avi",
      method=zip_index.DEFLATED,
      crc32=0,
      compressed_size=len(bomb),
      file_size=1000,
      header_offset=0,
  )
  with pytest.raises(
      zip_index.ZipFormatError, match="mirror.zip: x.avi: inflates to more than the 1000 bytes"
  ):
    zip_index.extract(member, bomb, source="mirror.zip")


def test_members_over_the_size_limit_are_refused_before_any_read(monkeypatch):
  data = _archive(zipfile.ZIP_DEFLATED)
  reader = _CountingReader(data)
  index = zip_index.read_index(reader, len(data))
  reader.calls = 0
  monkeypatch.setattr(zip_index, "MAX_MEMBER_BYTES", 1000)
  with pytest.raises(zip_index.ZipFormatError, match="over the 1000-byte limit"):
    zip_index.read_member_data(reader, index, index.members["UCF101/v_A_g01_c01.avi"])
  assert reader.calls == 0


def test_malformed_entries_are_set_aside_with_their_reasons():
  names = sorted(MEMBERS)
  data = zip_bytes(
      [*MEMBERS.items(), (names[0], b"second copy"), ("UCF101/x_XX.avi", b"")],
      extra={names[1]: struct.pack("<HHQQ", 0x0001, 24, 1, 2)},
  )
  data = patch_central_entry(
      data, names[1], file_size=0xFFFFFFFF, compressed_size=0xFFFFFFFF, header_offset=0xFFFFFFFF
  )
  data = patch_central_entry(data, "UCF101/x_XX.avi", flags=0x800).replace(b"x_XX", b"x_\xff\xfe")

  index = zip_index.read_index(_CountingReader(data), len(data), source="mirror.zip")

  assert set(index.members) == {names[2]}
  reasons = index.unreadable
  assert "2 entries named" in reasons[names[0]]
  assert "ZIP64 extra field" in reasons[names[1]] and "claims 24 bytes" in reasons[names[1]]
  (bad_name,) = set(reasons) - {names[0], names[1]}
  assert "not valid UTF-8" in reasons[bad_name]
  assert all(reason.startswith("mirror.zip: ") for reason in reasons.values())
