"""MMV checkpoint files, loaded safely: the released pickles and the `.npz`.

The released MMV checkpoints (`mmv_s3d.pkl`, `mmv_tsm_resnet_x1.pkl`,
`mmv_tsm_resnet_x2.pkl`) are dill pickles of `{'params': ..., 'state': ...}`,
each a two-level mapping `module path -> {name -> array}` written by dm-haiku
in 2020, possibly holding haiku's old immutable containers (`FlatMapping`,
`frozendict`) instead of dicts.

Unpickling runs code named by the file, so this module never hands a file to
`pickle.load`: `_SafeUnpickler` resolves only an explicit allow-list of
globals (numpy array reconstruction, dill's array helper, plain containers)
and maps haiku's container names onto a plain-dict stand-in, without
importing haiku. The converted format is `.npz` (no pickle at all), keyed
`<collection>/<module path>:<name>`.

Trees here are plain `dict[str, dict[str, np.ndarray]]`; "expected" trees
hold anything with `.shape` and `.dtype` (`ArraySpec`, `jax.ShapeDtypeStruct`).
"""

import codecs
import collections.abc
import dataclasses
import hashlib
import io
import os
import pickle
from typing import Any, Mapping

from apache_beam.io.filesystems import FileSystems
import numpy as np

from mmv_core.video import sources
from mmv_core.models.names import BACKBONES

PARAMS = 'params'
STATE = 'state'
COLLECTIONS = (PARAMS, STATE)

# Module path of haiku's containers in pickles written by haiku 0.0.1-0.0.3.
HAIKU_DATA_STRUCTURES = 'haiku._src.data_structures'

# Separates the module path from the parameter name in flat keys; haiku
# module paths use '/' and '~' but never ':'.
NAME_SEPARATOR = ':'

_ZIP_MAGIC = b'PK\x03\x04'

Tree = dict[str, dict[str, np.ndarray]]
SpecTree = Mapping[str, Mapping[str, Any]]


class CheckpointError(ValueError):
  """A checkpoint cannot be read, is unsafe, or does not fit the model."""


class WrongBackboneError(CheckpointError):
  """The checkpoint is exactly another backbone's (`actual`)."""

  def __init__(self, message: str, actual: str):
    super().__init__(message)
    self.actual = actual


@dataclasses.dataclass(frozen=True)
class ArraySpec:
  """Expected shape and dtype of one checkpoint array."""

  shape: tuple[int, ...]
  dtype: np.dtype


@dataclasses.dataclass(frozen=True)
class Checkpoint:
  """A loaded checkpoint.

  Attributes:
    params: module path -> {name -> array}, e.g. float32 [7, 7, 3, 64].
    state: module path -> {name -> array} (BatchNorm moving averages: float32
      `average`/`hidden`, int32 [] `counter`).
    path: where it was read from.
    sha256: hex digest of the file's bytes.
  """

  params: Tree
  state: Tree
  path: str
  sha256: str


# ---------------------------------------------------------------------------
# Safe unpickling.


class _LegacyHaikuMapping(dict):
  """Plain-dict stand-in for haiku's old `FlatMapping` and `frozendict`.

  Old pickles rebuild these either by calling the class on a mapping
  (`FlatMapping.__reduce__`, `frozendict.__reduce__`, `to_immutable_dict`),
  which `dict.__init__` handles, or by `NEWOBJ` followed by `BUILD` with the
  instance's slots, which `__setstate__` handles.
  """

  def __setstate__(self, state: Any) -> None:
    dict_state, slot_state = state if isinstance(state, tuple) else (state, None)
    fields = {**(dict_state or {}), **(slot_state or {})}
    for storage_field in ('_storage', '_mapping'):
      if isinstance(fields.get(storage_field), collections.abc.Mapping):
        self.update(fields[storage_field])
        return
    raise pickle.UnpicklingError(f'unrecognised state of a haiku mapping (fields {sorted(fields)})')


# numpy's array `_reconstruct`, whichever private module holds it.
_RECONSTRUCT_ARRAY = np.empty(0).__reduce__()[0]


def _dill_create_array(reconstruct, args, state, npdict=None) -> np.ndarray:
  """Stand-in for `dill._dill._create_array`, limited to plain ndarrays."""
  if reconstruct is not _RECONSTRUCT_ARRAY:
    raise pickle.UnpicklingError(
        f'dill array helper called with {reconstruct!r}, not numpy _reconstruct'
    )
  if npdict:
    raise pickle.UnpicklingError('arrays with instance attributes are refused')
  array = reconstruct(*args)
  array.__setstate__(state)
  return array


def _latin1_encode(text: str, encoding: str) -> bytes:
  """Stand-in for `_codecs.encode`, which protocol-2 pickles use for bytes."""
  if encoding != 'latin1':
    raise pickle.UnpicklingError(f'refused codec {encoding!r}')
  return codecs.encode(text, 'latin1')


def _allowed_globals() -> dict[tuple[str, str], Any]:
  """(module, name) -> object, for every global a checkpoint may name."""
  scalar = np.float32(0).__reduce__()[0]
  frombuffer = np.empty(1).__reduce_ex__(5)[0]
  allowed = {
      ('numpy', 'ndarray'): np.ndarray,
      ('numpy', 'dtype'): np.dtype,
      ('dill._dill', '_create_array'): _dill_create_array,
      ('_codecs', 'encode'): _latin1_encode,
      ('builtins', 'dict'): dict,
      ('collections', 'OrderedDict'): collections.OrderedDict,
  }
  # numpy 1.x wrote `numpy.core...`, numpy 2.x writes `numpy._core...`.
  for core in ('numpy.core', 'numpy._core'):
    allowed[(f'{core}.multiarray', '_reconstruct')] = _RECONSTRUCT_ARRAY
    allowed[(f'{core}.multiarray', 'scalar')] = scalar
    allowed[(f'{core}.numeric', '_frombuffer')] = frombuffer
  for container in ('FlatMapping', 'FlatMap', 'frozendict', 'to_immutable_dict'):
    allowed[(HAIKU_DATA_STRUCTURES, container)] = _LegacyHaikuMapping
  return allowed


_ALLOWED_GLOBALS = _allowed_globals()


class _RefusedGlobal(pickle.UnpicklingError):
  """The pickle names a global outside the allow-list."""

  def __init__(self, module: str, name: str):
    super().__init__(f'{module}.{name}')
    self.qualified_name = f'{module}.{name}'


class _SafeUnpickler(pickle.Unpickler):
  """Unpickler resolving only `_ALLOWED_GLOBALS`; refuses before any call."""

  def find_class(self, module: str, name: str) -> Any:
    try:
      return _ALLOWED_GLOBALS[(module, name)]
    except KeyError:
      raise _RefusedGlobal(module, name) from None


def _safe_unpickle(data: bytes, path: str) -> Any:
  """Unpickles `data` with `_SafeUnpickler`; every failure names `path`."""
  try:
    return _SafeUnpickler(io.BytesIO(data)).load()
  except _RefusedGlobal as e:
    raise CheckpointError(
        f'{path}: refused to unpickle global {e.qualified_name!r}: only numpy '
        'arrays, plain containers and haiku mappings are allowed in a '
        'checkpoint'
    ) from None
  except EOFError:
    raise CheckpointError(
        f'{path}: truncated pickle ({len(data)} bytes end before its STOP opcode)'
    ) from None
  except Exception as e:  # pylint: disable=broad-except
    raise CheckpointError(
        f'{path}: not a readable checkpoint pickle ({type(e).__name__}: {e}); '
        f'file starts with {data[:16]!r}'
    ) from None


# ---------------------------------------------------------------------------
# Tree structure.


def flat_name(module: str, name: str) -> str:
  return f'{module}{NAME_SEPARATOR}{name}'


def _as_tree(value: Any, path: str, collection: str) -> Tree:
  """Checks `value` is module -> {name -> numeric array}; returns plain dicts."""
  if not isinstance(value, collections.abc.Mapping):
    raise CheckpointError(
        f'{path}: {collection!r} is a {type(value).__name__}, expected a '
        'mapping module path -> {name -> array}'
    )
  tree = {}
  for module, leaves in value.items():
    is_module = (
        isinstance(module, str)
        and isinstance(leaves, collections.abc.Mapping)
        and all(isinstance(name, str) for name in leaves)
    )
    if not is_module:
      raise CheckpointError(
          f'{path}: {collection}[{module!r}] is a {type(leaves).__name__}, '
          'expected a mapping name (str) -> array'
      )
    tree[module] = {}
    for name, leaf in leaves.items():
      if not isinstance(leaf, (np.ndarray, np.generic)):
        raise CheckpointError(
            f'{path}: {collection} {flat_name(module, name)} is a '
            f'{type(leaf).__name__}, expected a numpy array'
        )
      array = np.asarray(leaf)
      if array.dtype.kind not in 'biuf':
        raise CheckpointError(
            f'{path}: {collection} {flat_name(module, name)} has dtype '
            f'{array.dtype}, expected a numeric dtype'
        )
      tree[module][str(name)] = array
  return tree


def _split_collections(raw: Any, path: str) -> tuple[Tree, Tree]:
  """(params, state) of an unpickled `{'params', 'state'}` mapping."""
  if not isinstance(raw, collections.abc.Mapping):
    raise CheckpointError(
        f'{path}: top level is a {type(raw).__name__}, expected a mapping '
        "with 'params' and 'state'"
    )
  missing = [c for c in COLLECTIONS if c not in raw]
  if missing:
    raise CheckpointError(f'{path}: top level lacks {missing}; it has keys {sorted(map(str, raw))}')
  return _as_tree(raw[PARAMS], path, PARAMS), _as_tree(raw[STATE], path, STATE)


# ---------------------------------------------------------------------------
# npz format.


def _npz_key(collection: str, module: str, name: str) -> str:
  return f'{collection}/{flat_name(module, name)}'


def _flatten(params: Tree, state: Tree) -> dict[str, np.ndarray]:
  """{'<collection>/<module path>:<name>': array} for both collections."""
  flat = {}
  for collection, tree in zip(COLLECTIONS, (params, state)):
    for module, leaves in tree.items():
      for name, array in leaves.items():
        if NAME_SEPARATOR in name:
          raise CheckpointError(
              f'cannot flatten {collection} {module!r}: name {name!r} contains '
              f'{NAME_SEPARATOR!r}'
          )
        flat[_npz_key(collection, module, name)] = array
  return flat


def _unflatten(flat: Mapping[str, np.ndarray], path: str) -> tuple[Tree, Tree]:
  """Inverse of `_flatten`."""
  trees = {collection: {} for collection in COLLECTIONS}
  for key, array in flat.items():
    collection, _, flat_name = key.partition('/')
    module, separator, name = flat_name.rpartition(NAME_SEPARATOR)
    if collection not in trees or not separator or not module:
      raise CheckpointError(f'{path}: npz key {key!r} is not <params|state>/<module path>:<name>')
    trees[collection].setdefault(module, {})[name] = array
  return trees[PARAMS], trees[STATE]


def _load_npz(data: bytes, path: str) -> tuple[Tree, Tree]:
  try:
    with np.load(io.BytesIO(data), allow_pickle=False) as npz:
      flat = {key: npz[key] for key in npz.files}
  except Exception as e:  # pylint: disable=broad-except
    raise CheckpointError(
        f'{path}: not a readable npz checkpoint ({type(e).__name__}: {e})'
    ) from None
  params, state = _unflatten(flat, path)
  return _as_tree(params, path, PARAMS), _as_tree(state, path, STATE)


def save_npz(checkpoint: Checkpoint, path: str | os.PathLike[str]) -> None:
  """Writes `checkpoint` as an uncompressed npz (local path or `gs://`)."""
  flat = _flatten(checkpoint.params, checkpoint.state)
  with FileSystems.create(os.fspath(path)) as f:
    np.savez(f, **flat)


# ---------------------------------------------------------------------------
# Loading.


def load_checkpoint(path: str | os.PathLike[str]) -> Checkpoint:
  """Loads a released-format pickle or a converted npz, without running code.

  Args:
    path: local path, `gs://...` or `http(s)://...`.

  Returns:
    The checkpoint, its trees as plain dicts of numpy arrays.

  Raises:
    CheckpointError: unreadable, truncated, not a checkpoint, naming a global
      outside the allow-list, or not `{'params', 'state'}` of arrays.
  """
  path = os.fspath(path)
  try:
    data = sources.read_bytes(path)
  except sources.SourceError as e:
    raise CheckpointError(f'cannot read checkpoint {path}: {e.__cause__ or e}') from None
  digest = hashlib.sha256(data).hexdigest()
  if data.startswith(_ZIP_MAGIC):
    params, state = _load_npz(data, path)
  else:
    params, state = _split_collections(_safe_unpickle(data, path), path)
  return Checkpoint(params=params, state=state, path=path, sha256=digest)


def infer_backbone(path: str | os.PathLike[str]) -> str:
  """One of `BACKBONES`, read from the checkpoint's file name."""
  file_name = os.path.basename(os.fspath(path)).lower()
  # A name holding several tags takes the last in `BACKBONES`, the
  # largest model.
  for backbone in reversed(BACKBONES):
    if backbone in file_name:
      return backbone
  raise CheckpointError(
      f'{path}: cannot infer the visual backbone: the file name contains none '
      f'of {", ".join(BACKBONES)}'
  )
