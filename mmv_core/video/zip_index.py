"""ZIP archives read member by member through byte ranges.

Stage: ingestion, between `sources` (bytes at offsets) and `encode`. The
central directory, at the end of the archive, lists every member with its
compressed size, CRC-32 and the offset of its local header; with it each
worker reads only its own members' bytes. ZIP64 (archives over 4 GiB, as the
7 GB UCF101 mirror) and stored / deflated members are supported; encrypted
members, other compression methods and multi-disk archives are rejected.

Hostile archives cost one video each, never the job nor unbounded memory:

- A central-directory entry that cannot be read (its name, ZIP64 extra field
  or flags are malformed, or its name is repeated) is set aside in
  `ZipIndex.unreadable` with the reason, and the rest of the archive is read.
- A member's declared sizes are checked against `MAX_MEMBER_BYTES` and its
  local header offset against the archive's size before any of its bytes are
  read.
- Inflating stops one byte past the size the directory declares, so a zip
  bomb costs at most its declared size in memory.

All functions take a `read_range(start, length) -> bytes` callable, so the
logic is independent of where the archive lives.
"""

import collections
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
# The most bytes a member may declare, compressed or not. UCF101's members
# average 0.5 MB (6.96 GB over 13,320 videos); a worker holds a member at most
# twice (compressed and inflated), so 1 GiB bounds it at 2 GiB per video
# while leaving room for other datasets' longer videos.
MAX_MEMBER_BYTES = 1 << 30


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
  """An archive's size, its members by name, and the entries that cannot be read.

  Attributes:
    archive_size: bytes.
    members: the readable members by name.
    unreadable: why each other entry cannot be read (a message naming the
      archive and the entry), by name; a name that is not valid UTF-8 has its
      bad bytes replaced by U+FFFD.
  """

  archive_size: int
  members: dict[str, ZipMember]
  unreadable: dict[str, str] = dataclasses.field(default_factory=dict)


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


def _parse_zip64_extra(extra: bytes, needed: list[str], where: str) -> dict[str, int]:
  """Values of the 0xFFFFFFFF header fields `needed`, in ZIP64 extra order."""
  position = 0
  while position + 4 <= len(extra):
    field_id, field_size = struct.unpack_from("<HH", extra, position)
    if field_id == _ZIP64_EXTRA_ID:
      held = len(extra) - position - 4
      if field_size > held:
        raise ZipFormatError(f"{where}: ZIP64 extra field claims {field_size} bytes, holds {held}")
      if field_size < 8 * len(needed):
        raise ZipFormatError(
            f"{where}: ZIP64 extra field too short "
            f"({field_size} bytes for {len(needed)} values)"
        )
      values = struct.unpack_from(f"<{len(needed)}Q", extra, position + 4)
      return dict(zip(needed, values))
    position += 4 + field_size
  raise ZipFormatError(f"{where}: sizes need a ZIP64 extra field, none found")


def _central_directory_location(
    read_range: ReadRange, archive_size: int, source: str
) -> tuple[int, int, int]:
  """(offset, size, number of entries) of the central directory."""
  tail_size = min(archive_size, _EOCD.size + _MAX_COMMENT + _ZIP64_LOCATOR.size)
  tail_start = archive_size - tail_size
  tail = read_range(tail_start, tail_size)
  eocd_position = _find_eocd(tail, source)
  _, disk, cd_disk, _, entries, cd_size, cd_offset, _ = _EOCD.unpack_from(tail, eocd_position)
  locator_position = eocd_position - _ZIP64_LOCATOR.size
  if (
      locator_position >= 0
      and _ZIP64_LOCATOR.unpack_from(tail, locator_position)[0] == _ZIP64_LOCATOR_SIGNATURE
  ):
    _, _, zip64_eocd_offset, disks = _ZIP64_LOCATOR.unpack_from(tail, locator_position)
    if disks > 1:
      raise ZipFormatError(f"{source}: multi-disk archives are not supported")
    record = read_range(zip64_eocd_offset, _ZIP64_EOCD.size)
    signature, _, _, _, disk, cd_disk, _, entries, cd_size, cd_offset = _ZIP64_EOCD.unpack(record)
    if signature != _ZIP64_EOCD_SIGNATURE:
      raise ZipFormatError(
          f"{source}: no ZIP64 end of central directory record at {zip64_eocd_offset}"
      )
  if disk != 0 or cd_disk != 0:
    raise ZipFormatError(f"{source}: multi-disk archives are not supported")
  if cd_offset + cd_size > archive_size:
    raise ZipFormatError(
        f"{source}: central directory ({cd_size} bytes at {cd_offset}) lies past "
        f"the end of the {archive_size}-byte archive"
    )
  return cd_offset, cd_size, entries


def _decode_name(raw_name: bytes, flags: int) -> tuple[str, bool]:
  """(name, whether it decoded cleanly); undecodable bytes become U+FFFD."""
  if not flags & _FLAG_UTF8:
    return raw_name.decode("cp437"), True  # Every byte string is valid cp437.
  try:
    return raw_name.decode("utf-8"), True
  except UnicodeDecodeError:
    return raw_name.decode("utf-8", "replace"), False


def parse_central_directory(
    directory: bytes, entries: int, source: str = "zip"
) -> tuple[dict[str, ZipMember], dict[str, str]]:
  """Parses `entries` central directory headers from `directory`.

  Returns:
    (readable members by name, why each other entry cannot be read, by
    name). Every entry of a repeated name is unreadable: which one is the
    video would be a guess.

  Raises:
    ZipFormatError: the directory itself is cut short or not a directory.
  """
  members: dict[str, ZipMember] = {}
  unreadable: dict[str, str] = {}
  name_counts: collections.Counter[str] = collections.Counter()
  position = 0
  for parsed in range(entries):
    if position + _CENTRAL_HEADER.size > len(directory):
      raise ZipFormatError(f"{source}: central directory ends after {parsed} of {entries} entries")
    (
        signature,
        _,
        _,
        flags,
        method,
        _,
        _,
        crc32,
        compressed_size,
        file_size,
        name_length,
        extra_length,
        comment_length,
        _,
        _,
        _,
        header_offset,
    ) = _CENTRAL_HEADER.unpack_from(directory, position)
    if signature != _CENTRAL_HEADER_SIGNATURE:
      raise ZipFormatError(f"{source}: bad central directory entry at byte {position}")
    position += _CENTRAL_HEADER.size
    raw_name = directory[position : position + name_length]
    extra = directory[position + name_length : position + name_length + extra_length]
    position += name_length + extra_length + comment_length
    name, name_is_valid = _decode_name(raw_name, flags)
    name_counts[name] += 1
    where = f"{source}: {name}"
    needed = [
        field
        for field, value in (
            ("file_size", file_size),
            ("compressed_size", compressed_size),
            ("header_offset", header_offset),
        )
        if value == 0xFFFFFFFF
    ]
    try:
      if not name_is_valid:
        raise ZipFormatError(f"{where}: name flagged UTF-8 is not valid UTF-8 ({raw_name!r})")
      if flags & _FLAG_ENCRYPTED:
        raise ZipFormatError(f"{where}: encrypted")
      zip64 = _parse_zip64_extra(extra, needed, where) if needed else {}
    except ZipFormatError as e:
      unreadable[name] = str(e)
      continue
    members[name] = ZipMember(
        name=name,
        method=method,
        crc32=crc32,
        compressed_size=zip64.get("compressed_size", compressed_size),
        file_size=zip64.get("file_size", file_size),
        header_offset=zip64.get("header_offset", header_offset),
    )
  for name, count in name_counts.items():
    if count > 1:
      members.pop(name, None)
      unreadable[name] = (
          f"{source}: {name}: {count} entries named so in the central "
          "directory; which one is the video is ambiguous"
      )
  return members, unreadable


def read_index(read_range: ReadRange, archive_size: int, source: str = "zip") -> ZipIndex:
  """Reads the central directory (two or three ranged reads) into a `ZipIndex`.

  Args:
    read_range: returns `length` bytes of the archive from `start`.
    archive_size: size of the archive in bytes.
    source: names the archive in errors.

  Raises:
    ZipFormatError: the archive has no readable central directory. Entries
      that cannot be read go to `ZipIndex.unreadable` instead.
  """
  cd_offset, cd_size, entries = _central_directory_location(read_range, archive_size, source)
  members, unreadable = parse_central_directory(read_range(cd_offset, cd_size), entries, source)
  return ZipIndex(archive_size=archive_size, members=members, unreadable=unreadable)


def _check_declared_sizes(member: ZipMember, where: str) -> None:
  largest = max(member.compressed_size, member.file_size)
  if largest > MAX_MEMBER_BYTES:
    raise ZipFormatError(
        f"{where}: declares {largest} bytes, over the {MAX_MEMBER_BYTES}-byte limit "
        "per member (zip_index.MAX_MEMBER_BYTES)"
    )


def read_member_data(
    read_range: ReadRange, index: ZipIndex, member: ZipMember, source: str = "zip"
) -> bytes:
  """Returns the member's compressed bytes, usually with a single ranged read.

  The local header's extra field may differ from the central directory's, so
  the header is read along with the data and parsed first.

  Raises:
    ZipFormatError: the member declares more than `MAX_MEMBER_BYTES` or its
      local header lies past the archive's end (both before any read), or its
      local header is missing or its data run past the archive's end.
  """
  where = f"{source}: {member.name}"
  _check_declared_sizes(member, where)
  if member.header_offset + _LOCAL_HEADER.size > index.archive_size:
    raise ZipFormatError(
        f"{where}: local header offset {member.header_offset} lies past "
        f"the end of the {index.archive_size}-byte archive"
    )
  name_length = len(member.name.encode("utf-8"))
  guess = min(
      _LOCAL_HEADER.size + name_length + _LOCAL_EXTRA_SLACK + member.compressed_size,
      index.archive_size - member.header_offset,
  )
  chunk = read_range(member.header_offset, guess)
  signature, _, _, _, _, _, _, _, _, local_name_length, local_extra_length = (
      _LOCAL_HEADER.unpack_from(chunk)
  )
  if signature != _LOCAL_HEADER_SIGNATURE:
    raise ZipFormatError(f"{where}: no local file header at offset {member.header_offset}")
  data_start = _LOCAL_HEADER.size + local_name_length + local_extra_length
  data_end = data_start + member.compressed_size
  if member.header_offset + data_end > index.archive_size:
    raise ZipFormatError(f"{where}: data runs past the archive end")
  if data_end <= len(chunk):
    return chunk[data_start:data_end]
  return chunk[data_start:] + read_range(member.header_offset + len(chunk), data_end - len(chunk))


def _inflate(data: bytes, declared_size: int, where: str) -> bytes:
  """Inflates a raw deflate stream, producing at most `declared_size + 1` bytes."""
  inflater = zlib.decompressobj(-zlib.MAX_WBITS)
  try:
    content = inflater.decompress(data, declared_size + 1)
  except zlib.error as e:
    raise ZipFormatError(f"{where}: corrupt deflate data ({e})") from e
  if len(content) > declared_size:
    raise ZipFormatError(
        f"{where}: inflates to more than the {declared_size} bytes "
        "the central directory declares"
    )
  # Short of its output limit, decompress consumed all of `data`: without an
  # end-of-stream marker the stream was cut.
  if not inflater.eof:
    raise ZipFormatError(f"{where}: deflate stream is truncated")
  return content


def extract(member: ZipMember, data: bytes, source: str = "zip") -> bytes:
  """Decompresses a member's bytes and checks their size and CRC-32.

  At most the declared size plus one byte is inflated, whatever `data` holds.

  Raises:
    ZipFormatError: unsupported method, corrupt deflate stream, a declared
      size over `MAX_MEMBER_BYTES`, or a size or CRC-32 different from the
      central directory's.
  """
  where = f"{source}: {member.name}"
  _check_declared_sizes(member, where)
  if member.method == STORED:
    content = data
  elif member.method == DEFLATED:
    content = _inflate(data, member.file_size, where)
  else:
    raise ZipFormatError(f"{where}: unsupported compression method {member.method}")
  if len(content) != member.file_size:
    raise ZipFormatError(
        f"{where}: {len(content)} bytes after extraction, directory says {member.file_size}"
    )
  crc32 = zlib.crc32(content)
  if crc32 != member.crc32:
    raise ZipFormatError(
        f"{where}: CRC-32 mismatch (content {crc32:08x}, directory {member.crc32:08x})"
    )
  return content
