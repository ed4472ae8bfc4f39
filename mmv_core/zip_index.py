"""ZIP archives read member by member through byte ranges.

Stage: ingestion, between `sources` (bytes at offsets) and `encode`. The
central directory, at the end of the archive, lists every member with its
compressed size, CRC-32 and the offset of its local header; with it each
worker reads only its own members' bytes. ZIP64 (archives over 4 GiB, as the
7 GB UCF101 mirror) and stored / deflated members are supported; encrypted
members, other compression methods and multi-disk archives are rejected.

All functions take a `read_range(start, length) -> bytes` callable, so the
logic is independent of where the archive lives.
"""

import dataclasses
import struct
import zlib
from collections.abc import Callable

ReadRange = Callable[[int, int], bytes]

STORED = 0
DEFLATED = 8

_EOCD = struct.Struct("<IHHHHIIH")
_EOCD_SIGNATURE = 0x06054B50
_ZIP64_LOCATOR = struct.Struct("<IIQI")
_ZIP64_LOCATOR_SIGNATURE = 0x07064B50
_ZIP64_EOCD = struct.Struct("<IQHHIIQQQQ")
_ZIP64_EOCD_SIGNATURE = 0x06064B50
_CENTRAL_HEADER = struct.Struct("<IHHHHHHIIIHHHHHII")
_CENTRAL_HEADER_SIGNATURE = 0x02014B50
_LOCAL_HEADER = struct.Struct("<IHHHHHIIIHH")
_LOCAL_HEADER_SIGNATURE = 0x04034B50
_ZIP64_EXTRA_ID = 0x0001
_MAX_COMMENT = 0xFFFF
_FLAG_ENCRYPTED = 0x1
_FLAG_UTF8 = 0x800
# Extra-field bytes read along with a member in the same request; local extra
# fields are usually empty or a 20-byte ZIP64 record.
_LOCAL_EXTRA_SLACK = 64


class ZipFormatError(ValueError):
  """The archive or one of its members is malformed, or fails its CRC-32."""


@dataclasses.dataclass(frozen=True)
class ZipMember:
  """One member as the central directory describes it.

  Attributes:
    name: path inside the archive, e.g. `UCF101/v_ApplyEyeMakeup_g08_c01.avi`.
    method: compression method, `STORED` or `DEFLATED`.
    crc32: CRC-32 of the uncompressed content.
    compressed_size: bytes of member data in the archive.
    file_size: bytes of uncompressed content.
    header_offset: offset of the member's local file header.
  """
  name: str
  method: int
  crc32: int
  compressed_size: int
  file_size: int
  header_offset: int


@dataclasses.dataclass(frozen=True)
class ZipIndex:
  """An archive's size and its members by name."""
  archive_size: int
  members: dict[str, ZipMember]


def _find_eocd(tail: bytes, source: str) -> int:
  position = len(tail) - _EOCD.size
  while position >= 0:
    position = tail.rfind(struct.pack("<I", _EOCD_SIGNATURE), 0, position + 4)
    if position < 0:
      break
    comment_length = _EOCD.unpack_from(tail, position)[-1]
    if position + _EOCD.size + comment_length == len(tail):
      return position
    position -= 1
  raise ZipFormatError(f"{source}: no end of central directory record; not a zip file")


def _parse_zip64_extra(extra: bytes, needed: list[str], source: str,
                       name: str) -> dict[str, int]:
  """Values of the 0xFFFFFFFF header fields `needed`, in ZIP64 extra order."""
  position = 0
  while position + 4 <= len(extra):
    field_id, field_size = struct.unpack_from("<HH", extra, position)
    if field_id == _ZIP64_EXTRA_ID:
      if field_size < 8 * len(needed):
        raise ZipFormatError(f"{source}: {name}: ZIP64 extra field too short")
      values = struct.unpack_from(f"<{len(needed)}Q", extra, position + 4)
      return dict(zip(needed, values))
    position += 4 + field_size
  raise ZipFormatError(f"{source}: {name}: sizes need a ZIP64 extra field, none found")


def _central_directory_location(read_range: ReadRange, archive_size: int,
                                source: str) -> tuple[int, int, int]:
  """(offset, size, number of entries) of the central directory."""
  tail_size = min(archive_size, _EOCD.size + _MAX_COMMENT + _ZIP64_LOCATOR.size)
  tail_start = archive_size - tail_size
  tail = read_range(tail_start, tail_size)
  eocd_position = _find_eocd(tail, source)
  (_, disk, cd_disk, _, entries, cd_size, cd_offset, _) = _EOCD.unpack_from(
      tail, eocd_position)
  locator_position = eocd_position - _ZIP64_LOCATOR.size
  if locator_position >= 0 and _ZIP64_LOCATOR.unpack_from(
      tail, locator_position)[0] == _ZIP64_LOCATOR_SIGNATURE:
    _, _, zip64_eocd_offset, disks = _ZIP64_LOCATOR.unpack_from(tail, locator_position)
    if disks > 1:
      raise ZipFormatError(f"{source}: multi-disk archives are not supported")
    record = read_range(zip64_eocd_offset, _ZIP64_EOCD.size)
    (signature, _, _, _, disk, cd_disk, _, entries, cd_size,
     cd_offset) = _ZIP64_EOCD.unpack(record)
    if signature != _ZIP64_EOCD_SIGNATURE:
      raise ZipFormatError(
          f"{source}: no ZIP64 end of central directory record at {zip64_eocd_offset}")
  if disk != 0 or cd_disk != 0:
    raise ZipFormatError(f"{source}: multi-disk archives are not supported")
  if cd_offset + cd_size > archive_size:
    raise ZipFormatError(
        f"{source}: central directory ({cd_size} bytes at {cd_offset}) lies past "
        f"the end of the {archive_size}-byte archive")
  return cd_offset, cd_size, entries


def parse_central_directory(directory: bytes, entries: int,
                            source: str = "zip") -> list[ZipMember]:
  """Parses `entries` central directory headers from `directory`."""
  members = []
  position = 0
  for _ in range(entries):
    if position + _CENTRAL_HEADER.size > len(directory):
      raise ZipFormatError(f"{source}: central directory ends after {len(members)} "
                           f"of {entries} entries")
    (signature, _, _, flags, method, _, _, crc32, compressed_size, file_size,
     name_length, extra_length, comment_length, _, _, _,
     header_offset) = _CENTRAL_HEADER.unpack_from(directory, position)
    if signature != _CENTRAL_HEADER_SIGNATURE:
      raise ZipFormatError(f"{source}: bad central directory entry at byte {position}")
    position += _CENTRAL_HEADER.size
    raw_name = directory[position:position + name_length]
    name = raw_name.decode("utf-8" if flags & _FLAG_UTF8 else "cp437")
    extra = directory[position + name_length:position + name_length + extra_length]
    position += name_length + extra_length + comment_length
    needed = [field for field, value in (("file_size", file_size),
                                         ("compressed_size", compressed_size),
                                         ("header_offset", header_offset))
              if value == 0xFFFFFFFF]
    if flags & _FLAG_ENCRYPTED:
      raise ZipFormatError(f"{source}: {name} is encrypted")
    zip64 = _parse_zip64_extra(extra, needed, source, name) if needed else {}
    members.append(ZipMember(
        name=name, method=method, crc32=crc32,
        compressed_size=zip64.get("compressed_size", compressed_size),
        file_size=zip64.get("file_size", file_size),
        header_offset=zip64.get("header_offset", header_offset)))
  return members


def read_index(read_range: ReadRange, archive_size: int,
               source: str = "zip") -> ZipIndex:
  """Reads the central directory (two or three ranged reads) into a `ZipIndex`.

  Args:
    read_range: returns `length` bytes of the archive from `start`.
    archive_size: size of the archive in bytes.
    source: names the archive in errors.
  """
  cd_offset, cd_size, entries = _central_directory_location(
      read_range, archive_size, source)
  members = parse_central_directory(read_range(cd_offset, cd_size), entries, source)
  return ZipIndex(archive_size=archive_size,
                  members={member.name: member for member in members})


def read_member_data(read_range: ReadRange, index: ZipIndex, member: ZipMember,
                     source: str = "zip") -> bytes:
  """Returns the member's compressed bytes, usually with a single ranged read.

  The local header's extra field may differ from the central directory's, so
  the header is read along with the data and parsed first.
  """
  name_length = len(member.name.encode("utf-8"))
  guess = min(_LOCAL_HEADER.size + name_length + _LOCAL_EXTRA_SLACK + member.compressed_size,
              index.archive_size - member.header_offset)
  chunk = read_range(member.header_offset, guess)
  if len(chunk) < _LOCAL_HEADER.size:
    raise ZipFormatError(f"{source}: {member.name}: local header lies past the archive end")
  (signature, _, _, _, _, _, _, _, _, local_name_length,
   local_extra_length) = _LOCAL_HEADER.unpack_from(chunk)
  if signature != _LOCAL_HEADER_SIGNATURE:
    raise ZipFormatError(
        f"{source}: {member.name}: no local file header at offset {member.header_offset}")
  data_start = _LOCAL_HEADER.size + local_name_length + local_extra_length
  data_end = data_start + member.compressed_size
  if member.header_offset + data_end > index.archive_size:
    raise ZipFormatError(f"{source}: {member.name}: data runs past the archive end")
  if data_end <= len(chunk):
    return chunk[data_start:data_end]
  return chunk[data_start:] + read_range(member.header_offset + len(chunk),
                                         data_end - len(chunk))


def extract(member: ZipMember, data: bytes, source: str = "zip") -> bytes:
  """Decompresses a member's bytes and checks their size and CRC-32.

  Raises:
    ZipFormatError: unsupported method, corrupt deflate stream, or a size or
      CRC-32 different from the central directory's.
  """
  where = f"{source}: {member.name}"
  if member.method == STORED:
    content = data
  elif member.method == DEFLATED:
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    try:
      content = inflater.decompress(data) + inflater.flush()
    except zlib.error as e:
      raise ZipFormatError(f"{where}: corrupt deflate data ({e})") from e
    if not inflater.eof:
      raise ZipFormatError(f"{where}: deflate stream is truncated")
  else:
    raise ZipFormatError(f"{where}: unsupported compression method {member.method}")
  if len(content) != member.file_size:
    raise ZipFormatError(
        f"{where}: {len(content)} bytes after extraction, directory says {member.file_size}")
  crc32 = zlib.crc32(content)
  if crc32 != member.crc32:
    raise ZipFormatError(
        f"{where}: CRC-32 mismatch (content {crc32:08x}, directory {member.crc32:08x})")
  return content
